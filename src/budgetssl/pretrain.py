"""The pretraining stage: data -> method views -> engine (metered) -> backbone weights and a record.

`python -m budgetssl.pretrain ...` is the same as `budgetssl-pretrain ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from budgetssl.backbones.backbone import Backbone, build_backbone
from budgetssl.config.check import RunConfig
from budgetssl.data.base import build_dataset
from budgetssl.data.loader import endless_batches
from budgetssl.engine.loop import LoopSettings, train
from budgetssl.engine.precision import resolve_device
from budgetssl.engine.seed import seed_everything
from budgetssl.meter.budget import plan_for_budget
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, count_forward_flops
from budgetssl.meter.energy import EnergyTracker, estimate_co2
from budgetssl.methods.base import Method, build_method
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.weights import save_backbone


def loop_settings(run: RunConfig) -> LoopSettings:
    return LoopSettings.from_train(run.train)


def build(run: RunConfig) -> tuple[Method, Any]:
    """The method (with its backbone) and its endless batch stream, seeded."""
    seed_everything(run.seed)
    dataset = build_dataset(run.dataset, "train")
    backbone = build_backbone(run.backbone, run.dataset.image_size)
    method = build_method(run.method, backbone, dataset.info)
    pin = resolve_device(run.train.device).type == "cuda"
    batches = endless_batches(
        dataset, method.views(), run.train.batch_size, run.seed, run.train.num_workers, pin_memory=pin
    )
    return method, batches


def flops_per_image(backbone: Backbone, image_size: int) -> int:
    """One forward pass of the backbone on one image at the configured resolution."""
    device = next(backbone.parameters()).device
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    was_training = backbone.training
    backbone.eval()  # a single image must not touch batch-norm statistics
    try:
        return count_forward_flops(lambda: backbone(image))
    finally:
        backbone.train(was_training)


def identity(run: RunConfig) -> dict[str, Any]:
    return {
        "method": run.method.name,
        "dataset": run.dataset.name,
        "backbone": run.backbone.name,
        "seed": run.seed,
        "budget_flops": run.budget.flops,
        "batch_size": run.train.batch_size,
        "image_size": run.dataset.image_size,
    }


def pretrain(run: RunConfig, folder: Path) -> tuple[Backbone, dict[str, Any]]:
    """Train until the budget is spent; save the backbone; return it and the record's fields."""
    method, batches = build(run)
    with EnergyTracker(run.energy) as energy:
        result = train(
            method,
            batches,
            loop_settings(run),
            lambda fps: plan_for_budget(run.budget.flops, fps),
            MetricsLog(folder / "metrics.jsonl"),
            label="pretrain",
        )
    backbone = method.backbone
    weights = save_backbone(
        backbone,
        folder,
        {**identity(run), "steps": result.steps, "train_flops": result.flops, "convention": CONVENTION},
    )
    reading = energy.reading
    return backbone, {
        **identity(run),
        "convention": CONVENTION,
        "convention_detail": CONVENTION_DETAIL,
        "flops_per_step": result.plan.flops_per_step,
        "flops_per_image": flops_per_image(backbone, run.dataset.image_size),
        "flops_breakdown": result.breakdown,
        "planned_steps": result.plan.steps,
        "steps": result.steps,
        "train_flops": result.flops,
        "budget_unspent_flops": run.budget.flops - result.flops,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "final_lr": result.final_lr,
        "pretrain_wall_seconds": result.wall_seconds,
        "energy_kwh": reading.energy_kwh,
        "co2_kg": reading.co2_kg,
        "energy_method": reading.method,
        "energy_detail": reading.detail,
        **estimate_co2(result.flops, run.energy.hardware),
        "params": sum(p.numel() for p in backbone.parameters()),
        "backbone_family": backbone.family,
        "backbone_timm": backbone.timm_spec(),
        "backbone_weights": weights,
    }


if __name__ == "__main__":
    from budgetssl.cli.pretrain import main

    main()
