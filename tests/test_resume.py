"""Preemption and resume: kill -9 mid-run or SIGTERM, run the same command again, and the record equals
the uninterrupted run's (steps, FLOPs, final loss on CPU), with every step logged once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from budgetssl.engine.checkpoint_files import Checkpoints, flatten, read_checkpoint
from budgetssl.engine.loop import LoopResult, train
from budgetssl.engine.signals import EXIT_INTERRUPTED
from budgetssl.meter.budget import StepBudget
from budgetssl.stages.pretrain import build, loop_settings, pretrain_checkpoints
from conftest import BIN, METHOD_NAMES, TINY, run_config, run_in_process, same_value, small, summary

# MAE draws its masks from the global RNG on every step: a resumed run must restore it exactly.
SETTINGS = [
    *TINY,
    *small("mae"),
    "budget.flops=1.1e10",
    "train.checkpoint_every_steps=3",
    "train.log_every=1",
]
SAME = ("status", "planned_steps", "steps", "train_flops", "flops_per_step", "first_loss", "final_loss")
# The monitors: the values at initialisation kept through the checkpoint, the end's the same run's.
SAME += ("monitor_init", "monitor_final", "monitor_final_steps", "monitor_calls", "monitor_flops", "collapse")


pytestmark = pytest.mark.usefixtures("one_thread")


def pretrain(folder: Path, *extra: str) -> int:
    return run_in_process("budgetssl-pretrain", *SETTINGS, *extra, folder=folder)


def start_cli(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(
        [str(BIN / "budgetssl-pretrain"), *SETTINGS, f"hydra.run.dir={folder}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not list((folder / "checkpoints").glob("step_*.pt")):
        assert proc.poll() is None, (
            f"the run ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
        )
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def metric_steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    assert pretrain(folder) == 0
    record = summary(folder)
    assert record["resumed_from_step"] == 0 and record["steps"] >= 24
    return folder


def assert_same_run(folder: Path, reference: Path) -> None:
    got, want = summary(folder), summary(reference)
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    assert metric_steps(folder) == metric_steps(reference) == list(range(1, want["steps"] + 1))
    assert losses(folder) == losses(reference)  # every step of the history, not only the last
    assert len(list((folder / "checkpoints").glob("step_*.pt"))) == 1  # the final one


def test_kill_9_mid_run_then_the_same_command_resumes_to_the_same_record(tmp_path, reference):
    folder = tmp_path / "run"
    proc = start_cli(folder)
    wait_for_checkpoint(folder, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (folder / "summary.json").exists()
    assert pretrain(folder) == 0  # the same command again (in this process: the kill needed another)
    record = summary(folder)
    assert 3 <= record["resumed_from_step"] < record["steps"]
    assert_same_run(folder, reference)


def test_sigterm_checkpoints_exits_cleanly_and_resumes(tmp_path, reference):
    folder = tmp_path / "run"
    proc = start_cli(folder)
    wait_for_checkpoint(folder, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    record = summary(folder)
    step = record["interrupted_at_step"]
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert "Traceback" not in err and f"stopped by SIGTERM after step {step}" in err
    assert (folder / record["checkpoint"]).is_file() and record["checkpoint"].endswith(f"step_{step:09d}.pt")
    assert metric_steps(folder) == list(range(1, step + 1))
    assert pretrain(folder) == 0
    assert summary(folder)["resumed_from_step"] == step
    assert_same_run(folder, reference)


@pytest.fixture
def harmless_sigusr1():
    """A signal that lands after the run (the watcher is a thread) must not kill the test process."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    yield
    signal.signal(signal.SIGUSR1, previous)


def interrupt_when(folder: Path, files: int) -> threading.Thread:
    """Send this process SIGUSR1 (SLURM's warning before a time limit) once `files` checkpoints exist."""

    def watch() -> None:
        while len(list((folder / "checkpoints").glob("step_*.pt"))) < files:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_corrupted_newest_checkpoint_falls_back_to_the_one_before(tmp_path, reference, harmless_sigusr1):
    folder = tmp_path / "run"
    interrupt_when(folder, files=2).join(timeout=0)
    assert pretrain(folder) == EXIT_INTERRUPTED
    newest, older = sorted((folder / "checkpoints").glob("step_*.pt"), reverse=True)
    assert summary(folder)["signal"] == "SIGUSR1"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(
        UserWarning, match=rf"{newest.name} is unreadable .*resuming from the older .*{older.name}"
    ):
        assert pretrain(folder) == 0
    assert summary(folder)["resumed_from_step"] == int(older.stem.split("_")[1])
    assert_same_run(folder, reference)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_stopped_at_a_checkpoint_resumes_to_the_uninterrupted_state(method, tmp_path):
    """Each registered method trained to step 3 and checkpointed, then resumed in a new build to the end of
    its plan, ends where one run without a stop ends: every tensor of the method's state (EMA teachers,
    centres, scheduled values) and the optimizer's, and the same steps and final loss."""
    run = run_config(*TINY, *small(method), "train.num_workers=0")

    def trained(folder: Path, until=None) -> tuple[LoopResult, torch.nn.Module]:
        method_, batches = build(run)
        result = train(
            method_,
            batches,
            loop_settings(run),
            StepBudget(6),
            checkpoints=pretrain_checkpoints(run, folder),
            until=until,
        )
        return result, method_

    whole, one = trained(tmp_path / "whole")
    assert whole.steps == 6
    first, _ = trained(tmp_path / "stopped", until=lambda plan: 3)
    assert first.steps == 3
    resumed, other = trained(tmp_path / "stopped")
    assert resumed.resumed_from_step == 3
    assert (resumed.steps, resumed.flops, resumed.final_loss) == (whole.steps, whole.flops, whole.final_loss)
    a, b = one.state_dict(), other.state_dict()
    assert a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a), method
    ends = [Checkpoints(tmp_path / f / "checkpoints").existing()[0] for f in ("whole", "stopped")]
    x, y = (flatten(read_checkpoint(end)["optimizer"]) for end in ends)
    assert x.keys() == y.keys() and all(same_value(x[k], y[k]) for k in x)
