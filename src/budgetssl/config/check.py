"""Turn a composed Hydra config into typed, validated nodes; every mistake becomes a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from budgetssl.config.schema import (
    BackboneConfig,
    BudgetConfig,
    DatasetConfig,
    EnergyConfig,
    LoggerConfig,
    MethodConfig,
    TrainConfig,
    TransferConfig,
)
from budgetssl.errors import ConfigError

T = TypeVar("T")

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class RunConfig:
    seed: int
    budget: BudgetConfig
    train: TrainConfig
    energy: EnergyConfig
    dataset: DatasetConfig
    backbone: BackboneConfig
    method: MethodConfig
    transfer: TransferConfig
    logger: LoggerConfig
    rerun: bool = False

    def to_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.structured(self), resolve=True)  # type: ignore[return-value]


def typed(node: Any, cls: type[T], path: str) -> T:
    """Merge `node` onto the schema `cls`: unknown keys, missing values and bad types are errors."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"'{path}' must be a mapping of keys to values, got {node!r}")
    valid = ", ".join(f.name for f in fields(cls))  # type: ignore[arg-type]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigKeyError as e:
        raise ConfigError(f"unknown key '{path}.{e.key}'; valid keys under '{path}': {valid}") from None
    except MissingMandatoryValue as e:
        raise ConfigError(f"'{path}.{e.key}' must be set (e.g. {path}.{e.key}=<value>)") from None
    except OmegaConfBaseException as e:
        key = f"{path}.{e.key}" if getattr(e, "key", None) else path
        raise ConfigError(f"invalid value for '{key}': {e.msg}") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_config(cfg: DictConfig) -> RunConfig:
    """Validate the whole composed config, including the cross-group combinations."""
    from budgetssl.backbones.registry import FAMILIES
    from budgetssl.data.registry import DATASETS
    from budgetssl.methods.registry import METHODS
    from budgetssl.transfer.registry import TRANSFERS

    try:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {e}") from None
    known = [f.name for f in fields(RunConfig)]
    for key in cfg:
        _require(key in known, f"unknown top-level key '{key}'; valid keys: {', '.join(known)}")
    for key in known:
        _require(key in cfg, f"config has no '{key}' section; add it or pick a {key}= option")

    for group in ("dataset", "method", "transfer", "backbone"):
        node = cfg[group]
        _require(
            isinstance(node, DictConfig) and "name" in node,
            f"'{group}' must be a config with a 'name' field (choose it with {group}=<name>)",
        )
    dataset_cls = DATASETS.get(cfg.dataset.name)
    method_cls = METHODS.get(cfg.method.name)
    transfer_cls = TRANSFERS.get(cfg.transfer.name)

    seed = cfg.seed
    _require(isinstance(cfg.rerun, bool), f"rerun must be true or false, got {cfg.rerun!r}")
    _require(isinstance(seed, int) and not isinstance(seed, bool), f"seed must be an integer, got {seed!r}")
    run = RunConfig(
        seed=seed,
        budget=typed(cfg.budget, BudgetConfig, "budget"),
        train=typed(cfg.train, TrainConfig, "train"),
        energy=typed(cfg.energy, EnergyConfig, "energy"),
        dataset=typed(cfg.dataset, dataset_cls.config_class, "dataset"),
        backbone=typed(cfg.backbone, BackboneConfig, "backbone"),
        method=typed(cfg.method, method_cls.config_class, "method"),
        transfer=typed(cfg.transfer, transfer_cls.config_class, "transfer"),
        logger=typed(cfg.logger, LoggerConfig, "logger"),
        rerun=cfg.rerun,
    )
    _check_values(run)
    family = FAMILIES.get(run.backbone.family)
    family.check(run.backbone, run.dataset.image_size)
    family.check(run.backbone, run.transfer.image_size)
    provided = dataset_cls.provided(run.dataset)
    missing = sorted(set(method_cls.needs) - set(provided))
    hint = dataset_cls.missing_hint(run.dataset, set(missing)) if missing else ""
    _require(
        not missing,
        f"method '{run.method.name}' needs {', '.join(missing)} from its data, but dataset "
        f"'{run.dataset.name}' provides only {', '.join(sorted(provided))}; "
        + (f"{hint}, or pick another dataset= or method=" if hint else "pick another dataset= or method="),
    )
    method_cls.check(run)
    return run


