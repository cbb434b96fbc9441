"""Image-text or image-label tar shards in the WebDataset format, streamed.

This is how LAION, DataComp and CC12M are distributed (img2dataset) and how private sets like the study's
JFT-300M (labels) and ALIGN (alt-text) are usually stored. A sample is the run of files in a tar that
share a key: `000123.jpg` (or .jpeg/.png/.webp) with `000123.txt` (caption), `000123.cls` (class id) or
`000123.json` ({"caption": ..., "label": ...}). Shards are named by `dataset.shards`, brace-expanded
(`laion/{00000..41407}.tar`), relative to `dataset.root` where that is set; URLs and `pipe:` commands
are opened by the webdataset package.

Each pass reshuffles the shard order by (seed, epoch), deals the shards out to ranks and data-loader
workers without overlap, and mixes samples in a shuffle buffer. A sample whose image cannot be decoded, or
that lacks the configured caption or label, is skipped and counted (summary.json: data_skipped); a shard
that cannot be read is skipped from the point of failure, warned about and counted once.

`jft300m` and `align` are this dataset under the study's names, configured for labels and for captions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.base import Sample, StreamingDataset, ignore
from budgetssl.data.decode import UnreadableImage, decode_bytes
from budgetssl.data.info import DataInfo
from budgetssl.data.layout import require_root
from budgetssl.data.registry import DATASETS
from budgetssl.data.shards import (
    buffer_shuffle,
    epoch_order,
    expand_shards,
    rank_and_world,
    share,
    worker_and_count,
)
from budgetssl.errors import ConfigError, DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
WARN_FIRST = 3  # skipped samples warned about per worker and pass; all are counted


@dataclass
class WebDatasetConfig(DatasetConfig):
    shards: str | None = MISSING  # e.g. "{00000..00099}.tar" (under root) or "/data/laion/{00000..41407}.tar"
    caption_key: str | None = MISSING  # file extension, or "json:<field>"; null = no captions
    label_key: str | None = MISSING  # "cls", or "json:<field>"; null = no labels
    num_classes: int | None = MISSING  # label sets: labels are 0..num_classes-1
    class_list: str | None = MISSING  # label sets: a file of class names, one per line (line = label)
    shuffle_buffer: int = MISSING  # samples mixed at a time in each worker


class Skipped(Exception):
    """A sample that is not usable (its image does not decode, a field is missing)."""


def read_field(raw: dict[str, Any], key: str) -> Any:
    """A sample's field: the text of file `<key>` or field `f` of its JSON file for key "json:f"."""
    if key.startswith("json:"):
        if "json" not in raw:
            raise Skipped("no .json file")
        try:
            return json.loads(raw["json"])[key[5:]]
        except (ValueError, KeyError, TypeError):
            raise Skipped(f"no '{key[5:]}' field in its .json") from None
    if key not in raw:
        raise Skipped(f"no .{key} file")
    return raw[key].decode("utf-8", errors="replace").strip()


def as_label(value: Any, num_classes: int) -> int | list[int]:
    """An int class id (or, for multi-label sets, a list of them; one element lists become an int)."""
    try:
        if isinstance(value, list):
            labels = [int(v) for v in value]
            value = labels[0] if len(labels) == 1 else labels
        else:
            value = int(value)
    except (TypeError, ValueError):
        raise Skipped(f"label {value!r} is not a class id") from None
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(0 <= i < num_classes for i in ids):
        raise Skipped(f"label {value!r} is outside 0..{num_classes - 1} (dataset.num_classes)")
    return value


