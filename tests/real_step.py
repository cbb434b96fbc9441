"""One real pretraining step of a run under the meter, reported as budgetssl-flops reports the count on
meta tensors (verify/flops.py count): what that count is tested against, and what the per-method
closed-form counts check (tests/test_method_flops.py)."""

from __future__ import annotations

from typing import Any

from budgetssl.config.check import RunConfig
from budgetssl.engine.schedule import Clock
from budgetssl.engine.settings import loop_settings
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.counter import PassCounter, flops_per_image
from budgetssl.stages.pretrain import build
from budgetssl.verify.flops import report


def measure(run: RunConfig) -> dict[str, Any]:
    """flops_per_step, flops_per_image, the breakdown by pass and the planned steps of `run`, from one
    real step on a model built as the pretraining stage builds it."""
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    counter = PassCounter()
    method.train()
    trainer.step(to_device(next(batches), trainer.device), counter, Clock.of(0.0))
    per_image = flops_per_image(method.backbone, run.dataset.image_size)
    params = sum(p.numel() for p in method.backbone.parameters())
    return report(run, counter.total, per_image, counter.passes, params)
