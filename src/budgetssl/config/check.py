"""Turn a composed Hydra config into typed, validated sections; every mistake becomes a ConfigError.

Layering: config/ is the bottom of the package and names no stage. This module types each section onto
its schema (`typed`: unknown keys, missing values, wrong types and values outside a schema Enum are errors
that name the key and what is valid) and checks the values of the sections every run has: budget, train
(with its recipe, config/recipe.py), energy, the dataset's image size. A plug-in's section (dataset,
method, transfer, backbone family) is typed onto the config class its registry names and checked by the
plug-in itself (`Method.check`, `SegmentationDataset.check`, a family's `check`); that assembly is one
layer up, in budgetssl/plugins.py, which calls `resolve` and `build_run` here.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from budgetssl.config.ladder import check_schedule
from budgetssl.config.recipe import check_recipe
from budgetssl.config.schema import (
    BackboneConfig,
    BudgetConfig,
    DatasetConfig,
    EnergyConfig,
    LoggerConfig,
    MethodConfig,
    PlanConfig,
    ReadoutConfig,
    TrainConfig,
    TransferConfig,
)
from budgetssl.errors import ConfigError

T = TypeVar("T")

# Config groups whose `name` picks a plug-in from a registry (budgetssl/plugins.py looks them up).
PLUGIN_GROUPS = ("dataset", "method", "transfer", "backbone")
# Top-level sections a config may leave out: budgetssl-plan's, which a config saved before it lacks.
OPTIONAL_SECTIONS = ("plan",)


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
    readout: ReadoutConfig
    rerun: bool = False
    plan: PlanConfig | None = None  # budgetssl-plan's section (None: a config saved before it existed)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers and strings (Enums by value): what checkpoints, wandb and the record store."""
        node = OmegaConf.structured(self)
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


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
    except ValidationError as e:
        raise (_not_a_choice(cls, node, path, e.full_key) or _invalid(path, e)) from None
    except OmegaConfBaseException as e:
        raise _invalid(path, e) from None


def _invalid(path: str, e: OmegaConfBaseException) -> ConfigError:
    key = f"{path}.{e.key}" if getattr(e, "key", None) else path
    return ConfigError(f"invalid value for '{key}': {e.msg}")


def _not_a_choice(cls: type, node: DictConfig, path: str, full_key: str) -> ConfigError | None:
    """The error for a value outside a schema Enum: the key, the valid values and the value given."""
    key = re.sub(r"\[\d+\]$", "", full_key)  # a list's item: the error is about the list
    choices, is_list = _enum_at(cls, key.split("."))
    if choices is None:
        return None
    valid = ", ".join(m.value for m in choices)
    given = OmegaConf.select(node, key)
    if is_list:
        bad = [v for v in given or () if v not in choices.__members__]
        return ConfigError(f"{path}.{key} may list {valid}; got unknown {bad}")
    return ConfigError(f"{path}.{key} must be one of {valid}; got '{given}'")


def _enum_at(cls: Any, keys: list[str]) -> tuple[type[Enum] | None, bool]:
    """The Enum a (nested) schema field holds, and whether the field is a list of them."""
    kind: Any = cls
    for key in keys:
        if not (isinstance(kind, type) and is_dataclass(kind)):
            return None, False
        kind = typing.get_type_hints(kind).get(key)
        kind = _without_none(kind)
    is_list = typing.get_origin(kind) is list
    if is_list:
        kind = _without_none(typing.get_args(kind)[0])
    return (kind, is_list) if isinstance(kind, type) and issubclass(kind, Enum) else (None, False)


def _without_none(kind: Any) -> Any:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is not list and len(args) == 1 else kind


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def resolve(cfg: DictConfig) -> DictConfig:
    """The config with interpolations resolved, every top-level section present and no unknown one,
    and each plug-in group naming its plug-in."""
    try:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {e}") from None
    known = [f.name for f in fields(RunConfig)]
    for key in cfg:
        _require(key in known, f"unknown top-level key '{key}'; valid keys: {', '.join(known)}")
    for key in known:
        _require(
            key in cfg or key in OPTIONAL_SECTIONS,
            f"config has no '{key}' section; add it or pick a {key}= option",
        )
    for group in PLUGIN_GROUPS:
        node = cfg[group]
        _require(
            isinstance(node, DictConfig) and "name" in node,
            f"'{group}' must be a config with a 'name' field (choose it with {group}=<name>)",
        )
    return cfg


