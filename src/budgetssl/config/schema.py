"""Typed config nodes. YAML files under configs/ hold the defaults; these say which keys exist.

An option with a fixed list of values is an Enum here, so OmegaConf turns the YAML string into a member and
refuses any other value when the config is checked (`config.check.typed` names the key and the values).
The members are `StrEnum`s named by their values: they compare, hash and format as the plain strings
(`t.precision == "fp32"`), and `RunConfig.to_dict()` writes them back as strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # CUDA only (a loss scaler); refused on CPU when the device is known


class Device(StrEnum):
    auto = "auto"  # CUDA if visible, else CPU
    cpu = "cpu"
    cuda = "cuda"


class AugmentOn(StrEnum):
    auto = "auto"  # device where the method's views batch and no worker processes run them, else loader
    loader = "loader"  # per sample with torchvision v2 in the data path (data-loader workers)
    device = "device"  # on whole batches on the training device (methods/batched.py)


class Interpolation(StrEnum):
    """How a method's random resized crops resample (methods/augment.py; method.interpolation)."""

    bilinear = "bilinear"
    bicubic = "bicubic"


class LrScaling(StrEnum):
    linear = "linear"  # base_lr * B / ref
    sqrt = "sqrt"  # base_lr * sqrt(B / ref)
    none = "none"  # base_lr as stated


# `global` is a Python keyword, so this one is spelt with the functional API; its members are the same.
GradClipMode = StrEnum("GradClipMode", {"global": "global", "per_param": "per_param"})
GradClipMode.__doc__ = "global: one norm over all gradients | per_param: each parameter's own (DINO's clip)"


class Schedule(StrEnum):
    cosine = "cosine"  # warm-up, then cosine decay over the whole budget
    wsd = "wsd"  # warm-up, stable at the peak, a cool-down over the last train.cooldown_fraction (ladders)


class NoWeightDecay(StrEnum):
    biases_norms = "biases_norms"  # 1-d parameters: biases and norm scales
    tokens = "tokens"  # what timm's `no_weight_decay()` names: position embeddings, class tokens


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class EvalMode(StrEnum):
    resize = "resize"  # score at transfer.image_size
    slide = "slide"  # windows of transfer.image_size over the full resolution


@dataclass
class BudgetConfig:
    flops: float = MISSING  # training FLOPs to spend, fma=2 convention; with a ladder, its largest rung
    ladder: list[float] | None = MISSING  # null, or the rungs' budgets: one trunk, a cool-down per rung


