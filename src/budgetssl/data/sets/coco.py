"""COCO 2017 as distributed: images with captions (for CLIP) and, where a method needs them, labels.

Layout: `dataset.root/train2017/*.jpg` with `dataset.root/annotations/captions_train2017.json` (and
val2017 likewise). Every image with a caption is a sample; its caption field is the list of all its
captions (about five), of which CLIP's view draws one per visit.

With `dataset.labels=true` the labels come from `annotations/instances_train2017.json`: an image's label
is the category covering the largest total area in it (the sum of its instances' `area`, ties to the lower
category id), numbered 0..79 in the order of the file's category list. Images with no instance
annotation (about 1% of train2017) have no such label and are left out in this mode.

The parsed annotations are cached (dataset.cache_dir), keyed by the JSON files' size and mtime, so the
448 MB instances file is read once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.base import PretrainDataset, Sample
from budgetssl.data.corrupt import load_or_skip
from budgetssl.data.decode import read_image
from budgetssl.data.index_cache import cache_folder, cached
from budgetssl.data.info import DataInfo
from budgetssl.data.layout import require_dir, require_file, require_root
from budgetssl.data.registry import DATASETS
from budgetssl.errors import ConfigError, DataError

SPLITS = ("train", "val")


@dataclass
class COCOConfig(DatasetConfig):
    year: str = MISSING  # folders train<year>/, val<year>/ and their annotation files
    labels: bool = MISSING  # true: labels from instances_<split><year>.json (the largest-area category)
    skip_corrupt: bool = MISSING  # true: skip unreadable images (counted in summary.json: data_skipped)
    cache_dir: str | None = (
        MISSING  # where the parsed annotations are cached; null = ~/.cache/budgetssl/index
    )


def read_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the COCO annotation file {path}: {e}") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path} is not a COCO annotation file: it has no {', '.join(missing)} field")
    return data


def captions_index(path: Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """File name and captions of every image in a captions_*.json file."""
    data = read_json(path, ("images", "annotations"))
    files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        text = str(ann.get("caption", "")).strip()
        if text:
            captions[int(ann["image_id"])].append(text)
    return files, dict(captions)


def largest_area_labels(path: Path) -> tuple[dict[int, int], list[str]]:
    """Per image, the contiguous id of the category with the largest total instance area."""
    data = read_json(path, ("images", "annotations", "categories"))
    categories = data["categories"]
    contiguous = {int(c["id"]): i for i, c in enumerate(categories)}
    area: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for ann in data["annotations"]:
        area[int(ann["image_id"])][int(ann["category_id"])] += float(ann.get("area", 0.0))
    labels = {
        image: contiguous[max(sorted(by_cat), key=lambda c: by_cat[c])] for image, by_cat in area.items()
    }
    return labels, [str(c["name"]) for c in categories]


def signature(*paths: Path) -> list[list[int]]:
    return [[p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


@DATASETS.register("coco")
class COCO(PretrainDataset):
    config_class = COCOConfig
    provides = frozenset({"image", "caption", "label"})

    @classmethod
    def provided(cls, cfg: COCOConfig) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"image", "caption", "label"} if cfg.labels else {"image", "caption"})

    @classmethod
    def classes_from_config(cls, cfg: COCOConfig) -> tuple[int, str]:  # type: ignore[override]
        if not cfg.labels:
            return 0, "dataset.labels=false"
        # The 80 object categories of the instances annotations (Lin et al. 2014, "Microsoft COCO").
        return 80, f"COCO's 80 object categories (instances_train{cfg.year}.json; not read)"

    @classmethod
    def missing_hint(cls, cfg: COCOConfig, missing: set[str]) -> str:  # type: ignore[override]
        if "label" in missing and not cfg.labels:
            return f"set dataset.labels=true to read labels from annotations/instances_train{cfg.year}.json"
        return ""

    def __init__(self, cfg: COCOConfig, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        folder = f"{split}{cfg.year}"
        layout = f"COCO {cfg.year}: a folder holding {folder}/ and annotations/captions_{folder}.json"
        root = require_root(cfg.root, "dataset.root", layout)
        self.folder = require_dir(root, folder, "dataset.root", f"the {split} images of {layout}")
        captions = require_file(root, f"annotations/captions_{folder}.json", "dataset.root", layout)
        sources = [captions]
        if cfg.labels:
            sources.append(
                require_file(
                    root,
                    f"annotations/instances_{folder}.json",
                    "dataset.root",
                    "labels (dataset.labels=true)",
                )
            )
        name = f"coco:{root.resolve()}:{folder}:labels={cfg.labels}"
        index = cached(cache_folder(cfg.cache_dir), name, signature(*sources), lambda: self._index(sources))
        self.files: list[str] = index["files"]
        self.captions: list[list[str]] = index["captions"]
        self.labels: list[int] | None = index["labels"]
        if not self.files:
            what = "images with both captions and instance labels" if cfg.labels else "captioned images"
            raise ConfigError(f"the {split} split is empty: {', '.join(map(str, sources))} name no {what}")
        first = self.folder / self.files[0]
        if not first.is_file():
            raise ConfigError(
                f"{captions} names {folder}/{self.files[0]}, which is not there: is dataset.root={root} "
                f"the COCO folder holding {folder}/ and annotations/?"
            )
        self.skip = cfg.skip_corrupt
        self.info = DataInfo(image_size=cfg.image_size, class_names=tuple(index["class_names"]))

    @staticmethod
    def _index(sources: list[Path]) -> dict[str, Any]:
        files, captions = captions_index(sources[0])
        labels: dict[int, int] | None = None
        names: list[str] = []
        if len(sources) > 1:
            labels, names = largest_area_labels(sources[1])
        ids = sorted(i for i in files if i in captions and (labels is None or i in labels))
        return {
            "files": [files[i] for i in ids],
            "captions": [captions[i] for i in ids],
            "labels": None if labels is None else [labels[i] for i in ids],
            "class_names": names,
        }

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Sample:
        sample: Sample = {
            "image": read_image(self.folder / self.files[index]),
            "caption": self.captions[index],
        }
        if self.labels is not None:
            sample["label"] = self.labels[index]
        return sample

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        return load_or_skip(self._load, index, len(self.files), self.skip, "dataset.skip_corrupt")
