"""The contract between a pretraining dataset and the rest of the system."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from torch.utils.data import Dataset, IterableDataset

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS

Sample = dict[str, Any]


class DatasetFields:
    """What a dataset declares about its samples, read at config time.

    `provides` lists the sample fields it has, so a method that needs labels or captions can be refused
    at config time rather than failing mid-run. Where the fields depend on the config (labels only when
    asked for), `provided(cfg)` says which, and `missing_hint` how to get a missing one.
    """

    config_class: ClassVar[type[DatasetConfig]] = DatasetConfig
    provides: ClassVar[frozenset[str]] = frozenset({"image"})

    @classmethod
    def provided(cls, cfg: DatasetConfig) -> frozenset[str]:
        return cls.provides

    @classmethod
    def missing_hint(cls, cfg: DatasetConfig, missing: set[str]) -> str:
        return ""


class PretrainDataset(DatasetFields, Dataset):
    """An indexable dataset of samples {"image": tv_tensors.Image, "label": int, "caption": str, ...}."""

    info: DataInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError


def ignore(n: int) -> None:
    """The default sink for skipped-sample counts."""


class StreamingDataset(DatasetFields, IterableDataset):
    """A stream of samples (tar shards): no length, no random access.

    `stream(seed, epoch, skipped)` yields this process's share (rank, data-loader worker) of one pass, in
    an order that depends on both, and calls `skipped(n)` for unusable samples it leaves out; the loader
    calls it with the run's seed and a new epoch each pass.
    """

    info: DataInfo

    def stream(self, seed: int, epoch: int, skipped: Callable[[int], None] = ignore) -> Iterator[Sample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        return self.stream(0, 0)


def build_dataset(cfg: DatasetConfig, split: str = "train") -> PretrainDataset | StreamingDataset:
    return DATASETS.get(cfg.name)(cfg, split)
