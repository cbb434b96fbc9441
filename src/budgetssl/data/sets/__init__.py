"""One module per pretraining dataset."""
