"""The transfer resumes like pretraining: SIGTERM part-way through checkpoints and exits 75, the same
command run again resumes from <run>/checkpoints/transfer/ and ends with the uninterrupted run's record
(steps, FLOPs, every loss, the scores, and the probe and read-outs that follow), every step logged once.
The probe and the read-outs keep no checkpoint: seconds long, they are computed again, to the same
result (readout/segmentation.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from budgetssl.engine.signals import EXIT_INTERRUPTED
from conftest import BIN, TINY, run_in_process, summary

SETTINGS = [
    *TINY,
    "transfer.steps=20",
    "transfer.probe=true",
    "train.checkpoint_every_steps=3",
    "train.log_every=1",
]
SAME = (
    "status",
    "transfer_steps",
    "transfer_flops",
    "transfer_flops_per_step",
    "transfer_final_loss",
    "miou",
    "miou_objects",
    "pixel_accuracy",
    "probe_steps",
    "probe_flops",
    "probe_final_loss",
    "probe_miou",
    "probe_protocol",
    "knn_accuracy",
    "linear_accuracy",
)

pytestmark = pytest.mark.usefixtures("one_thread")


def transfer(folder: Path) -> int:
    return run_in_process("budgetssl-transfer", *SETTINGS, folder=folder)


def start_cli(folder: Path) -> subprocess.Popen:
    command = [str(BIN / "budgetssl-transfer"), *SETTINGS, f"hydra.run.dir={folder}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.glob("step_*.pt")):
        assert proc.poll() is None, (
            f"the run ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
        )
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def history(folder: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(row["stage"], row["step"], row["loss"]) for row in rows]


def test_sigterm_mid_transfer_then_the_same_command_resumes_to_the_same_record(tmp_path):
    reference = tmp_path / "reference"
    assert transfer(reference) == 0
    folder = tmp_path / "run"
    proc = start_cli(folder)
    wait_for_checkpoint(folder / "checkpoints" / "transfer", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    stopped = summary(folder)
    step = stopped["interrupted_at_step"]
    assert stopped["status"] == "interrupted" and stopped["checkpoint"].startswith("checkpoints/transfer/")
    assert not (folder / "transfer_scores.json").exists()
    assert transfer(folder) == 0
    got, want = summary(folder), summary(reference)
    assert got["transfer_resumed_from_step"] == step and want["transfer_resumed_from_step"] == 0
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    assert history(folder) == history(reference)  # each step once, every loss as uninterrupted
    # The fine-tuning's final state, kept for a re-run to resume at the end; the probe keeps none.
    assert len(list((folder / "checkpoints" / "transfer").glob("step_*.pt"))) == 1
    assert not (folder / "checkpoints" / "probe").exists()
