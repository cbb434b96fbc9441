"""The contract of a segmentation dataset for transfer, and the check of its config section.

Each transfer dataset checks its own section (`SegmentationDataset.check`, called when the whole run's
config is checked, as a method's `Method.check` is): the fields every transfer has here, a dataset's own
fields in its subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch.utils.data import Dataset

from budgetssl.config.schema import TransferConfig
from budgetssl.data.info import SegInfo
from budgetssl.errors import ConfigError
from budgetssl.transfer.heads import head_class
from budgetssl.transfer.registry import TRANSFERS


@dataclass(frozen=True)
class TransferInfo(SegInfo):
    """A segmentation dataset's facts, plus which class is the background (None: there is none, e.g.
    ADE20K, whose unlabelled "other" is ignored), so the object classes can be scored on their own."""

    background_index: int | None = None


class SegmentationDataset(Dataset):
    """Samples {"image": tv_tensors.Image uint8, "mask": tv_tensors.Mask int64} for split train or val."""

    config_class: ClassVar[type[TransferConfig]] = TransferConfig
    info: TransferInfo

    @classmethod
    def check(cls, cfg: TransferConfig) -> None:
        """Refuse a transfer section that cannot run (a ConfigError naming the option), before pretraining
        spends its budget. Subclasses with fields of their own call this and add theirs."""
        _require(
            (cfg.steps is None) != (cfg.flops is None),
            "set exactly one transfer budget: transfer.steps=<int> or transfer.flops=<float> "
            f"with the other null (got steps={cfg.steps}, flops={cfg.flops})",
        )
        _require(cfg.steps is None or cfg.steps >= 1, f"transfer.steps must be >= 1, got {cfg.steps}")
        _require(cfg.flops is None or cfg.flops > 0, f"transfer.flops must be > 0, got {cfg.flops}")
        head_class(cfg.head)
        _require(
            cfg.layer_decay is None or 0 < cfg.layer_decay <= 1,
            f"transfer.layer_decay must be in (0, 1] or null, got {cfg.layer_decay}",
        )
        _require(
            not (cfg.layer_decay is not None and cfg.freeze_backbone),
            "transfer.layer_decay has no effect with transfer.freeze_backbone=true; set one of them",
        )
        _require(cfg.batch_size >= 1, f"transfer.batch_size must be >= 1, got {cfg.batch_size}")
        _require(cfg.lr > 0, f"transfer.lr must be > 0, got {cfg.lr}")
        _require(
            cfg.backbone_lr_scale >= 0,
            f"transfer.backbone_lr_scale must be >= 0, got {cfg.backbone_lr_scale}",
        )
        _require(cfg.image_size >= 8, f"transfer.image_size must be >= 8, got {cfg.image_size}")
        _require(
            cfg.eval_stride is None or 1 <= cfg.eval_stride <= cfg.image_size,
            f"transfer.eval_stride must be in [1, transfer.image_size={cfg.image_size}] or null, "
            f"got {cfg.eval_stride}",
        )

    @classmethod
    def info_of(cls, cfg: TransferConfig) -> TransferInfo:
        """The dataset's facts as its config gives them, without reading its files (its classes are
        fixed): what the built dataset's `info` is, and what budgetssl-plan prices a transfer step with."""
        raise NotImplementedError

    @classmethod
    def train_images_from_config(cls, cfg: TransferConfig) -> int | None:
        """The training split's images where the config alone tells (None: only the files can)."""
        return None

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def build_segmentation(cfg: TransferConfig, split: str) -> SegmentationDataset:
    return TRANSFERS.get(cfg.name)(cfg, split)
