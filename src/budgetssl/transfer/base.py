"""The contract of a segmentation dataset for transfer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch.utils.data import Dataset

from budgetssl.config.schema import TransferConfig
from budgetssl.data.info import SegInfo


@dataclass(frozen=True)
class TransferInfo(SegInfo):
    """A segmentation dataset's facts, plus which class is the background (None: there is none, e.g.
    ADE20K, whose unlabelled "other" is ignored), so the object classes can be scored on their own."""

    background_index: int | None = None


class SegmentationDataset(Dataset):
    """Samples {"image": tv_tensors.Image uint8, "mask": tv_tensors.Mask int64} for split train or val."""

    config_class: ClassVar[type[TransferConfig]] = TransferConfig
    info: TransferInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


def build_segmentation(cfg: TransferConfig, split: str) -> SegmentationDataset:
    from budgetssl.transfer.registry import TRANSFERS

    return TRANSFERS.get(cfg.name)(cfg, split)