def _check_values(run: RunConfig) -> None:
    b, t, e, h = run.budget, run.train, run.energy, run.energy.hardware
    _require(
        b.flops > 0,
        f"budget.flops must be a positive number of FLOPs (e.g. budget.flops=2e12), got {b.flops:g}",
    )
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(
        t.lr is None or t.lr > 0, f"train.lr must be > 0 or null (scaled from train.base_lr), got {t.lr}"
    )
    _require(0 <= t.final_lr_ratio <= 1, f"train.final_lr_ratio must be in [0, 1], got {t.final_lr_ratio}")
    _require(0 <= t.warmup_fraction < 1, f"train.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    _require(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip must be > 0 or null")
    from budgetssl.engine.recipe import check_recipe

    check_recipe(t)
    _require(t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}, got '{t.precision}'")
    mode = run.logger.wandb.mode
    _require(mode in WANDB_MODES, f"logger.wandb.mode must be one of {WANDB_MODES}, got '{mode}'")
    _require(t.device in DEVICES, f"train.device must be one of {DEVICES}, got '{t.device}'")
    _require(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    _require(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _require(
        t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1,
        f"train.checkpoint_every_steps must be >= 1 or null, got {t.checkpoint_every_steps}",
    )
    _require(run.dataset.image_size >= 8, f"dataset.image_size must be >= 8, got {run.dataset.image_size}")
    _require(e.measure_power_secs > 0, "energy.measure_power_secs must be > 0")
    for key in ("peak_flops_per_s", "power_watts", "pue", "grid_kg_per_kwh"):
        _require(getattr(h, key) > 0, f"energy.hardware.{key} must be > 0, got {getattr(h, key)}")
    _require(0 < h.utilization <= 1, f"energy.hardware.utilization must be in (0, 1], got {h.utilization}")
    tr = run.transfer
    _require(
        (tr.steps is None) != (tr.flops is None),
        "set exactly one transfer budget: transfer.steps=<int> or transfer.flops=<float> "
        f"with the other null (got steps={tr.steps}, flops={tr.flops})",
    )
    _require(tr.steps is None or tr.steps >= 1, f"transfer.steps must be >= 1, got {tr.steps}")
    _require(tr.flops is None or tr.flops > 0, f"transfer.flops must be > 0, got {tr.flops}")
    from budgetssl.transfer.heads import HEADS

    _require(tr.head in HEADS, f"transfer.head must be one of {tuple(HEADS)}, got '{tr.head}'")
    _require(
        tr.layer_decay is None or 0 < tr.layer_decay <= 1,
        f"transfer.layer_decay must be in (0, 1] or null, got {tr.layer_decay}",
    )
    _require(
        not (tr.layer_decay is not None and tr.freeze_backbone),
        "transfer.layer_decay has no effect with transfer.freeze_backbone=true; set one of them",
    )
    _require(tr.batch_size >= 1, f"transfer.batch_size must be >= 1, got {tr.batch_size}")
    _require(tr.lr > 0, f"transfer.lr must be > 0, got {tr.lr}")
    _require(
        tr.backbone_lr_scale >= 0, f"transfer.backbone_lr_scale must be >= 0, got {tr.backbone_lr_scale}"
    )
    _require(tr.image_size >= 8, f"transfer.image_size must be >= 8, got {tr.image_size}")
    from budgetssl.transfer.evaluate import EVAL_MODES

    _require(
        tr.eval_mode in EVAL_MODES, f"transfer.eval_mode must be one of {EVAL_MODES}, got '{tr.eval_mode}'"
    )
    _require(
        tr.eval_stride is None or 1 <= tr.eval_stride <= tr.image_size,
        f"transfer.eval_stride must be in [1, transfer.image_size={tr.image_size}] or null, "
        f"got {tr.eval_stride}",
    )