@dataclass
class TrainConfig:
    """The training loop and the method's recipe. configs/config.yaml holds the defaults, each method's
    config overrides the recipe part (optimizer ... drop_path) with its published values."""

    batch_size: int = MISSING  # global batch
    optimizer: str = MISSING  # any name timm.optim.create_optimizer_v2 knows (adamw, lars, sgd, lamb, ...)
    base_lr: float = MISSING  # the recipe's lr for a batch of lr_reference_batch
    lr_scaling: LrScaling = MISSING  # linear (base_lr * B / ref) | sqrt (base_lr * sqrt(B / ref)) | none
    lr_reference_batch: int = MISSING  # the batch base_lr is stated for (256 in most recipes)
    lr: float | None = MISSING  # null: base_lr scaled by lr_scaling; a number: this peak lr, unscaled
    betas: list[float] | None = MISSING  # Adam-family (beta1, beta2); null for SGD/LARS
    momentum: float | None = MISSING  # SGD/LARS momentum; null for the Adam family
    eps: float | None = MISSING  # null: the optimizer's own default
    weight_decay: float = MISSING
    weight_decay_end: float | None = MISSING  # null: constant; else cosine weight_decay -> this (DINO)
    no_weight_decay: list[NoWeightDecay] = MISSING  # parameters without weight decay: biases_norms, tokens
    final_lr_ratio: float = MISSING  # cosine decays to lr * final_lr_ratio on the last step
    warmup_fraction: float = MISSING  # fraction of the planned steps spent warming up
    schedule: Schedule = MISSING  # cosine | wsd (warm-up, stable, decay: budget.ladder needs it)
    cooldown_fraction: float = MISSING  # wsd: the share of each budget spent cooling down
    grad_clip: float | None = MISSING  # null: no clipping
    grad_clip_mode: GradClipMode = MISSING  # global (one norm over all gradients) | per_param (DINO's clip)
    drop_path: float = MISSING  # stochastic depth rate of the pretrained backbone
    precision: Precision = MISSING  # fp32 | bf16 | fp16
    device: Device = MISSING  # auto | cpu | cuda
    tf32: bool = MISSING  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores; no effect on CPU
    fused_optimizer: bool = MISSING  # CUDA: the optimizer's fused kernels where torch has them (AdamW, SGD)
    compile: bool = MISSING  # torch.compile the task's forward (FLOPs still measured on the eager step)
    num_workers: Any = MISSING  # data-loader worker processes: a number, or auto (per device, data/loader.py)
    augment_on: AugmentOn = MISSING  # auto | loader | device: where the method's views run
    log_every: int = MISSING
    monitor_images: int = MISSING  # the label-free monitors' held-out batch (budgetssl.monitor); 0: none
    progress: bool = MISSING
    checkpoint_every_steps: int | None = MISSING  # also on SIGTERM/SIGUSR1 and at the end; null: only those
    peak_flops_per_s: float | None = MISSING  # one device's peak (the record's mfu); null: looked up/measured


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
class PlanConfig:
    """budgetssl-plan's settings: what a sweep costs before it runs (budgetssl/plan/). No run reads them,
    so they are volatile (config/volatile.py): a run's folder and result do not depend on them."""

    device: str = MISSING  # an accelerator of meter/peak.py's table: h100_sxm, h100_pcie, a100, ...
    gpus: int | None = MISSING  # GPUs per job; null: the launcher's nodes x gpus_per_node, else 1
    mfu: float | None = MISSING  # model FLOP utilisation assumed; null: from_runs' evidence, else the default
    from_runs: str | None = MISSING  # a folder of run records: the median measured mfu of matching ones
    out: str | None = MISSING  # where plan.csv and plan.json go; null: the sweep's directory


@dataclass
class WandbConfig:
    mode: WandbMode = MISSING  # offline | online | disabled; credentials come from wandb's own login
    project: str = MISSING
    entity: str | None = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING


@dataclass
class LoggerConfig:
    """Loggers beside the run folder's own metrics.jsonl (which is always written)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ReadoutConfig:
    """Frozen features read out (budgetssl/readout/): k-NN and linear accuracy on the pretraining data's
    labels, and the linear fit the segmentation probe (transfer.probe) shares. configs/config.yaml holds
    the values and says where each comes from."""

    classify: bool = MISSING  # knn_accuracy and linear_accuracy of every backbone transferred
    train_images: int = MISSING  # the k-NN bank and the linear classifier's training set (train split)
    test_images: int = MISSING  # scored on the held-out (val) split
    batch_size: int = MISSING  # images per forward pass, and the linear classifier's mini-batch
    knn_k: int = MISSING
    knn_temperature: float = MISSING
    lrs: list[float] = MISSING  # the linear heads' lr grid (AdamW), one chosen on the held-out part
    weight_decay: float = MISSING
    max_epochs: int = MISSING
    patience: int = MISSING  # converged: the best held-out loss fell by less than tol nats in this many
    tol: float = MISSING  # epochs
    held_out_fraction: float = MISSING  # of the training images, kept out of the fit to choose the lr
    probe_lrs: list[float] = MISSING  # the probe's lr grid
    probe_images: int | None = MISSING  # the probe's training images (of the transfer's); null = all
    probe_batch_size: int = MISSING  # images per step of the probe's head


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
    eval_mode: EvalMode = MISSING  # resize (score at image_size) | slide (windows at full resolution)
    eval_stride: int | None = MISSING  # slide mode's stride; null = 2/3 of a window
    probe: bool = MISSING  # also score the backbone frozen, with a linear head (probe_miou, probe_flops)
