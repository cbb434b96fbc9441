"""Checks live with their subject: config/ names no stage, closed lists are schema Enums refused with their
values, each plug-in checks its own section, and one list says which keys cannot change a result."""

from __future__ import annotations

import ast
import copy
from enum import Enum
from pathlib import Path

import pytest
import torch

from budgetssl.config import schema
from budgetssl.config.run_name import config_hash
from budgetssl.config.volatile import VOLATILE, covered, without
from budgetssl.engine.checkpoint_files import MAY_CHANGE, check_same_config
from budgetssl.errors import ConfigError
from budgetssl.transfer.base import build_segmentation
from conftest import run_config
from layouts import write_ade20k, write_voc

CONFIG = Path(schema.__file__).parent
# The packages config/ may import: itself and the errors.
ALLOWED = ("budgetssl.config", "budgetssl.errors")


def budgetssl_imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(m, line) for m, line in found if m.split(".")[0] == "budgetssl"]


def test_config_names_no_stage():
    wrong = []
    for path in sorted(CONFIG.glob("*.py")):
        for module, line in budgetssl_imports(path):
            if not module.startswith(ALLOWED):
                wrong.append(f"{path.name}:{line} imports {module}")
    assert not wrong, wrong


ENUM_KEYS = [
    ("train.precision", schema.Precision),
    ("train.device", schema.Device),
    ("train.lr_scaling", schema.LrScaling),
    ("train.grad_clip_mode", schema.GradClipMode),
    ("logger.wandb.mode", schema.WandbMode),
    ("transfer.eval_mode", schema.EvalMode),
]


@pytest.mark.parametrize(("key", "choices"), ENUM_KEYS)
def test_a_value_off_a_closed_list_is_refused_with_the_list(key, choices):
    valid = ", ".join(m.value for m in choices)
    with pytest.raises(ConfigError, match=f"^{key} must be one of {valid}; got 'nope'$"):
        run_config(f"{key}=nope")


def test_a_list_of_closed_values_names_the_unknown_ones():
    message = r"^train.no_weight_decay may list biases_norms, tokens; got unknown \['bias'\]$"
    with pytest.raises(ConfigError, match=message):
        run_config("train.no_weight_decay=[tokens,bias]")


def plain(tree) -> bool:
    if isinstance(tree, dict):
        return all(plain(v) for v in tree.values())
    if isinstance(tree, list):
        return all(plain(v) for v in tree)
    return not isinstance(tree, Enum)


def test_enums_leave_the_config_as_plain_strings(tmp_path):
    run = run_config("train.grad_clip_mode=per_param", "transfer.eval_mode=slide")
    assert run.train.precision == "fp32" and run.train.grad_clip_mode == "per_param"  # members compare as str
    saved = run.to_dict()
    assert plain(saved) and type(saved["train"]["grad_clip_mode"]) is str
    torch.save({"config": saved}, tmp_path / "c.pt")  # a checkpoint's config loads under weights_only
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == saved


def test_an_unknown_optimizer_is_refused_at_config_time():
    with pytest.raises(ConfigError, match="train.optimizer 'adamz' is not an optimizer timm knows"):
        run_config("train.optimizer=adamz")


def test_each_transfer_dataset_checks_its_own_section():
    with pytest.raises(ConfigError, match="transfer 'synthetic' is generated in memory"):
        run_config("transfer.root=/somewhere")
    with pytest.raises(ConfigError, match="transfer.head must be one of linear, multilevel; got 'upernet'"):
        run_config("transfer.head=upernet")


def changed(tree: dict, key: str) -> dict:
    """A copy of the nested `tree` with the value at dotted `key` replaced."""
    out = copy.deepcopy(tree)
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    assert leaf in node, key
    node[leaf] = {"changed": True} if isinstance(node[leaf], dict) else f"changed-{node[leaf]}"
    return out


@pytest.fixture(scope="module")
def job() -> dict:
    return run_config().to_dict()


@pytest.mark.parametrize("key", VOLATILE)
def test_a_volatile_key_neither_renames_the_run_nor_blocks_its_resume(job, key):
    other = changed(job, key)
    assert config_hash(other, "pretrain") == config_hash(job, "pretrain")
    check_same_config(job, other, Path("run/checkpoints/step_1.pt"))


@pytest.mark.parametrize("key", ["train.device", "energy.country_iso_code", "transfer.lr"])
def test_a_resume_may_also_change_what_the_checkpoint_does_not_depend_on(job, key):
    assert not covered(key) and covered(key, MAY_CHANGE)
    other = changed(job, key)
    assert config_hash(other, "pretrain") != config_hash(job, "pretrain")  # another run folder
    check_same_config(job, other, Path("run/checkpoints/step_1.pt"))  # but this one resumes


@pytest.mark.parametrize("key", ["seed", "train.lr_scaling", "method.name"])
def test_a_key_that_changes_the_result_renames_the_run_and_blocks_its_resume(job, key):
    other = changed(job, key) if "." in key else {**job, key: job[key] + 1}
    assert config_hash(other, "pretrain") != config_hash(job, "pretrain")
    with pytest.raises(ConfigError, match="holds a checkpoint of another config"):
        check_same_config(job, other, Path("run/checkpoints/step_1.pt"))


def test_without_leaves_the_input_alone():
    tree = {"train": {"progress": True, "lr": 1.0}, "rerun": False, "seed": 0}
    assert without(tree) == {"train": {"lr": 1.0}, "seed": 0}
    assert tree == {"train": {"progress": True, "lr": 1.0}, "rerun": False, "seed": 0}


@pytest.mark.parametrize(
    ("transfer", "write", "missing"),
    [
        ("ade20k", write_ade20k, "annotations/training/ADE_train_00000002.png"),
        ("voc", write_voc, "SegmentationClass/2007_000001.png"),
    ],
)
def test_ade20k_and_voc_name_a_missing_mask_alike(tmp_path, transfer, write, missing):
    root = write(tmp_path / transfer)
    (root / missing).unlink()
    with pytest.raises(ConfigError) as info:
        build_segmentation(run_config(f"transfer={transfer}", f"transfer.root={root}").transfer, "train")
    message = str(info.value)
    assert "have no mask, e.g." in message and str(root / missing) in message
    assert f"transfer.root={root}; expected " in message and "restore the missing files" in message
