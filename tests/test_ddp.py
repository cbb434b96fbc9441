"""Data parallelism through torchrun (2 processes, gloo on CPU): the same plan, FLOPs and loss as one
process with the same global batch, identical parameters on every rank, rank 0 alone writing.

The two-process run starts this file under torchrun; each rank runs the same `execute` the console
scripts run, and saves the backbone it ended with, so the ranks can be compared tensor by tensor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from budgetssl.engine.distributed import World
from budgetssl.errors import ConfigError
from conftest import TINY, run_in_process, summary

TORCHRUN = Path(sys.executable).parent / "torchrun"
CLIP = [
    "method=clip",  # gathers embeddings across ranks for its loss, and has no batch norm
    "method.text_width=32",
    "method.text_layers=1",
    "method.text_heads=2",
    "method.context_length=16",
    "method.embed_dim=32",
]


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def settings() -> list[str]:
    return [*TINY, *CLIP, "budget.flops=4e9", "train.log_every=1"]


def run_stage(run, folder: Path) -> dict:
    """The pretraining stage, plus this rank's final backbone saved beside the record."""
    from budgetssl.engine.distributed import current
    from budgetssl.stages.pretrain import pretrain

    backbone, record = pretrain(run, folder)
    out = Path(os.environ["DDP_TEST_OUT"])
    torch.save(backbone.state_dict(), out / f"rank{current().rank}.pt")
    return record


def execute_in_process(folder: Path, overrides: list[str]) -> int:
    return run_in_process("budgetssl-pretrain", *overrides, folder=folder, stage=run_stage)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same config on two processes (torchrun) and on one (in this process)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "two").mkdir()
    (root / "one").mkdir()
    env = {
        **os.environ,
        "DDP_TEST_OUT": str(root / "two"),
        "PYTHONPATH": str(Path(__file__).parent),
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [
            str(TORCHRUN),
            "--standalone",
            "--nproc_per_node=2",
            __file__,
            str(root / "two" / "run"),
            *settings(),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    os.environ["DDP_TEST_OUT"] = str(root / "one")
    try:
        assert execute_in_process(root / "one" / "run", settings()) == 0
    finally:
        del os.environ["DDP_TEST_OUT"]
    return {"root": root, "torchrun_seconds": seconds}


def test_two_processes_plan_and_spend_exactly_what_one_process_does(runs):
    two, one = summary(runs["root"] / "two" / "run"), summary(runs["root"] / "one" / "run")
    assert two["status"] == one["status"] == "completed"
    assert (two["world_size"], one["world_size"]) == (2, 1)
    for key in ("flops_per_step", "planned_steps", "steps", "train_flops", "flops_breakdown"):
        assert two[key] == one[key], key
    assert two["train_flops"] <= two["budget_flops"] < two["train_flops"] + two["flops_per_step"]
    # The same global batch (the sampler splits each one-process batch over the ranks) and the same
    # initial weights: CLIP's loss, gathered across ranks and averaged, is the one-process loss.
    assert two["first_loss"] == pytest.approx(one["first_loss"], rel=1e-5)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-3)
    print(f"torchrun, 2 processes: {runs['torchrun_seconds']:.1f} s")


def test_parameters_are_equal_across_ranks_and_rank_0_alone_writes(runs):
    two = runs["root"] / "two"
    rank0 = torch.load(two / "rank0.pt", weights_only=True)
    rank1 = torch.load(two / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    rows = [json.loads(line) for line in (two / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    assert steps == list(range(1, len(steps) + 1))  # one row per step: only rank 0 logged
    assert len(list((two / "run" / "checkpoints").glob("step_*.pt"))) == 1


def test_a_global_batch_the_ranks_cannot_share_evenly_is_a_config_error():
    assert World(rank=1, size=4).local_batch(32) == 8
    with pytest.raises(ConfigError, match=r"train\.batch_size=30 .* divisible by the 4 processes"):
        World(rank=0, size=4).local_batch(30)


def test_each_global_batch_is_split_over_the_ranks_in_order():
    from budgetssl.data.sampler import EpochSampler

    one = list(EpochSampler(40, 8, seed=3))
    ranks = [list(EpochSampler(40, 4, seed=3, rank=r, world=2)) for r in range(2)]
    for step in range(5):
        assert (
            ranks[0][4 * step : 4 * step + 4] + ranks[1][4 * step : 4 * step + 4]
            == one[8 * step : 8 * step + 8]
        )


def stop_worker(rank: int, folder: str, port: int, case: str, out) -> None:  # noqa: ANN001
    """One of two gloo ranks training the tiny regression task; rank 1 alone is asked to stop (`signal`)
    or sees a non-finite loss (`nan`) after 3 steps. What it raised goes to `out`."""
    import os

    from budgetssl.engine import distributed, signals
    from budgetssl.engine.checkpoint_files import Checkpoints
    from budgetssl.engine.loop import NonFiniteLoss, train
    from budgetssl.engine.signals import Interrupted
    from budgetssl.meter.budget import StepBudget
    from test_budget import SETTINGS, NanAt, Regression, batches

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = distributed.start("cpu")
    torch.manual_seed(0)  # the same weights on both ranks
    task = NanAt(3) if case == "nan" and rank == 1 else Regression()
    if case == "signal" and rank == 1:
        signals.requested = lambda: "SIGTERM" if len(task.fractions) >= 3 else None
    checkpoints = Checkpoints(Path(folder) / "checkpoints", every=None, write=world.is_main)
    settings = replace(SETTINGS, log_every=100)
    try:
        train(task, batches(8), settings, StepBudget(50), checkpoints=checkpoints, distributed=True)
        out.put((rank, "completed", None))
    except Interrupted as e:
        out.put((rank, "interrupted", e.step))
    except NonFiniteLoss as e:
        out.put((rank, "nonfinite", e.step))
    finally:
        distributed.stop()


@pytest.mark.parametrize("case", ["signal", "nan"])
def test_ranks_agree_on_stopping_when_only_one_is_asked_or_sees_a_non_finite_loss(case, tmp_path):
    """A stop signal or a non-finite loss on one rank stops every rank after the same step, with the
    losses read only on logged steps (here: none before the end) and the vote riding on each step's price."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=stop_worker, args=(r, str(tmp_path), port, case, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    results = sorted(out.get(timeout=5) for _ in procs)
    kinds, steps = {r[1] for r in results}, {r[2] for r in results}
    if case == "signal":
        # Rank 1 is asked after its 3rd step; its vote rides on the 4th step's price; all stop after it.
        assert kinds == {"interrupted"} and steps == {4}
        assert (tmp_path / "checkpoints" / "step_000000004.pt").is_file()
    else:
        assert kinds == {"nonfinite"} and steps == {3}  # found at the read before the end, at its step
        assert not list((tmp_path / "checkpoints").glob("step_*.pt"))


if __name__ == "__main__":  # a torchrun worker: python tests/test_ddp.py RUN_FOLDER OVERRIDE...
    sys.exit(execute_in_process(Path(sys.argv[1]), sys.argv[2:]))
