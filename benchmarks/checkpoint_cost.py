"""Measure what a checkpoint costs: seconds to gather and write it, bytes on disk, seconds to read it.

Each configuration trains one real step (so the optimizer holds its state), then saves the same
checkpoint the training loop saves, `--saves` times, into a temporary folder: written in the
foreground (training waits for the whole write), and in the background as the loop does (training
waits only for the host copy: `blocked_seconds`; the write goes on beside the next steps, whose time
with and without a write under way is `step_seconds_during_write` / `step_seconds`).

usage: python benchmarks/checkpoint_cost.py [--saves N] [--only NAME] [OVERRIDE ...]
e.g.   python benchmarks/checkpoint_cost.py                 # vit_nano (demo size) and vit_base
       python benchmarks/checkpoint_cost.py --only base method=dino
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from budgetssl.config.compose import compose_config
from budgetssl.engine.checkpoint_files import Checkpoints, read_checkpoint
from budgetssl.engine.distributed import World
from budgetssl.engine.resume import RunState, snapshot
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.budget import FlopBudget
from budgetssl.meter.counter import PassCounter
from budgetssl.meter.step_meter import StepMeter
from budgetssl.plugins import check_config
from budgetssl.stages.pretrain import build, loop_settings

CONFIGS = {
    "nano": ["backbone=vit_nano", "dataset.image_size=32", "train.batch_size=32"],  # the demo's size
    "base": ["backbone=vit_base", "dataset.image_size=224", "train.batch_size=2"],  # the reference size
}


def measure(overrides: list[str], saves: int) -> dict:
    run = check_config(compose_config([*overrides, "energy.track=false"]))
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    method.train()
    batch = to_device(next(batches), trainer.device)
    counter = PassCounter()
    loss, logs = trainer.step(batch, counter, 0.0)
    meter = StepMeter()
    first = meter.record(batch, counter)
    plan = FlopBudget(100 * first.total).plan(first.total)
    state = RunState(step=1, spent=first.total, plan=plan, first=first, loss=float(loss), logs=logs)

    def one_step() -> float:
        t0 = time.perf_counter()
        trainer.step(batch, None, 0.5)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Checkpoints(Path(tmp) / "foreground", config=run.to_dict(), background=False)
        write = []
        for i in range(saves):
            t0 = time.perf_counter()
            state.step = i + 1
            path = checkpoints.save(snapshot(state, trainer, meter, batches, World()))
            write.append(time.perf_counter() - t0)
        size = path.stat().st_size
        t0 = time.perf_counter()
        read_checkpoint(path)
        read = time.perf_counter() - t0
        background = Checkpoints(Path(tmp) / "background", config=run.to_dict())
        blocked, total, during, alone = [], [], [], []
        for i in range(saves):
            alone.append(one_step())
            t0 = time.perf_counter()
            state.step = i + 1
            background.save(snapshot(state, trainer, meter, batches, World()))
            blocked.append(time.perf_counter() - t0)
            during.append(one_step())  # a training step while the write goes on
            background.wait()
            total.append(time.perf_counter() - t0)
    return {
        "method": run.method.name,
        "backbone": run.backbone.name,
        "trainable_params": sum(p.numel() for p in trainer.params),
        "all_params": sum(p.numel() for p in method.parameters()),
        "bytes": size,
        "megabytes": round(size / 2**20, 1),
        "write_seconds": min(write),
        "write_seconds_each": [round(s, 3) for s in write],
        "read_seconds": read,
        "blocked_seconds": min(blocked),
        "blocked_seconds_each": [round(s, 3) for s in blocked],
        "background_total_seconds": min(total),
        "step_seconds": min(alone),
        "step_seconds_during_write": min(during),
        "device": str(trainer.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--saves", type=int, default=3, help="saves per configuration (vit_base: 1)")
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    args, overrides = parser.parse_known_args()
    for name, config in CONFIGS.items():
        if args.only in (None, name):
            saves = args.saves if name == "nano" else 1
            figures = measure([*config, *overrides], saves)
            print(json.dumps({"config": name, **figures}, indent=2), flush=True)
            last = {k: figures[k] for k in ("megabytes", "write_seconds", "blocked_seconds")}
    print(" ".join(f"{k}={v:.3g}" for k, v in last.items()))


if __name__ == "__main__":
    main()
