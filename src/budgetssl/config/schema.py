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
    """The training loop and the method's recipe. configs/config.yaml holds the defaults, each method's
    config overrides the recipe part (optimizer ... drop_path) with its published values."""

    batch_size: int = MISSING  # global batch
    optimizer: str = MISSING  # any name timm.optim.create_optimizer_v2 knows (adamw, lars, sgd, lamb, ...)
    base_lr: float = MISSING  # the recipe's lr for a batch of lr_reference_batch
    lr_scaling: str = MISSING  # linear (base_lr * B / ref) | sqrt (base_lr * sqrt(B / ref)) | none
    lr_reference_batch: int = MISSING  # the batch base_lr is stated for (256 in most recipes)
    lr: float | None = MISSING  # null: base_lr scaled by lr_scaling; a number: this peak lr, unscaled
    betas: list[float] | None = MISSING  # Adam-family (beta1, beta2); null for SGD/LARS
    momentum: float | None = MISSING  # SGD/LARS momentum; null for the Adam family
    eps: float | None = MISSING  # null: the optimizer's own default
    weight_decay: float = MISSING
    weight_decay_end: float | None = MISSING  # null: constant; else cosine weight_decay -> this (DINO)
    no_weight_decay: list[str] = MISSING  # parameters without weight decay: biases_norms, tokens
    final_lr_ratio: float = MISSING  # cosine decays to lr * final_lr_ratio on the last step
    warmup_fraction: float = MISSING  # fraction of the planned steps spent warming up
    grad_clip: float | None = MISSING  # null: no clipping
    grad_clip_mode: str = MISSING  # global (one norm over all gradients) | per_param (DINO's clip)
    drop_path: float = MISSING  # stochastic depth rate of the pretrained backbone
    precision: str = MISSING  # fp32 | bf16 | fp16
    device: str = MISSING  # auto | cpu | cuda
    num_workers: int = MISSING
    log_every: int = MISSING
    progress: bool = MISSING
    checkpoint_every_steps: int | None = MISSING  # also on SIGTERM/SIGUSR1 and at the end; null: only those


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
    track: bool = MISSING  # measure with codecarbon's offline tracker
    country_iso_code: str = MISSING
    measure_power_secs: float = MISSING
    hardware: HardwareModel = field(default_factory=HardwareModel)


@dataclass
class WandbConfig:
    mode: str = MISSING  # offline | online | disabled; credentials come from wandb's own login
    project: str = MISSING
    entity: str | None = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING


@dataclass
class LoggerConfig:
    """Loggers beside the run folder's own metrics.jsonl (which is always written)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class BackboneConfig:
    name: str = MISSING
    family: str = MISSING  # vit | cnn: how feature maps are read out of the timm model
    timm_name: str = MISSING
    patch_size: int | None = MISSING  # ViTs only
    kwargs: dict[str, Any] = MISSING  # passed to timm.create_model


@dataclass
class DatasetConfig:
    """Fields every pretraining dataset has; each dataset subclasses it with its own."""

    name: str = MISSING
    root: str | None = MISSING
    image_size: int = MISSING


@dataclass
class MethodConfig:
    """Fields every method has; each method subclasses it with its hyper-parameters."""

    name: str = MISSING


@dataclass
class TransferConfig:
    """Fine-tuning a segmentation head; each transfer dataset subclasses it with its own fields."""

    name: str = MISSING
    root: str | None = MISSING
    from_run: str | None = MISSING  # a pretraining run folder; null = backbone from this run or random init
    image_size: int = MISSING
    head: str = MISSING  # linear (1x1 conv on the last map) | multilevel (FPN-style, several depths)
    freeze_backbone: bool = MISSING
    layer_decay: float | None = MISSING  # layer-wise lr decay for the backbone (e.g. 0.65); null = off
    steps: int | None = MISSING  # the transfer budget in steps ...
    flops: float | None = MISSING  # ... or in FLOPs (set steps=null), metered like pretraining
    batch_size: int = MISSING
    lr: float = MISSING
    backbone_lr_scale: float = MISSING  # the backbone's learning rate relative to the head's
    final_lr_ratio: float = MISSING
    warmup_fraction: float = MISSING
    weight_decay: float = MISSING
    eval_batch_size: int = MISSING
    eval_mode: str = MISSING  # resize (score at image_size) | slide (windows of image_size, full resolution)
    eval_stride: int | None = MISSING  # slide mode's stride; null = 2/3 of a window
    probe: bool = MISSING  # also score the backbone frozen, with a linear head (probe_miou, probe_flops)
