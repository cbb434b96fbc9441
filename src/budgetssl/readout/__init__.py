"""Frozen features, read out: a backbone's features computed once (eval mode, no gradients), then scored
without training the backbone: DINO's weighted k-NN and a linear classifier on the pretraining data's
labels (classify.py: knn_accuracy, linear_accuracy), and the segmentation probe's linear head
(segmentation.py: probe_miou). Each part is a pure function of tensors (features.py, knn.py, linear.py),
testable alone."""
