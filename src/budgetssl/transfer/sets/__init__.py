"""One module per transfer (segmentation) dataset."""
