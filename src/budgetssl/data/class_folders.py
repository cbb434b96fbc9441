"""Labelled images in the ImageNet layouts: one folder per class, or one flat folder of
`<class id>_<n>.<ext>` files with a class list file. The ImageNet-1K and -21K datasets build on this.

- folders: `<root>/<split dir>/<class id>/*.JPEG`; ids are the folder names (WordNet ids such as
  n01440764), labels 0..N-1 in sorted order, or in the order of a class list file when one is given.
- flat: `<root>/<split dir>/<class id>_<anything>.JPEG` with a class list file (one class per line,
  `<class id>[ <name>[, <synonym>...]]`; the line number is the label), as ImageNet-21K copies are often
  flattened.

The file index is cached (see index_cache), so a start costs one stat per class folder, not a listing.
Paths and labels are kept in numpy arrays, which data-loader workers share without copying.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.base import PretrainDataset, Sample
from budgetssl.data.corrupt import load_or_skip
from budgetssl.data.decode import EXTENSIONS, read_image
from budgetssl.data.index_cache import Listing, cache_folder, list_files
from budgetssl.data.info import DataInfo
from budgetssl.data.layout import require_dir, require_file, require_root
from budgetssl.errors import ConfigError

LAYOUTS = ("folders", "flat", "auto")


@dataclass
class ClassFolderConfig(DatasetConfig):
    train_dir: str = MISSING  # the training split's folder under dataset.root
    val_dir: str = MISSING
    skip_corrupt: bool = MISSING  # true: skip unreadable images (counted in summary.json: data_skipped)
    cache_dir: str | None = MISSING  # where the file index is cached; null = ~/.cache/budgetssl/index


def read_class_list(path: Path) -> list[tuple[str, str]]:
    """(class id, readable name) per non-empty line of `<id>[ <name>[, <synonym>...]]`."""
    classes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            name = parts[1].split(",")[0].strip() if len(parts) > 1 else parts[0]
            classes.append((parts[0], name or parts[0]))
    return classes


def _examples(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


class ClassFolders(PretrainDataset):
    """Labelled images in class folders or a flat folder; subclasses say which layouts they accept."""

    provides = frozenset({"image", "label"})
    title = "class folders"  # for messages: what dataset.root should be

    def layout(self, cfg: ClassFolderConfig) -> str:
        return "folders"

    def class_list(self, cfg: ClassFolderConfig) -> str | None:
        return None

    def readable_names(self, root: Path, ids: list[str]) -> list[str]:
        return ids

    def __init__(self, cfg: ClassFolderConfig, split: str = "train") -> None:
        dirs = {"train": cfg.train_dir, "val": cfg.val_dir}
        if split not in dirs:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(dirs)}")
        layout = self.layout(cfg)
        if layout not in LAYOUTS:
            raise ConfigError(f"dataset.layout must be one of {LAYOUTS}, got '{layout}'")
        expected = f"{self.title}: a folder holding {cfg.train_dir}/ and {cfg.val_dir}/"
        self.root = require_root(cfg.root, "dataset.root", expected)
        split_dir = dirs[split]
        what = f"the {split} images, one folder per class ({split_dir}/n01440764/*.JPEG, ...)"
        if layout == "flat":
            what = f"the {split} images as {split_dir}/<class id>_<n>.JPEG"
        self.folder = require_dir(self.root, split_dir, "dataset.root", what)
        listing = list_files(self.folder, EXTENSIONS, cache_folder(cfg.cache_dir))
        self.from_cache = listing.from_cache
        if not listing.files:
            raise ConfigError(
                f"the {split} split is empty: dataset.root={self.root} has no images "
                f"({', '.join(EXTENSIONS)}) under {split_dir}/"
            )
        if layout == "auto":
            layout = "folders" if "/" in listing.files[0] else "flat"
        listed = self._class_list_ids(cfg, layout)
        if layout == "folders":
            ids, files, labels = self._folders(listing, split_dir, listed)
        else:
            ids, files, labels = self._flat(listing, split_dir, listed)
        names = [n for _, n in listed[1]] if listed else self.readable_names(self.root, ids)
        self.split_dir = split_dir
        self.files = np.array([f.encode() for f in files])
        self.labels = np.array(labels, dtype=np.int64)
        self.class_ids = tuple(ids)
        self.skip = cfg.skip_corrupt
        self.info = DataInfo(image_size=cfg.image_size, class_names=tuple(names))

    def _class_list_ids(
        self, cfg: ClassFolderConfig, layout: str
    ) -> tuple[Path, list[tuple[str, str]]] | None:
        name = self.class_list(cfg)
        if name is None:
            if layout == "flat":
                raise ConfigError(
                    f"dataset.root={self.root} holds its images in one flat folder (<class id>_<n>.JPEG): "
                    f"set dataset.class_list=<file with one class id per line> to number the classes"
                )
            return None
        path = require_file(self.root, name, "dataset.root", "the class list named by dataset.class_list")
        classes = read_class_list(path)
        if not classes:
            raise ConfigError(f"the class list {path} (dataset.class_list) names no classes")
        return path, classes

    def _folders(
        self, listing: Listing, split_dir: str, listed: tuple[Path, list[tuple[str, str]]] | None
    ) -> tuple[list[str], list[str], list[int]]:
        loose = [f for f in listing.files if "/" not in f]
        if loose:
            raise ConfigError(
                f"dataset.root={self.root}: {split_dir}/ holds {len(loose)} images outside class folders "
                f"(e.g. {_examples(loose)}); expected one folder per class ({split_dir}/<class id>/*.JPEG). "
                f"Sort them into class folders (for ImageNet val, the usual valprep.sh)"
            )
        folders = sorted({d.split("/")[0] for d in listing.dirs})
        if listed:
            path, classes = listed
            ids = [c for c, _ in classes]
            unknown = sorted(set(folders) - set(ids))
            if unknown:
                raise ConfigError(
                    f"class folders {_examples(unknown)} under {self.folder} are not in the class list "
                    f"{path} (dataset.class_list)"
                )
        else:
            ids = folders
        index = {c: i for i, c in enumerate(ids)}
        files, labels = listing.files, [index[f.split("/", 1)[0]] for f in listing.files]
        empty = sorted(set(ids) - {f.split("/", 1)[0] for f in files})
        if empty and not listed:
            warnings.warn(
                f"class folders without images under {self.folder}: {_examples(empty)}", stacklevel=3
            )
        return ids, files, labels

    def _flat(
        self, listing: Listing, split_dir: str, listed: tuple[Path, list[tuple[str, str]]] | None
    ) -> tuple[list[str], list[str], list[int]]:
        assert listed is not None
        path, classes = listed
        ids = [c for c, _ in classes]
        index = {c: i for i, c in enumerate(ids)}
        files = [f for f in listing.files if "/" not in f]
        if not files:
            raise ConfigError(
                f"dataset.layout=flat but {split_dir}/ under dataset.root={self.root} holds no images "
                f"directly; use dataset.layout=folders for one folder per class"
            )
        labels, unknown = [], []
        for f in files:
            label = index.get(f.split("_", 1)[0])
            if label is None:
                unknown.append(f)
            labels.append(label)
        if unknown:
            raise ConfigError(
                f"{len(unknown)} images under {self.folder} have a class id (the name before '_') that "
                f"is not in the class list {path} (dataset.class_list): {_examples(unknown)}"
            )
        return ids, files, labels

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        return self.folder / self.files[index].decode()

    def _load(self, index: int) -> Sample:
        return {"image": read_image(self.path(index)), "label": int(self.labels[index])}

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        return load_or_skip(self._load, index, len(self.files), self.skip, "dataset.skip_corrupt")
