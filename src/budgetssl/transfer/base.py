"""The contract of a segmentation dataset for transfer."""

from __future__ import annotations

from typing import Any, ClassVar

from torch.utils.data import Dataset

from budgetssl.config.schema import TransferConfig
from budgetssl.data.info import SegInfo


class SegmentationDataset(Dataset):
    """Samples {"image": tv_tensors.Image uint8, "mask": tv_tensors.Mask int64} for split train or val."""

    config_class: ClassVar[type[TransferConfig]] = TransferConfig
    info: SegInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


def build_segmentation(cfg: TransferConfig, split: str) -> SegmentationDataset:
    from budgetssl.transfer.registry import TRANSFERS

    return TRANSFERS.get(cfg.name)(cfg, split)
