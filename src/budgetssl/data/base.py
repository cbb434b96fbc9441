"""The contract between a pretraining dataset and the rest of the system."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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

    @classmethod
    def classes_from_config(cls, cfg: DatasetConfig) -> tuple[int, str] | None:
        """The number of classes the config alone tells (0: no labels), and where it comes from; None
        where only the data can tell. A classifier's width depends on it, so budgetssl-plan prices a
        step with it without opening the dataset."""
        return None


class PretrainDataset(DatasetFields, Dataset):
    """An indexable dataset of samples {"image": tv_tensors.Image, "label": int, "caption": str, ...}."""

    info: DataInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError


class WholeBatches:
    """An indexed dataset that also gives a whole batch in one call (the built-in synthetic sets, for
    pretraining and for the transfer: one gather from their stored scenes), so that where the view takes
    a batch too (data/loader.py BatchView) the loader makes no per-sample dicts and collates nothing: at
    the demo's sizes those cost more than a batch's views on the device (benchmarks/README.md,
    augment_on.py)."""

    def batch(self, indices: Sequence[int]) -> Sample:
        """The samples at `indices`, in that order, as one dict: `image` (B, C, H, W) uint8, every image of
        one size; each other field as default_collate stacks the samples' (numbers and arrays as tensors),
        text as a list of str. The same values as `self[i]` for each index; IndexError for one outside."""
        raise NotImplementedError


class BatchDataset(WholeBatches, PretrainDataset):
    """A pretraining dataset that gives whole batches (WholeBatches)."""


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