def build_run(
    cfg: DictConfig,
    dataset: type[DatasetConfig],
    method: type[MethodConfig],
    transfer: type[TransferConfig],
) -> RunConfig:
    """Every section of the resolved `cfg` typed (the plug-in groups onto the config classes their
    plug-ins declare) and the generic sections' values checked."""
    seed = cfg.seed
    _require(isinstance(cfg.rerun, bool), f"rerun must be true or false, got {cfg.rerun!r}")
    _require(isinstance(seed, int) and not isinstance(seed, bool), f"seed must be an integer, got {seed!r}")
    run = RunConfig(
        seed=seed,
        budget=typed(cfg.budget, BudgetConfig, "budget"),
        train=typed(cfg.train, TrainConfig, "train"),
        energy=typed(cfg.energy, EnergyConfig, "energy"),
        dataset=typed(cfg.dataset, dataset, "dataset"),
        backbone=typed(cfg.backbone, BackboneConfig, "backbone"),
        method=typed(cfg.method, method, "method"),
        transfer=typed(cfg.transfer, transfer, "transfer"),
        logger=typed(cfg.logger, LoggerConfig, "logger"),
        readout=typed(cfg.readout, ReadoutConfig, "readout"),
        rerun=cfg.rerun,
        plan=typed(cfg.plan, PlanConfig, "plan") if "plan" in cfg else None,
    )
    check_values(run)
    return run


def check_values(run: RunConfig) -> None:
    """The values of the sections every run has (the closed lists were refused when typed)."""
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
    check_schedule(b, t)
    _require(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip must be > 0 or null")
    check_recipe(t)
    _require(
        t.num_workers == "auto"
        or (isinstance(t.num_workers, int) and not isinstance(t.num_workers, bool) and t.num_workers >= 0),
        f"train.num_workers must be an integer >= 0 or auto, got {t.num_workers!r}",
    )
    _require(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _require(
        t.monitor_images == 0 or t.monitor_images >= 2,
        f"train.monitor_images must be 0 (no monitors) or >= 2, got {t.monitor_images}",
    )
    _require(
        t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1,
        f"train.checkpoint_every_steps must be >= 1 or null, got {t.checkpoint_every_steps}",
    )
    _require(
        t.peak_flops_per_s is None or t.peak_flops_per_s > 0,
        f"train.peak_flops_per_s must be > 0 or null, got {t.peak_flops_per_s}",
    )
    _require(run.dataset.image_size >= 8, f"dataset.image_size must be >= 8, got {run.dataset.image_size}")
    _require(e.measure_power_secs > 0, "energy.measure_power_secs must be > 0")
    for key in ("peak_flops_per_s", "power_watts", "pue", "grid_kg_per_kwh"):
        _require(getattr(h, key) > 0, f"energy.hardware.{key} must be > 0, got {getattr(h, key)}")
    _require(0 < h.utilization <= 1, f"energy.hardware.utilization must be in (0, 1], got {h.utilization}")
    check_readout(run.readout)
    if run.plan is not None:
        check_plan(run.plan)


def check_plan(p: PlanConfig) -> None:
    """The plan's numbers (its device is checked against meter/peak.py's table where it is read)."""
    _require(p.gpus is None or p.gpus >= 1, f"plan.gpus must be >= 1 or null, got {p.gpus}")
    _require(
        p.mfu is None or 0 < p.mfu <= 1, f"plan.mfu must be in (0, 1] (a fraction of the peak), got {p.mfu}"
    )


def check_readout(r: ReadoutConfig) -> None:
    for key in ("train_images", "test_images", "batch_size", "knn_k", "max_epochs", "patience"):
        _require(getattr(r, key) >= 1, f"readout.{key} must be >= 1, got {getattr(r, key)}")
    _require(r.probe_batch_size >= 1, f"readout.probe_batch_size must be >= 1, got {r.probe_batch_size}")
    _require(r.knn_temperature > 0, f"readout.knn_temperature must be > 0, got {r.knn_temperature}")
    _require(
        len(r.lrs) >= 1 and all(lr > 0 for lr in r.lrs),
        f"readout.lrs must list learning rates > 0 (e.g. readout.lrs=[1e-3,1e-2]), got {list(r.lrs)}",
    )
    _require(
        len(r.probe_lrs) >= 1 and all(lr > 0 for lr in r.probe_lrs),
        f"readout.probe_lrs must list learning rates > 0 (e.g. [0.1]), got {list(r.probe_lrs)}",
    )
    _require(r.weight_decay >= 0, f"readout.weight_decay must be >= 0, got {r.weight_decay}")
    _require(r.tol >= 0, f"readout.tol must be >= 0, got {r.tol}")
    _require(
        0 < r.held_out_fraction < 1,
        f"readout.held_out_fraction must be in (0, 1), got {r.held_out_fraction}",
    )
    _require(
        r.probe_images is None or r.probe_images >= 2,
        f"readout.probe_images must be >= 2 or null (every training image), got {r.probe_images}",
    )
