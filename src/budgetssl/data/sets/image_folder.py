"""Unlabelled images in a folder tree (any depth): self-supervised pretraining on your own images.

Layout: `dataset.root` holding image files (.jpg, .jpeg, .png, .webp, .bmp) directly or in sub-folders;
folder names are not read as labels, so label- or caption-based methods are refused at config time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.base import PretrainDataset, Sample
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS
from budgetssl.errors import ConfigError, DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class ImageFolderConfig(DatasetConfig):
    pass


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def read_image(path: Path) -> torch.Tensor:
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from None


@DATASETS.register("image_folder")
class ImageFolder(PretrainDataset):
    config_class = ImageFolderConfig
    provides = frozenset({"image"})

    def __init__(self, cfg: ImageFolderConfig, split: str = "train") -> None:
        if cfg.root is None:
            raise ConfigError("dataset 'image_folder' reads files: set dataset.root=<folder of images>")
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"dataset.root={root} is not a folder; point it at a folder of images")
        self.files = list_images(root)
        if not self.files:
            raise ConfigError(
                f"dataset.root={root} holds no images ({', '.join(EXTENSIONS)}) in it or its sub-folders"
            )
        self.info = DataInfo(image_size=cfg.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        return {"image": tv_tensors.Image(read_image(self.files[index]))}
