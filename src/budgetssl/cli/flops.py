"""budgetssl-flops: the FLOPs of one real training step of the configured run, as JSON, without training.

One step runs (on a throwaway model) under the same meter the training loop uses.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from math import floor
from typing import Any

from budgetssl.config.check import check_config
from budgetssl.config.compose import compose_config
from budgetssl.errors import BudgetSSLError


def measure(overrides: list[str]) -> dict[str, Any]:
    from budgetssl.engine.loop import Trainer, to_device
    from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, PassCounter
    from budgetssl.stages.pretrain import build, flops_per_image, identity, loop_settings

    run = check_config(compose_config(overrides))
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    counter = PassCounter()
    method.train()
    trainer.step(to_device(next(batches), trainer.device), counter, fraction=0.0)
    per_step = counter.total
    per_image = flops_per_image(method.backbone, run.dataset.image_size)
    return {
        **identity(run),
        "flops_per_step": per_step,
        "flops_per_image": per_image,
        "step_over_batch_forward": per_step / (run.train.batch_size * per_image),
        "planned_steps": floor(Fraction(run.budget.flops) / per_step),
        "convention": CONVENTION,
        "convention_detail": CONVENTION_DETAIL,
        "breakdown": counter.passes,
        "params": sum(p.numel() for p in method.backbone.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print("usage: budgetssl-flops [OVERRIDE ...]  (e.g. backbone=vit_base dataset.image_size=224)")
        return
    try:
        result = measure(args)
    except BudgetSSLError as e:
        print(f"budgetssl-flops: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
