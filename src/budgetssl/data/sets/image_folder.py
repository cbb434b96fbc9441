"""Unlabelled images in a folder tree (any depth): self-supervised pretraining on your own images.

Layout: `dataset.root` holding image files (.jpg, .jpeg, .png, .webp, .bmp) directly or in sub-folders;
folder names are not read as labels, so label- or caption-based methods are refused at config time.
The file index is cached (dataset.cache_dir), so a large tree is walked once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.base import PretrainDataset, Sample
from budgetssl.data.corrupt import load_or_skip
from budgetssl.data.decode import EXTENSIONS, read_image
from budgetssl.data.index_cache import cache_folder, list_files
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS
from budgetssl.errors import ConfigError


@dataclass
class ImageFolderConfig(DatasetConfig):
    skip_corrupt: bool = MISSING  # true: skip unreadable images (counted in summary.json: data_skipped)
    cache_dir: str | None = MISSING  # where the file index is cached; null = ~/.cache/budgetssl/index


@DATASETS.register("image_folder")
class ImageFolder(PretrainDataset):
    config_class = ImageFolderConfig
    provides = frozenset({"image"})

    @classmethod
    def classes_from_config(cls, cfg: ImageFolderConfig) -> tuple[int, str]:  # type: ignore[override]
        return 0, "images without labels"

    def __init__(self, cfg: ImageFolderConfig, split: str = "train") -> None:
        if cfg.root is None:
            raise ConfigError("dataset 'image_folder' reads files: set dataset.root=<folder of images>")
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"dataset.root={root} is not a folder; point it at a folder of images")
        self.root = root
        self.files = list_files(root, EXTENSIONS, cache_folder(cfg.cache_dir)).files
        if not self.files:
            raise ConfigError(
                f"dataset.root={root} holds no images ({', '.join(EXTENSIONS)}) in it or its sub-folders"
            )
        self.skip = cfg.skip_corrupt
        self.info = DataInfo(image_size=cfg.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Sample:
        return {"image": read_image(self.root / self.files[index])}

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        return load_or_skip(self._load, index, len(self.files), self.skip, "dataset.skip_corrupt")
