"""How long each method's training waits for data at the demo settings: the data-wait share.

For every registered method (the registry's, supervised first; `--methods` picks some) at the CPU demo
sizes (configs/method/cpu/, vit_nano at 16 px, batch 32, the synthetic set, the configured
`train.num_workers` and `train.augment_on` defaults; one torch thread, as `make demo` runs two runs at a
time on two cores), the real batch stream feeds the real loop (engine.loop.train) for
`--steps` steps; the time the loop spends in `next(batches)` (waiting for the next batch) over the loop's
wall time is the share. The record's `data_wait_share` is the same quotient over the whole pretraining.

usage: python benchmarks/data_wait.py [--steps 60] [--threads 1] [--methods supervised,...] [OVERRIDE ...]
The last line: data_wait_share <method>=<share> ... for every method.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import torch

from budgetssl.config.compose import compose_config
from budgetssl.engine.loop import train
from budgetssl.meter.budget import StepBudget
from budgetssl.methods.registry import METHODS
from budgetssl.plugins import check_config
from budgetssl.stages.pretrain import build, loop_settings

DEMO = ["dataset.image_size=16", "train.progress=false", "energy.track=false", "logger.wandb.mode=disabled"]


class Waited:
    """A batch stream that adds up the seconds its consumer waits in `next`."""

    def __init__(self, batches: Iterator[dict[str, Any]]) -> None:
        self.batches, self.seconds = batches, 0.0

    def __iter__(self) -> Waited:
        return self

    def __next__(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - t0


def measure(method: str, steps: int, overrides: list[str]) -> dict[str, float]:
    run = check_config(compose_config([f"method=cpu/{method}", *DEMO, *overrides]))
    task, stream = build(run)
    batches = Waited(stream)
    t0 = time.perf_counter()
    result = train(task, batches, loop_settings(run), StepBudget(steps), label="pretrain")
    wall = time.perf_counter() - t0
    out = {
        "share": batches.seconds / wall,
        "wait_ms": 1e3 * batches.seconds / steps,
        "step_ms": 1e3 * wall / steps,
    }
    recorded = getattr(result, "data_wait_share", None)  # the loop's own figure, where it keeps one
    if recorded is not None:
        out["recorded"] = recorded
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs one per run)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered one)")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} steps={args.steps} overrides={overrides}")
    print(f"{'method':<11}{'wait ms/step':>13}{'step ms':>9}{'share':>8}{'recorded':>10}")
    shares = {}
    every = sorted(METHODS.names(), key=lambda name: (name != "supervised", name))
    for method in args.methods.split(",") if args.methods else every:
        r = measure(method, args.steps, overrides)
        shares[method] = r["share"]
        recorded = f"{r['recorded']:.3f}" if "recorded" in r else "-"
        print(
            f"{method:<11}{r['wait_ms']:>13.2f}{r['step_ms']:>9.2f}{r['share']:>8.3f}{recorded:>10}",
            flush=True,
        )
    print("data_wait_share " + " ".join(f"{m}={s:.3f}" for m, s in shares.items()))


if __name__ == "__main__":
    main()