@DATASETS.register("align")
@DATASETS.register("jft300m")
@DATASETS.register("webdataset")
class WebDataset(StreamingDataset):
    config_class = WebDatasetConfig
    provides = frozenset({"image", "caption", "label"})

    @classmethod
    def provided(cls, cfg: WebDatasetConfig) -> frozenset[str]:  # type: ignore[override]
        return frozenset(
            {"image"} | ({"caption"} if cfg.caption_key else set()) | ({"label"} if cfg.label_key else set())
        )

    @classmethod
    def classes_from_config(cls, cfg: WebDatasetConfig) -> tuple[int, str] | None:  # type: ignore[override]
        if not cfg.label_key:
            return 0, "shards without labels (dataset.label_key=null)"
        if cfg.num_classes:
            return cfg.num_classes, "dataset.num_classes"
        return None  # as many as the class list's lines

    @classmethod
    def missing_hint(cls, cfg: WebDatasetConfig, missing: set[str]) -> str:  # type: ignore[override]
        hints = []
        if "caption" in missing:
            hints.append("set dataset.caption_key=txt (or json:caption) if the shards hold captions")
        if "label" in missing:
            hints.append("set dataset.label_key=cls (or json:label) and dataset.num_classes=<N> for labels")
        return "; ".join(hints)

    def __init__(self, cfg: WebDatasetConfig, split: str = "train") -> None:
        root = None
        if cfg.root is not None:
            root = require_root(
                cfg.root, "dataset.root", "the folder of the tar shards named by dataset.shards"
            )
        if cfg.shards is None:
            raise ConfigError(
                f"dataset '{cfg.name}' streams tar shards: set dataset.shards='<pattern>' "
                "(quoted, e.g. dataset.shards='/data/laion/{00000..41407}.tar')"
            )
        self.shards = expand_shards(cfg.shards, root)
        if cfg.shuffle_buffer < 0:
            raise ConfigError(f"dataset.shuffle_buffer must be >= 0, got {cfg.shuffle_buffer}")
        names: tuple[str, ...] = ()
        if cfg.label_key:
            names = self._class_names(cfg, root)
        self.cfg = cfg
        self.info = DataInfo(image_size=cfg.image_size, class_names=names)

    @staticmethod
    def _class_names(cfg: WebDatasetConfig, root: Path | None) -> tuple[str, ...]:
        if cfg.class_list:
            path = Path(cfg.class_list).expanduser()
            path = path if path.is_absolute() or root is None else root / path
            if not path.is_file():
                raise ConfigError(
                    f"dataset.class_list={path} does not exist; a file of class names, one per line"
                )
            names = tuple(
                line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            )
            if cfg.num_classes is not None and cfg.num_classes != len(names):
                raise ConfigError(
                    f"dataset.num_classes={cfg.num_classes} but dataset.class_list={path} names {len(names)}"
                )
            return names
        if not cfg.num_classes or cfg.num_classes < 1:
            raise ConfigError(
                f"dataset.label_key={cfg.label_key} needs the number of classes: set dataset.num_classes=<N> "
                f"or dataset.class_list=<file of class names>"
            )
        return tuple(f"class {i}" for i in range(cfg.num_classes))

    def decode(self, raw: dict[str, Any]) -> Sample:
        """A usable sample from one tar group, or Skipped."""
        name = f"{raw.get('__url__')}:{raw.get('__key__')}"
        key = next((k for k in IMAGE_KEYS if k in raw), None)
        if key is None:
            raise Skipped(f"no image ({', '.join('.' + k for k in IMAGE_KEYS)})")
        try:
            sample: Sample = {"image": decode_bytes(raw[key], f"{name}.{key}")}
        except UnreadableImage as e:
            raise Skipped(str(e)) from None
        sample["key"] = f"{Path(str(raw.get('__url__'))).name}/{raw.get('__key__')}"
        if self.cfg.caption_key:
            caption = read_field(raw, self.cfg.caption_key)
            if not caption or not isinstance(caption, str | list):
                raise Skipped("empty caption")
            sample["caption"] = caption
        if self.cfg.label_key:
            sample["label"] = as_label(read_field(raw, self.cfg.label_key), self.info.num_classes)
        return sample

    def stream(self, seed: int, epoch: int, skipped: Callable[[int], None] = ignore) -> Iterator[Sample]:
        """This rank's and worker's share of one pass, mixed in the buffer while still encoded (a
        buffer of decoded images would hold hundreds of megabytes), then decoded once each."""
        # Deferred: webdataset's readers load only in the workers that stream shards.
        from webdataset.tariterators import tarfile_samples

        rank, world = rank_and_world()
        if len(self.shards) < world:
            raise DataError(f"{len(self.shards)} shards cannot be split over {world} ranks; use more shards")
        worker, workers = worker_and_count()
        mine = share(epoch_order(self.shards, seed, epoch), rank, world, worker, workers)
        rng = np.random.default_rng([seed, epoch, rank, worker])
        warned = [0]

        def skip(reason: str) -> None:
            skipped(1)
            warned[0] += 1
            if warned[0] <= WARN_FIRST:
                warnings.warn(f"skipped {reason}", stacklevel=2)

        def on_shard_error(e: Exception) -> bool:
            skip(f"the rest of an unreadable shard: {e}")
            return True

        raw = tarfile_samples(({"url": s} for s in mine), handler=on_shard_error)
        for group in buffer_shuffle(raw, self.cfg.shuffle_buffer, rng):
            try:
                yield self.decode(group)
            except Skipped as e:
                skip(f"sample {group.get('__url__')}:{group.get('__key__')}: {e}")
