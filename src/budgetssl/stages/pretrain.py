"""The pretraining stage: data -> method views -> engine (metered) -> backbone weights and a record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from budgetssl.backbones.backbone import Backbone, build_backbone, without_drop_path
from budgetssl.config.check import RunConfig
from budgetssl.data.base import build_dataset
from budgetssl.data.loader import Batches, endless_batches
from budgetssl.engine import distributed
from budgetssl.engine.checkpoint import FOLDER as CHECKPOINTS
from budgetssl.engine.checkpoint import Checkpoints
from budgetssl.engine.loop import LoopResult, LoopSettings, train
from budgetssl.engine.precision import resolve_device
from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.rng import rank_seed
from budgetssl.engine.seed import seed_everything
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.budget import plan_for_budget
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, count_forward_flops
from budgetssl.meter.energy import EnergyReading, EnergyTracker, estimate_co2
from budgetssl.methods.base import Method, build_method
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.weights import WEIGHTS, save_backbone


def loop_settings(run: RunConfig) -> LoopSettings:
    return LoopSettings.from_train(run.train)


def build(run: RunConfig) -> tuple[Method, Batches]:
    """The method (with its backbone) and its endless batch stream, seeded.

    Under torchrun every rank builds the same model from the seed and streams its share of each global
    batch; batch norm is synchronised across ranks where torch can (CUDA).
    """
    world = distributed.current()
    seed_everything(run.seed)
    dataset = build_dataset(run.dataset, "train")
    backbone = build_backbone(run.backbone, run.dataset.image_size, drop_path=run.train.drop_path)
    method = build_method(run.method, backbone, dataset.info)
    method = distributed.sync_batch_norm(method, world)  # type: ignore[assignment]
    pin = resolve_device(run.train.device).type == "cuda"
    batch = world.local_batch(run.train.batch_size)
    batches = endless_batches(
        dataset,
        method.views(),
        batch,
        run.seed,
        run.train.num_workers,
        pin,
        rank=world.rank,
        world=world.size,
    )
    rank_seed(run.seed, world.rank)
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
    world = distributed.current()
    method, batches = build(run)
    checkpoints = Checkpoints(
        folder / CHECKPOINTS, run.train.checkpoint_every_steps, config=run.to_dict(), write=world.is_main
    )
    # codecarbon measures the whole machine: one tracker per node (local rank 0), summed over nodes.
    track = replace(run.energy, track=run.energy.track and world.local_rank == 0)
    with EnergyTracker(track) as energy:
        result = train(
            method,
            batches,
            loop_settings(run),
            lambda fps: plan_for_budget(run.budget.flops, fps),
            MetricsLog(folder / "metrics.jsonl"),
            label="pretrain",
            checkpoints=checkpoints,
            distributed=True,
        )
    # The transfer fine-tunes every parameter (MAE's fixed position embedding too, as MAE's fine-tuning
    # does) and without stochastic depth, as a backbone rebuilt from its weights file would.
    backbone = without_drop_path(method.backbone).requires_grad_(True)
    scores = validation_scores(run, method) if world.is_main else {}
    provenance = {
        **identity(run),
        "steps": result.steps,
        "train_flops": result.flops,
        "convention": CONVENTION,
    }
    weights = save_backbone(backbone, folder, provenance) if world.is_main else WEIGHTS
    reading, nodes_tracked = over_nodes(energy.reading, world)
    skipped = world.sum_ints([batches.skipped])[0]
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
        "recipe": recipe_record(run, result),
        **method.summary_fields(),
        **scores,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "final_lr": result.final_lr,
        "data_skipped": skipped,  # unreadable images skipped (streams; dataset.skip_corrupt=true)
        "pretrain_wall_seconds": result.wall_seconds,
        "energy_kwh": reading.energy_kwh,
        "co2_kg": reading.co2_kg,
        "energy_method": reading.method,
        "energy_detail": reading.detail,
        "energy_nodes_tracked": nodes_tracked,
        **estimate_co2(result.flops, run.energy.hardware),
        "params": sum(p.numel() for p in backbone.parameters()),
        "backbone_family": backbone.family,
        "backbone_timm": backbone.timm_spec(),
        "backbone_weights": weights,
        "world_size": result.world_size,
        "nodes": world.nodes,
        "resumed_from_step": result.resumed_from_step,
    }


def recipe_record(run: RunConfig, result: LoopResult) -> dict[str, Any]:
    """What trained: the recipe as it resolved for this batch, and how many parameters decayed."""
    counts = result.param_counts
    return {
        **resolve_recipe(run.train),
        "params_with_weight_decay": counts.decayed if counts else None,
        "params_without_weight_decay": counts.not_decayed if counts else None,
    }


def validation_scores(run: RunConfig, method: Method) -> dict[str, Any]:
    """The method's scores on the dataset's held-out split (e.g. a classifier's `val_accuracy`), for
    methods that have something to score; datasets without a held-out split give none."""
    if type(method).validation_scores is Method.validation_scores:
        return {}
    try:
        val_set = build_dataset(run.dataset, "val")
    except (BudgetSSLError, FileNotFoundError, ValueError) as e:
        return {"validation_note": f"no held-out split: {e}"}
    return method.validation_scores(val_set)


def over_nodes(reading: EnergyReading, world: distributed.World) -> tuple[EnergyReading, int]:
    """Energy and CO2 summed over the nodes' trackers (local rank 0 of each); the number tracked."""
    readings = [r for r in world.gather(reading) if r.energy_kwh is not None]
    if world.size == 1 or not readings:
        return reading, len(readings)
    total = EnergyReading(
        sum(r.energy_kwh for r in readings),  # type: ignore[misc]
        sum(r.co2_kg or 0.0 for r in readings),
        readings[0].method,
        f"sum over {len(readings)} node(s); node 0: {readings[0].detail}",
    )
    return total, len(readings)
