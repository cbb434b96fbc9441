"""Transfer: a segmentation head fine-tuned on a pretrained backbone, metered, scored by mIoU."""
