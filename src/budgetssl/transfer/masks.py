"""Label PNGs read as class indices: a palette PNG's indices (VOC) or a grey PNG's values (ADE20K, the
SBD-augmented VOC masks), never the colours they are drawn in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from budgetssl.data.decode import UnreadableImage
from budgetssl.errors import DataError

INDEX_MODES = ("P", "L", "I", "I;16")


def read_index_png(path: Path) -> np.ndarray:
    """(H, W) array of the label indices stored in `path`."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.array(image)
    except (OSError, ValueError) as e:
        raise UnreadableImage(f"cannot read mask {path}: {e}") from None
    if mode not in INDEX_MODES:
        raise DataError(
            f"mask {path} is a {mode} image; label masks must store class indices (a palette or greyscale "
            f"PNG, as the dataset ships them), not colours"
        )
    return array
