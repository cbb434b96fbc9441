"""Image files and bytes to uint8 RGB tensors (C, H, W), with errors that name the file.

torchvision's decoder (JPEG, PNG, WebP, GIF) is fast; anything it refuses (BMP, TIFF, unusual JPEGs)
gets a second chance through PIL, so only a file that neither can read counts as unreadable.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from budgetssl.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class UnreadableImage(DataError):
    """An image file (or a tar member) that cannot be read or decoded."""


def _with_pil(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_bytes(data: bytes, name: str) -> tv_tensors.Image:
    """Decode an encoded image; `name` (a path or a shard member) goes into the error message."""
    if not data:
        raise UnreadableImage(f"cannot decode image {name}: the file is empty")
    try:
        return tv_tensors.Image(
            decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
        )
    except (RuntimeError, ValueError):
        pass
    try:
        return tv_tensors.Image(_with_pil(data))
    except UnidentifiedImageError:
        raise UnreadableImage(f"cannot decode image {name}: not an image in a known format") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot decode image {name}: {e}") from None


def read_image(path: Path) -> tv_tensors.Image:
    """Read and decode one image file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableImage(f"cannot read image {path}: {e.strerror or e}") from None
    return decode_bytes(data, str(path))
