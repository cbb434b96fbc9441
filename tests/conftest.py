"""Shared helpers: composing real configs, running the real console scripts on tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from budgetssl.config.check import RunConfig
from budgetssl.config.compose import compose_config
from budgetssl.plugins import check_config

BIN = Path(sys.executable).parent
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker: the workers share the machine's cores (pytest -n, pyproject.toml).
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
# Dataset file indexes are cached under $XDG_CACHE_HOME: keep the tests' out of the user's cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="budgetssl-test-cache-")
DATA = Path(__file__).parent / "data"

# Small enough for a CPU test to finish in seconds; the real code paths all the same.
TINY = [
    "dataset.image_size=16",
    "dataset.num_train=256",
    "train.batch_size=16",
    "train.progress=false",
    "energy.track=false",
    "logger.wandb.mode=disabled",
    "transfer.steps=5",
    "transfer.batch_size=16",
    "transfer.num_train=64",
    "transfer.num_val=32",
]


def small(method: str) -> list[str]:
    """The method at its CPU size (configs/method/cpu/: the demo's heads, decoders and text towers),
    the one place CPU sizes are written."""
    return [f"method=cpu/{method}"]


# One step of the tiny config costs about 0.8 GFLOPs; this buys a handful of steps.
TINY_BUDGET = "budget.flops=5e9"


def run_config(*overrides: str) -> RunConfig:
    return check_config(compose_config(list(overrides)))


def cli(command: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run an installed console script the way a user would."""
    # One thread: the tiny models here run faster on one than on two (10.6 s against 13.0 s for a run).
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(BIN / command), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture
def reference_flops() -> dict:
    return json.loads((DATA / "reference_flops.json").read_text())["models"]
