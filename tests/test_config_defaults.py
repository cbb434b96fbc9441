"""Every default is written once: a dataclass field that a YAML file supplies has no default of its own
(so no dataclass default can disagree with its YAML), for every option of every config group, and the
loop's settings take theirs from configs/config.yaml's `train:` section."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf

from budgetssl.config.check import RunConfig
from budgetssl.config.compose import compose_config
from budgetssl.config.paths import config_dir
from budgetssl.config.schema import BackboneConfig, TrainConfig
from budgetssl.engine.settings import LoopSettings
from conftest import run_config

GROUPS = ("dataset", "backbone", "method", "transfer")


def written_twice(cls: type, node: DictConfig, path: str) -> list[str]:
    """Fields of `cls` with a default of their own that `node` (the YAML) also supplies."""
    found = []
    for f in dataclasses.fields(cls):
        if f.name not in node:
            continue
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            found += written_twice(f.default_factory, node[f.name], f"{path}.{f.name}")  # type: ignore[arg-type]
            continue
        if f.default is not dataclasses.MISSING and f.default is not MISSING:
            found.append(f"{path}.{f.name}: dataclass {f.default!r}, yaml {OmegaConf.select(node, f.name)!r}")
        elif f.default_factory is not dataclasses.MISSING:
            found.append(f"{path}.{f.name}: dataclass {f.default_factory()!r}, yaml {node[f.name]!r}")
    return found


def group_class(group: str, node: DictConfig) -> type:
    from budgetssl.data.registry import DATASETS
    from budgetssl.methods.registry import METHODS
    from budgetssl.transfer.registry import TRANSFERS

    registries = {"dataset": DATASETS, "method": METHODS, "transfer": TRANSFERS}
    if group == "backbone":
        return BackboneConfig
    return registries[group].get(node.name).config_class


def options(group: str) -> list[str]:
    root = config_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in Path(root).rglob("*.yaml"))


def test_top_level_sections_have_one_source():
    cfg = compose_config([])
    found = []
    for name, cls in typing.get_type_hints(RunConfig).items():
        if name not in GROUPS and dataclasses.is_dataclass(cls):
            found += written_twice(cls, cfg[name], name)
    assert not found, "defaults written in both a dataclass and config.yaml:\n" + "\n".join(found)


def test_every_group_option_has_one_source():
    found = []
    for group in GROUPS:
        for option in options(group):
            node = compose_config([f"{group}={option}"])[group]
            found += written_twice(group_class(group, node), node, f"{group}={option}: {group}")
    assert not found, "defaults written in both a dataclass and its YAML:\n" + "\n".join(found)


def test_loop_settings_have_no_defaults_of_their_own():
    """engine/settings.py LoopSettings is built from `train:` (from_train): a default there would be a
    second copy of config.yaml's, free to drift from it."""
    own = [
        f.name
        for f in dataclasses.fields(LoopSettings)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert not own, f"LoopSettings fields with a default of their own (config.yaml holds them): {own}"


def test_loop_settings_read_every_loop_option_from_train():
    """Each LoopSettings field named like a `train:` key is read from it: the composed config with every
    such option changed from its default comes through as changed."""
    run = run_config(
        *["train.precision=bf16", "train.device=cpu", "train.tf32=false", "train.fused_optimizer=false"],
        *["train.compile=true", "train.log_every=3", "train.progress=false"],
    )
    settings = LoopSettings.from_train(run.train)
    shared = [f.name for f in dataclasses.fields(LoopSettings) if f.name in TrainConfig.__dataclass_fields__]
    assert len(shared) == 7
    assert {name: getattr(settings, name) for name in shared} == {
        "precision": "bf16",
        "device": "cpu",
        "tf32": False,
        "fused_optimizer": False,
        "compile": True,
        "log_every": 3,
        "progress": False,
    }
