"""What budgetssl-flops prints: the pretraining stage's cost without training. The step is counted on meta
tensors (`count`: shapes without storage, the engine's own metered first step, verify/flops.py), so a
ViT-L at batch 4096 prices in seconds; `measure` runs one real step on a throwaway model under the same
meter (tests/test_verify.py checks that the two agree for every method)."""

from __future__ import annotations

from dataclasses import asdict
from fractions import Fraction
from math import floor
from typing import Any

from budgetssl.config.check import RunConfig
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, PassCounter, flops_per_image
from budgetssl.record.identity import identity_of
from budgetssl.stages.pretrain import build, loop_settings


def count(run: RunConfig) -> dict[str, Any]:
    """What `measure` returns, counted on meta tensors: no real step, at any size."""
    from budgetssl.data.base import build_dataset
    from budgetssl.record.sections import Pretraining, Record
    from budgetssl.verify.flops import derive

    classes = build_dataset(run.dataset, "train").info.num_classes
    derived = derive(run, Record(pretraining=Pretraining(data_classes=classes)), plan_budget=False)
    return report(run, derived.flops_per_step, derived.flops_per_image, derived.breakdown, derived.params)


def report(run: RunConfig, per_step: int, per_image: int, breakdown: dict, params: int) -> dict[str, Any]:
    """The printed object: the run's identity, the counts and the planned steps."""
    return {
        **asdict(identity_of(run)),
        "flops_per_step": per_step,
        "flops_per_image": per_image,
        "step_over_batch_forward": per_step / (run.train.batch_size * per_image),
        "planned_steps": floor(Fraction(run.budget.flops) / per_step),
        "convention": CONVENTION,
        "convention_detail": CONVENTION_DETAIL,
        "breakdown": breakdown,
        "params": params,
    }


def measure(run: RunConfig) -> dict[str, Any]:
    """flops_per_step, flops_per_image, the breakdown by pass and the planned steps of `run`, from one
    real step."""
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    counter = PassCounter()
    method.train()
    trainer.step(to_device(next(batches), trainer.device), counter, fraction=0.0)
    per_image = flops_per_image(method.backbone, run.dataset.image_size)
    params = sum(p.numel() for p in method.backbone.parameters())
    return report(run, counter.total, per_image, counter.passes, params)
