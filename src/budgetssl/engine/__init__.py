"""One training loop for every method and for the transfer stage."""
