"""The transfer data-parallel through torchrun (2 processes, gloo on CPU): the same plan, steps and FLOPs as
one process with the same global batch, the same losses and scores (batch norm and the loss's pixel count
taken over the global batch, the evaluation split over the ranks and its confusion matrices summed), rank
0 alone writing.

The two-process run starts this file under torchrun; each rank runs the same `execute` the console
scripts run (budgetssl-transfer on a random init: the stage alone, no pretraining).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, run_in_process, summary

TORCHRUN = Path(sys.executable).parent / "torchrun"
SAME = ("transfer_steps", "transfer_flops_per_step", "transfer_flops", "transfer_flops_breakdown")
SCORES = ("miou", "miou_objects", "pixel_accuracy")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def settings() -> list[str]:
    # The synthetic transfer (a BatchNorm head), with the read-outs and the probe.
    return [*TINY, "transfer.steps=4", "train.log_every=1", "transfer.probe=true"]


def execute_in_process(folder: Path, overrides: list[str]) -> int:
    return run_in_process("budgetssl-transfer", *overrides, folder=folder)


def rows(folder: Path, stage: str = "transfer") -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["stage"] == stage]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The same transfer on two processes (torchrun) and on one (in this process)."""
    root = tmp_path_factory.mktemp("transfer_ddp")
    # The tests' helpers, then whatever PYTHONPATH this process has (so the ranks import the same budgetssl).
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", __file__, str(root / "two"), *settings()]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert execute_in_process(root / "one", settings()) == 0
    return root


def test_two_processes_spend_and_score_what_one_process_does(runs):
    two, one = summary(runs / "two"), summary(runs / "one")
    assert two["status"] == one["status"] == "completed"
    assert (two["transfer_world_size"], one["transfer_world_size"]) == (2, 1)
    assert {k: two[k] for k in SAME} == {k: one[k] for k in SAME}
    assert two["transfer_final_loss"] == pytest.approx(one["transfer_final_loss"], rel=1e-4)
    assert [r["loss"] for r in rows(runs / "two")] == pytest.approx(
        [r["loss"] for r in rows(runs / "one")], rel=1e-4
    )
    for key in SCORES:  # percent; the same pixels scored, by weights equal to float rounding
        assert two[key] == pytest.approx(one[key], abs=1e-3), key
    per_class = [
        json.loads((runs / f / "transfer_scores.json").read_text())["per_class_iou"] for f in ("two", "one")
    ]
    assert per_class[0] == pytest.approx(per_class[1], abs=1e-3)


def test_the_read_outs_and_the_probe_give_one_answer_on_two_processes(runs):
    """Every rank computes them alike (readout/): the same scores, protocol and cost as one process."""
    two, one = summary(runs / "two"), summary(runs / "one")
    keys = (
        "knn_accuracy",
        "linear_accuracy",
        "linear_protocol",
        "probe_miou",
        "probe_protocol",
        "probe_flops",
    )
    assert {k: two[k] for k in keys} == {k: one[k] for k in keys}
    assert (two["probe_world_size"], one["probe_world_size"]) == (2, 1)
    assert len(rows(runs / "two", "probe")) == two["probe_epochs"]  # rank 0 alone wrote them


def test_rank_0_alone_writes(runs):
    two = runs / "two"
    assert [r["step"] for r in rows(two)] == list(range(1, summary(two)["transfer_steps"] + 1))
    assert [p.name for p in (two / "checkpoints" / "transfer").glob("step_*.pt")] == ["step_000000004.pt"]


if __name__ == "__main__":  # a torchrun worker: python tests/test_transfer_ddp.py RUN_FOLDER OVERRIDE...
    sys.exit(execute_in_process(Path(sys.argv[1]), sys.argv[2:]))
