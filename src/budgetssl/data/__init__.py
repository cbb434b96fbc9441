"""Pretraining datasets: samples of image, label, caption (and mask where there is one)."""
