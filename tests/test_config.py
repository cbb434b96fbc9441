"""Configs are checked: misspelt keys, unknown options and bad values are errors that say what is valid."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from budgetssl.errors import ConfigError
from conftest import TINY, cli, run_config, run_in_process, summary

pytestmark = pytest.mark.usefixtures("one_thread")


def test_defaults_compose_and_validate():
    run = run_config()
    assert (run.method.name, run.backbone.name, run.dataset.name) == ("supervised", "vit_nano", "synthetic")
    assert run.transfer.image_size == run.dataset.image_size


@pytest.mark.parametrize(
    "override, message",
    [
        ("+train.lrr=0.1", r"unknown key 'train.lrr'; valid keys under 'train': batch_size, optimizer,"),
        ("+method.temperature=0.1", r"unknown key 'method.temperature'; valid keys under 'method': name,"),
        ("+foo=1", r"unknown top-level key 'foo'"),
        ("train.batch_size=abc", r"invalid value for 'train.batch_size'"),
        ("budget.flops=0", r"budget.flops must be a positive number of FLOPs"),
        ("budget.flops=-5", r"budget.flops must be a positive number of FLOPs"),
        ("train.precision=fp8", r"train.precision must be one of"),
        ("backbone=resnet18 backbone.patch_size=8", r"patch_size applies to ViTs only"),
        ("dataset.image_size=30", r"not a multiple of backbone.patch_size=4"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config(*override.split())


def test_unknown_group_option_lists_the_choices(tmp_path):
    # Through the console script: Hydra prints the choices and the command exits non-zero, no record.
    proc = cli("budgetssl-run", "method=simclrr", f"hydra.run.dir={tmp_path}/method", check=False)
    assert proc.returncode != 0
    assert "Could not find 'method/simclrr'" in proc.stderr
    assert "Available options" in proc.stderr
    assert not (tmp_path / "method" / "summary.json").exists()
    # The other groups: the same message from composing the same config, in this process.
    for group, bad in [("backbone", "vit_huge"), ("dataset", "imagenet9k")]:
        with pytest.raises(ConfigError) as info:
            run_in_process("budgetssl-run", f"{group}={bad}", folder=tmp_path / group)
        assert f"Could not find '{group}/{bad}'" in str(info.value)
        assert "Available options" in str(info.value)
        assert not (tmp_path / group / "summary.json").exists()


def test_unknown_override_key_fails_without_a_record(tmp_path):
    with pytest.raises(ConfigError, match="lrr"):
        run_in_process("budgetssl-pretrain", "train.lrr=0.1", folder=tmp_path)
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["budget.flops=0"], "budget.flops must be a positive number of FLOPs"),
        (["budget.flops=-1e12"], "budget.flops must be a positive number of FLOPs"),
        (["budget.flops=1e6"], "smaller than one training step"),
    ],
)
def test_bad_budget_exits_non_zero_with_a_failed_record(args, message, tmp_path, capsys):
    # The exit code budgetssl-run returns (its console script exits with it: test_resume.py's SIGTERM).
    assert run_in_process("budgetssl-run", *TINY, *args, folder=tmp_path) == 2
    assert message in capsys.readouterr().err
    record = summary(tmp_path)
    assert record["status"] == "failed" and message in record["error"]


def test_user_config_folder_on_the_search_path(tmp_path):
    (tmp_path / "method").mkdir()
    # A user's method extends a shipped one (its recipe and every default come along) and changes a value.
    head = "# @package _global_\ndefaults:\n  - /method/supervised\n  - _self_\n"
    (tmp_path / "method" / "supervised_smooth.yaml").write_text(head + "method:\n  label_smoothing: 0.3\n")
    run = run_config(f"hydra.searchpath=[file://{tmp_path}]", "method=supervised_smooth")
    assert run.method.label_smoothing == 0.3


def test_user_config_with_a_misspelt_key_is_refused(tmp_path):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /method/supervised\n  - _self_\nmethod:\n  label_smoothin: 0.3\n"
    )
    with pytest.raises(ConfigError, match="unknown key 'method.label_smoothin'"):
        run_config(f"hydra.searchpath=[file://{tmp_path}]", "method=typo")


def test_installed_wheel_carries_the_configs(tmp_path):
    """The console scripts find configs/ from a wheel as from a clone."""
    root = __import__("pathlib").Path(__file__).parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("budgetssl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "budgetssl/configs/config.yaml" in names
    assert "budgetssl/configs/method/supervised.yaml" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "from budgetssl.config.paths import config_dir; print(config_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
    )
    assert out.stdout.strip() == str(target / "budgetssl" / "configs")
