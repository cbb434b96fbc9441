"""The contract between a pretraining dataset and the rest of the system."""

from __future__ import annotations

from typing import Any, ClassVar

from torch.utils.data import Dataset

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.info import DataInfo

Sample = dict[str, Any]


class PretrainDataset(Dataset):
    """An indexable dataset of samples {"image": tv_tensors.Image, "label": int, "caption": str, ...}.

    `provides` lists the sample fields it has, so a method that needs labels or captions can be refused
    at config time rather than failing mid-run.
    """

    config_class: ClassVar[type[DatasetConfig]] = DatasetConfig
    provides: ClassVar[frozenset[str]] = frozenset({"image"})
    info: DataInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError


def build_dataset(cfg: DatasetConfig, split: str = "train") -> PretrainDataset:
    from budgetssl.data.registry import DATASETS

    return DATASETS.get(cfg.name)(cfg, split)
