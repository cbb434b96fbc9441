"""The pretraining stage: data -> method views -> engine (metered) -> backbone weights and a record."""

from __future__ import annotations

from dataclasses import asdict, replace
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
from budgetssl.engine.loop import LoopResult, train
from budgetssl.engine.precision import resolve_device
from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.rng import rank_seed, seed_everything
from budgetssl.engine.settings import LoopSettings
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.budget import FlopBudget
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, count_forward_flops
from budgetssl.meter.energy import EnergyReading, EnergyTracker, estimate_co2
from budgetssl.methods.base import Method, build_method
from budgetssl.record.identity import identity_of
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.sections import Energy, Identity, Pretraining, Provenance, Record, split
from budgetssl.record.weights import WEIGHTS, save_backbone


def loop_settings(run: RunConfig) -> LoopSettings:
    """The method's recipe and how the loop runs, both from `train:`."""
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


def pretrain(run: RunConfig, folder: Path) -> tuple[Backbone, Record]:
    """Train until the budget is spent; save the backbone; return it and its record (identity,
    pretraining, energy, provenance)."""
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
            FlopBudget(run.budget.flops),
            MetricsLog(folder / "metrics.jsonl", enabled=world.is_main),
            label="pretrain",
            checkpoints=checkpoints,
            distributed=True,
        )
    # The transfer fine-tunes every parameter (MAE's fixed position embedding too, as MAE's fine-tuning
    # does) and without stochastic depth, as a backbone rebuilt from its weights file would.
    backbone = without_drop_path(method.backbone).requires_grad_(True)
    scores = validation_scores(run, method) if world.is_main else {}
    pretraining, extra = split(
        Pretraining,
        {
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
            **scores,  # a user method's own fields beyond the known ones stay in the record's extras
            "first_loss": result.first_loss,
            "final_loss": result.final_loss,
            "final_lr": result.final_lr,
            "data_skipped": world.sum_ints([batches.skipped])[0],
            "pretrain_wall_seconds": result.wall_seconds,
            "world_size": result.world_size,
            "nodes": world.nodes,
            "resumed_from_step": result.resumed_from_step,
        },
    )
    identity = identity_of(run)
    # The weights file carries what it cost, so that a bare file transfers with its pretraining's record.
    weights = (
        save_backbone(backbone, folder, weights_provenance(identity, pretraining))
        if world.is_main
        else WEIGHTS
    )
    reading, nodes_tracked = over_nodes(energy.reading, world)
    estimate = estimate_co2(result.flops, run.energy.hardware)
    return backbone, Record(
        identity=identity,
        pretraining=pretraining,
        energy=Energy(
            energy_kwh=reading.energy_kwh,
            co2_kg=reading.co2_kg,
            energy_method=reading.method,
            energy_detail=reading.detail,
            energy_nodes_tracked=nodes_tracked,
            **estimate,
        ),
        provenance=Provenance(
            params=sum(p.numel() for p in backbone.parameters()),
            backbone_family=backbone.family,
            backbone_timm=backbone.timm_spec(),
            backbone_weights=weights,
        ),
        extra=extra,
    )


def weights_provenance(identity: Identity, pretraining: Pretraining) -> dict[str, Any]:
    """The record fields a weights file carries in its metadata (read back by budgetssl-transfer)."""
    return {
        **asdict(identity),
        "steps": pretraining.steps,
        "train_flops": pretraining.train_flops,
        "convention": pretraining.convention,
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
