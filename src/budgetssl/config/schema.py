"""Typed config nodes. YAML files under configs/ hold the defaults; these say which keys exist."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class BudgetConfig:
    flops: float = MISSING  # training FLOPs to spend, fma=2 convention


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    final_lr_ratio: float = 0.01  # cosine decays to lr * final_lr_ratio on the last step
    warmup_fraction: float = 0.1  # fraction of the planned steps spent warming up
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # any name timm.optim.create_optimizer_v2 knows
    grad_clip: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True
    checkpoint_every_steps: int | None = 1000  # also on SIGTERM/SIGUSR1 and at the end; null: only those


@dataclass
class HardwareModel:
    """The hardware the FLOP-based CO2 estimate assumes (the study estimated CO2 this way)."""

    name: str = MISSING
    peak_flops_per_s: float = MISSING
    utilization: float = MISSING
    power_watts: float = MISSING
    pue: float = MISSING
    grid_kg_per_kwh: float = MISSING


@dataclass
class EnergyConfig:
    track: bool = True  # measure with codecarbon's offline tracker
    country_iso_code: str = "USA"
    measure_power_secs: float = 15.0
    hardware: HardwareModel = field(default_factory=HardwareModel)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled; credentials come from wandb's own login
    project: str = "budgetssl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    """Loggers beside the run folder's own metrics.jsonl (which is always written)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class BackboneConfig:
    name: str = MISSING
    family: str = MISSING  # vit | cnn: how feature maps are read out of the timm model
    timm_name: str = MISSING
    patch_size: int | None = None  # ViTs only
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model


@dataclass
class DatasetConfig:
    """Fields every pretraining dataset has; each dataset subclasses it with its own."""

    name: str = MISSING
    root: str | None = None
    image_size: int = 32


@dataclass
class MethodConfig:
    """Fields every method has; each method subclasses it with its hyper-parameters."""

    name: str = MISSING


@dataclass
class TransferConfig:
    """Fine-tuning a segmentation head; each transfer dataset subclasses it with its own fields."""

    name: str = MISSING
    root: str | None = None
    from_run: str | None = None  # a pretraining run folder; null = backbone from this run or random init
    image_size: int = 32
    head: str = "linear"  # linear (1x1 conv on the last map) | multilevel (FPN-style, several depths)
    freeze_backbone: bool = False
    layer_decay: float | None = None  # layer-wise lr decay for the backbone (e.g. 0.65); null = off
    steps: int | None = 100  # the transfer budget in steps ...
    flops: float | None = None  # ... or in FLOPs (set steps=null), metered like pretraining
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # the backbone's learning rate relative to the head's
    final_lr_ratio: float = 0.01
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    eval_batch_size: int = 64
    eval_mode: str = "resize"  # resize (score at image_size) | slide (windows of image_size, full resolution)
    eval_stride: int | None = None  # slide mode's stride; null = 2/3 of a window
