"""Sweeps through Hydra's launchers, run folders named by config, re-launches that skip finished work,
the study's grid as one command, and wandb offline."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from budgetssl.cli.common import execute
from budgetssl.config.compose import compose_config
from budgetssl.config.paths import config_dir
from budgetssl.stages.commands import pretrain_only
from conftest import METHOD_NAMES, TINY, cli, summary

# One run fails at once (a budget below one step), one completes.
SWEEP = [*TINY, "budget.flops=1e5,5e9"]


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("results/runs/*/summary.json"))


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_failed_run_skips_completed_ones_when_launched_again_and_keeps_its_configs(
    tmp_path,
):
    first = cli("budgetssl-run", "--multirun", *SWEEP, cwd=tmp_path, check=False)
    assert first.returncode != 0 and "RunFailed" in first.stderr  # Hydra reports the failed job at the end
    folders = run_folders(tmp_path)
    assert [f.name.rsplit("_", 1)[0] for f in folders] == [
        "run_supervised_vit_nano_synthetic_1e5",
        "run_supervised_vit_nano_synthetic_5e9",
    ]
    failed, done = (summary(f) for f in folders)
    assert failed["status"] == "failed" and "budget" in failed["error"]
    assert done["status"] == "completed"  # ran after the failure

    again = cli("budgetssl-run", "--multirun", *SWEEP, cwd=tmp_path, check=False)
    assert again.stdout.count("skipped, already completed") == 1  # the failed one is tried again
    assert summary(folders[1]) == done  # untouched
    # Each sweep's config is kept (Hydra's multirun.yaml is the latest of them).
    sweep_dir = tmp_path / "results" / "runs"
    kept = sorted(sweep_dir.glob("multirun_*.yaml"))
    assert len(kept) == 2 and all("budget.flops=1e5,5e9" in k.read_text() for k in kept)
    assert (sweep_dir / "multirun.yaml").read_text() == kept[1].read_text()

    # A single run of the same config is the same folder; rerun=true runs it again in place.
    forced = cli("budgetssl-run", *TINY, "budget.flops=5e9", "rerun=true", cwd=tmp_path)
    assert "skipped" not in forced.stdout and run_folders(tmp_path) == folders
    assert summary(folders[1])["finished_at"] >= done["finished_at"]
    assert summary(folders[1])["started_at"] != done["started_at"] or (
        summary(folders[1])["wall_seconds"] != done["wall_seconds"]
    )


@pytest.mark.slow
def test_the_submitit_launcher_runs_a_sweep_locally(tmp_path):
    cli("budgetssl-pretrain", "--multirun", "hydra/launcher=local", *TINY, "budget.flops=5e9", cwd=tmp_path)
    (folder,) = run_folders(tmp_path)
    assert summary(folder)["status"] == "completed"
    assert folder.name.startswith("pretrain_supervised_vit_nano_synthetic_5e9_")
    assert list((tmp_path / "results" / "runs" / ".submitit").glob("*/*_log.out"))  # submitit's own job logs


def compose_experiment(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}", *overrides], return_hydra_config=True)


def compose_study(*overrides: str):
    return compose_experiment("study", *overrides)


def test_the_study_grid_is_one_command_for_slurm():
    cfg = compose_study(
        "hydra.launcher.partition=gpu", "hydra.launcher.account=lab", "hydra.launcher.nodes=2"
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.nodes) == ("gpu", "lab", 2)
    assert launcher.gpus_per_node == 8 and launcher.tasks_per_node == 8 and launcher.timeout_min > 0
    assert launcher.max_num_timeout > 0  # preempted or timed-out jobs are requeued
    params = cfg.hydra.sweeper.params
    grid = list(itertools.product(*(str(v).split(",") for v in params.values())))
    assert len(grid) == 6 * 2 * 5 * 5
    assert set(str(params.method).split(",")) == STUDY_SIX
    assert set(str(params.backbone).split(",")) == {"vit_base", "vit_large"}
    assert set(str(params.dataset).split(",")) == {"imagenet1k", "imagenet21k", "coco", "jft300m", "align"}
    assert cfg.transfer.name == "ade20k" and cfg.dataset.image_size == 224


STUDY_SIX = {"supervised", "clip", "mae", "dino", "byol", "simclr"}


def test_the_demo_sweeps_the_studys_six_and_the_zoo_every_registered_method():
    """What Hydra's sweeper is built with (instantiate resolves `${methods:cpu}`, as at launch)."""
    demo = instantiate(compose_experiment("demo").hydra.sweeper)
    assert set(demo.params["method"].split(",")) == {f"cpu/{m}" for m in STUDY_SIX}
    zoo_cfg = compose_experiment("zoo")
    zoo = instantiate(zoo_cfg.hydra.sweeper)
    assert zoo.params["method"].split(",") == [f"cpu/{m}" for m in METHOD_NAMES]
    assert zoo.params["seed"] == demo.params["seed"] and zoo_cfg.budget.ladder == [2.5e11, 5e11, 1e12]
    assert zoo_cfg.hydra.sweep.dir == "results/zoo/runs"


def test_wandb_logs_offline_into_the_run_folder_and_keeps_no_credentials(tmp_path):
    secret = "0123456789abcdef0123456789abcdef01234567"
    env_key = {"WANDB_API_KEY": secret}
    os.environ.update(env_key)
    folder = tmp_path / "run"
    try:  # in this process: what the command runs after Hydra's main
        cfg = compose_config([*TINY, "budget.flops=5e9", "logger.wandb.mode=offline"])
        assert execute(cfg, folder, pretrain_only, "budgetssl-pretrain") == 0
    finally:
        os.environ.pop("WANDB_API_KEY")
    (offline,) = (folder / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))  # the run's history, to `wandb sync` later
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "flops", "loss", "lr", "step_seconds", "data_seconds"} <= set(rows[-1])
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
