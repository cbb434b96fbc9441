"""Shared helpers: composing real configs, running the commands on tiny settings (in this process, or
through their installed console scripts), one thread where runs are compared."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from budgetssl.cli.common import Stage, execute
from budgetssl.config.check import RunConfig
from budgetssl.config.compose import compose_config
from budgetssl.config.run_name import run_name
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.settings import LoopSettings
from budgetssl.methods.registry import METHODS
from budgetssl.plugins import check_config
from budgetssl.stages.commands import pretrain_only, pretrain_then_transfer, transfer_only

BIN = Path(sys.executable).parent
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker: the workers share the machine's cores (pytest -n, pyproject.toml).
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
# Rendered synthetic scenes, dataset file indexes and the CPU's measured peak are cached under
# $XDG_CACHE_HOME: the tests' cache is kept out of the user's, and is one for the whole test run. pytest
# imports this file before it starts its workers (pytest-xdist), which inherit the folder through the
# environment, as do the commands the tests start: a scene is rendered once per run, not once per worker
# and per command (the store's files are written atomically, so workers share it safely).
TEST_CACHE = "BUDGETSSL_TEST_CACHE"
OWN_CACHE = TEST_CACHE not in os.environ  # this process made it (pytest's main process): it removes it
if OWN_CACHE:
    os.environ[TEST_CACHE] = tempfile.mkdtemp(prefix="budgetssl-test-cache-")
os.environ["XDG_CACHE_HOME"] = os.environ[TEST_CACHE]
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


# Every registered method (methods/zoo/ and entry points): what tests that cover "every method" iterate, as
# timm's tests iterate list_models(). A method dropped into methods/zoo/ with its two configs is run by them.
METHOD_NAMES = METHODS.names()
# The methods with an EMA teacher, as each declares it (Method.forward_only).
TEACHER_METHODS = [m for m in METHOD_NAMES if "teacher" in METHODS.get(m).forward_only]


def small(method: str) -> list[str]:
    """The method at its CPU size (configs/method/cpu/: the demo's heads, decoders and text towers),
    the one place CPU sizes are written."""
    return [f"method=cpu/{method}"]


# One step of the tiny config costs about 0.8 GFLOPs; this buys a handful of steps.
TINY_BUDGET = "budget.flops=5e9"


def run_config(*overrides: str) -> RunConfig:
    return check_config(compose_config(list(overrides)))


def hydra_folder(parent: Path, command: str, overrides: list[str]) -> Path:
    """What Hydra makes of the default hydra.run.dir (results/runs/${run_name:}) under `parent`: the folder
    named by the composed config, the config saved as .hydra/config.yaml."""
    cfg = compose_config(overrides)
    OmegaConf.set_struct(cfg, False)
    folder = parent / run_name(OmegaConf.merge(cfg, {"hydra": {"job": {"name": command}}}))  # type: ignore[arg-type]
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    return folder


@functools.cache
def default_run() -> RunConfig:
    """configs/config.yaml as it composes with no overrides (once per test process)."""
    return run_config()


def default_settings(recipe: Recipe, **changes) -> LoopSettings:
    """The loop's settings as configs/config.yaml's `train:` section gives them (their one source), with
    `recipe` on a cosine timeline and `changes` (e.g. progress=False) made."""
    return dataclasses.replace(LoopSettings.from_train(default_run().train, recipe), **changes)


# What each console script runs once Hydra has composed its config (cli/pretrain.py, transfer.py, run.py).
STAGES: dict[str, Stage] = {
    "budgetssl-pretrain": pretrain_only,
    "budgetssl-transfer": transfer_only,
    "budgetssl-run": pretrain_then_transfer,
}


def run_in_process(command: str, *overrides: str, folder: Path, stage: Stage | None = None) -> int:
    """Run `command` (budgetssl-pretrain, -transfer or -run) in this process, in `folder`, and return the
    exit code its console script would exit with: what the script's Hydra main runs (cli/common.py), on
    the same config composed from the same overrides, without the seconds a new process spends importing
    torch, timm and Hydra. The record is the script's, key for key and loss for loss (on one thread:
    `one_thread`). An exception the command does not turn into a record and an exit code is raised, as in
    the script. `stage` replaces the command's stages (the same record and folder handling).

    `folder` stands for hydra.run.dir. What is Hydra's own stays with the console script and the tests
    that run it (`cli`): a bad override raises ConfigError here where the script prints Hydra's message;
    no .hydra/ folder or <job>.log is written; a completed folder is not skipped. What the command prints
    (`<command>: error: ...` on stderr) it prints here too, for capsys.
    """
    return execute(compose_config(list(overrides)), folder, stage or STAGES[command], command)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread here and in the commands started (OMP_NUM_THREADS), as the console scripts
    run under `cli`: the same arithmetic in every run compared, and no slowdown from threads competing for
    a busy machine's cores. A module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env


def cli(command: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run an installed console script the way a user would."""
    # One thread: the tiny models here run faster on one than on two (benchmarks/README.md).
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


def pytest_unconfigure(config: pytest.Config) -> None:
    if OWN_CACHE:  # the workers have ended by now
        shutil.rmtree(os.environ[TEST_CACHE], ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a test marked slow go first: xdist hands out whole modules in collection order
    (pyproject.toml: --dist loadscope --no-loadscope-reorder), so the two workers finish together rather
    than one waiting on a long run handed out last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def same_value(a, b) -> bool:  # noqa: ANN001
    """A state_dict's entries compared: tensors element for element, a module's extra state (DINOv2's mask
    generator, nn.Module.get_extra_state) by value."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return type(a) is type(b) and a == b


def hook_step(model, optimizer, batch, clock):  # noqa: ANN001, ANN201
    """One update of a method as the Trainer runs its hooks around it (engine/trainer.py: step start,
    forward, backward, after backward, optimizer step, step end), with a plain optimizer: what the parity
    tests compare against a reference's training iteration. Returns the step's output."""
    model.on_step_start(clock)
    out = model(batch)
    optimizer.zero_grad()
    out.loss.backward()
    model.on_after_backward(clock)
    optimizer.step()
    model.on_step_end(clock)
    return out
