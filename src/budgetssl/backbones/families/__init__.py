"""One module per backbone family (vit, cnn)."""
