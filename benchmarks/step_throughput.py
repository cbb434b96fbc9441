"""Measure training-step throughput and achieved FLOP/s of a configured run, and print them.

usage: python benchmarks/step_throughput.py [--steps N] [OVERRIDE ...]
e.g.   python benchmarks/step_throughput.py --steps 20 backbone=vit_tiny train.batch_size=64
"""

from __future__ import annotations

import argparse
import json
import time

from budgetssl.config.compose import compose_config
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.counter import PassCounter
from budgetssl.plugins import check_config
from budgetssl.stages.pretrain import build, loop_settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    args, overrides = parser.parse_known_args()
    run = check_config(compose_config(overrides))
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    method.train()
    counter = PassCounter()
    trainer.step(to_device(next(batches), trainer.device), counter, 0.0)  # metered, and a warm-up
    data = compute = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = to_device(next(batches), trainer.device)
        t1 = time.perf_counter()
        loss, _ = trainer.step(batch, None, 0.5)
        float(loss)  # waits for the device
        t2 = time.perf_counter()
        data, compute = data + t1 - t0, compute + t2 - t1
    per_step = counter.total
    print(
        json.dumps(
            {
                "method": run.method.name,
                "backbone": run.backbone.name,
                "image_size": run.dataset.image_size,
                "batch_size": run.train.batch_size,
                "device": str(trainer.device),
                "steps": args.steps,
                "flops_per_step": per_step,
                "seconds_per_step": (data + compute) / args.steps,
                "data_seconds_per_step": data / args.steps,
                "images_per_second": run.train.batch_size * args.steps / (data + compute),
                "achieved_flops_per_second": per_step * args.steps / compute,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
