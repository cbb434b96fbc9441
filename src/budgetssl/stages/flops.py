"""What budgetssl-flops prints: the pretraining stage's cost without training. One real step runs (on a
throwaway model) under the same meter the training loop uses."""

from __future__ import annotations

from dataclasses import asdict
from fractions import Fraction
from math import floor
from typing import Any

from budgetssl.config.check import RunConfig
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, PassCounter
from budgetssl.record.identity import identity_of
from budgetssl.stages.pretrain import build, flops_per_image, loop_settings


def measure(run: RunConfig) -> dict[str, Any]:
    """flops_per_step, flops_per_image, the breakdown by pass and the planned steps of `run`."""
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    counter = PassCounter()
    method.train()
    trainer.step(to_device(next(batches), trainer.device), counter, fraction=0.0)
    per_step = counter.total
    per_image = flops_per_image(method.backbone, run.dataset.image_size)
    return {
        **asdict(identity_of(run)),
        "flops_per_step": per_step,
        "flops_per_image": per_image,
        "step_over_batch_forward": per_step / (run.train.batch_size * per_image),
        "planned_steps": floor(Fraction(run.budget.flops) / per_step),
        "convention": CONVENTION,
        "convention_detail": CONVENTION_DETAIL,
        "breakdown": counter.passes,
        "params": sum(p.numel() for p in method.backbone.parameters()),
    }
