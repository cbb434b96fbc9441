"""The pretraining stage: data -> method views -> engine (metered) -> backbone weights and a record."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from budgetssl.backbones.backbone import Backbone, build_backbone, without_drop_path
from budgetssl.config.check import RunConfig
from budgetssl.config.schema import EnergyConfig
from budgetssl.data.base import build_dataset
from budgetssl.data.loader import Batches, LoaderOptions, collate_images, endless_batches
from budgetssl.engine import distributed
from budgetssl.engine.checkpoint_files import FOLDER as CHECKPOINTS
from budgetssl.engine.checkpoint_files import Checkpoints
from budgetssl.engine.loop import LoopResult, train
from budgetssl.engine.precision import resolve_device
from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.rng import rank_seed, seed_everything
from budgetssl.engine.settings import loop_settings
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.budget import FlopBudget
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, flops_per_image
from budgetssl.meter.energy import EnergyReading, EnergyTracker, estimate_co2
from budgetssl.meter.peak import device_peak
from budgetssl.methods.base import Method, build_method
from budgetssl.methods.batched import OnDevice, device_views
from budgetssl.monitor.collapse import verdict
from budgetssl.monitor.watch import Monitor, final_values, held_out
from budgetssl.record.identity import identity_of
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.sections import Energy, Identity, Monitors, Pretraining, Provenance, Record, split
from budgetssl.record.weights import WEIGHTS, file_sha256, save_backbone


def pretrain_checkpoints(run: RunConfig, folder: Path) -> Checkpoints:
    """The pretraining checkpoints of the run folder `folder` (rank 0 writes them)."""
    return Checkpoints(
        folder / CHECKPOINTS,
        run.train.checkpoint_every_steps,
        config=run.to_dict(),
        write=distributed.current().is_main,
    )


def energy_tracked(run: RunConfig) -> EnergyConfig:
    """codecarbon measures the whole machine: one tracker per node (local rank 0), summed over nodes."""
    return replace(run.energy, track=run.energy.track and distributed.current().local_rank == 0)


def build(run: RunConfig) -> tuple[Method, Batches]:
    """The method (with its backbone) and its endless batch stream, seeded.

    Under torchrun every rank builds the same model from the seed and streams its share of each global
    batch; batch norm is synchronised across ranks where torch can (CUDA). The views run per sample in
    the data path or, under train.augment_on=device (or auto, methods/batched.py device_views), on each
    batch on the training device as the stream hands it out, outside the metered step.
    """
    world = distributed.current()
    seed_everything(run.seed)
    dataset = build_dataset(run.dataset, "train")
    backbone = build_backbone(run.backbone, run.dataset.image_size, drop_path=run.train.drop_path)
    method = build_method(run.method, backbone, dataset.info)
    method = distributed.sync_batch_norm(method, world)  # type: ignore[assignment]
    device = world.device if world.distributed else resolve_device(run.train.device)  # the Trainer's
    options = LoaderOptions.for_device(run.train.num_workers, device)
    batch = world.local_batch(run.train.batch_size)
    views = method.views()
    on_device = device_views(views, run.train.augment_on, device, options.num_workers)
    batches = endless_batches(
        dataset,
        views if on_device is None else on_device.loader,
        batch,
        run.seed,
        rank=world.rank,
        world=world.size,
        options=options,
        collate=None if on_device is None else collate_images,
        after=None if on_device is None else OnDevice(on_device, device, run.seed, world.rank, world.size),
    )
    rank_seed(run.seed, world.rank)
    return method, batches


def monitor_of(run: RunConfig, method: Method) -> Monitor | None:
    """The label-free monitors on a fixed held-out batch (budgetssl.monitor.watch); none when
    train.monitor_images is 0."""
    if run.train.monitor_images == 0:
        return None
    return Monitor(method, held_out(run, method, run.train.monitor_images))


def monitors_record(result: LoopResult, monitor: Monitor | None) -> Monitors | None:
    """The record's monitors: their values at initialisation and at the end, their cost, the verdict."""
    if monitor is None or not result.monitors:
        return None
    kept = result.monitors
    history = [(int(step), values) for step, values in kept.get("history", [])]
    final, steps = final_values(history)
    init = kept.get("init")
    return Monitors(
        monitor_init=init,
        monitor_final=final,
        monitor_final_steps=steps,
        monitor_images=monitor.images,
        monitor_source=monitor.batch.source,
        monitor_calls=int(kept.get("calls", 0)),
        monitor_seconds=result.timing.monitor if result.timing else None,
        monitor_flops=int(kept.get("flops", 0)),
        collapse=verdict(init, final),
    )


def pretrain(run: RunConfig, folder: Path) -> tuple[Backbone, Record]:
    """Train until the budget is spent; save the backbone; return it and its record (identity,
    pretraining, energy, provenance). A ladder (budget.ladder) is stages/ladder.py's."""
    if run.budget.ladder is not None:
        raise BudgetSSLError("a budget ladder runs through stages/ladder.py (budgetssl-pretrain/-run do)")
    world = distributed.current()
    method, batches = build(run)
    monitor = monitor_of(run, method)
    with EnergyTracker(energy_tracked(run)) as energy:
        result = train(
            method,
            batches,
            loop_settings(run),
            FlopBudget(run.budget.flops),
            MetricsLog(folder / "metrics.jsonl", enabled=world.is_main),
            label="pretrain",
            checkpoints=pretrain_checkpoints(run, folder),
            distributed=True,
            monitor=monitor,
        )
    return pretrained(run, folder, method, batches, result, energy.reading, monitor=monitor)


def pretrained(
    run: RunConfig,
    folder: Path,
    method: Method,
    batches: Batches,
    result: LoopResult,
    reading: EnergyReading,
    ladder: dict[str, Any] | None = None,
    keep_method: bool = False,
    weights: bool = True,
    monitor: Monitor | None = None,
) -> tuple[Backbone, Record]:
    """The trained method's backbone (saved in `folder` unless not `weights`) and its record.
    `keep_method`: the method trains on after this (a ladder's trunk), so the backbone returned is a
    copy and the method keeps its own settings; `ladder`: the record's ladder field; `monitor`: the
    monitors the loop ran (their record section and the collapse verdict)."""
    world = distributed.current()
    # The transfer fine-tunes every parameter (MAE's fixed position embedding too, as MAE's fine-tuning
    # does) and without stochastic depth, as a backbone rebuilt from its weights file would.
    trained = copy.deepcopy(method.backbone) if keep_method else method.backbone
    backbone = without_drop_path(trained).requires_grad_(True)
    scores = validation_scores(run, method) if world.is_main and weights else {}
    counted = time.perf_counter()
    image_flops = flops_per_image(backbone, run.dataset.image_size)
    counted = time.perf_counter() - counted
    pretraining, extra = split(
        Pretraining,
        {
            "convention": CONVENTION,
            "convention_detail": CONVENTION_DETAIL,
            "flops_per_step": result.plan.flops_per_step,
            "flops_per_image": image_flops,
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
            **utilisation(run, result, world, counted),
            "world_size": result.world_size,
            "nodes": world.nodes,
            "resumed_from_step": result.resumed_from_step,
            "data_classes": method.data.num_classes,
            "ladder": ladder,
            **result.runtime,  # precision, tf32, compiled, optimizer_impl, channels_last
        },
    )
    identity = identity_of(run)
    # The weights file carries what it cost, so that a bare file transfers with its pretraining's record.
    saved = None
    if weights:
        saved = (
            save_backbone(backbone, folder, weights_provenance(identity, pretraining))
            if world.is_main
            else WEIGHTS
        )
    reading, nodes_tracked = over_nodes(reading, world)
    estimate = estimate_co2(result.flops, run.energy.hardware)
    return backbone, Record(
        identity=identity,
        pretraining=pretraining,
        monitors=monitors_record(result, monitor),
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
            backbone_weights=saved,
            # The file as written (rank 0 writes it and the record): budgetssl-verify checks it against this.
            backbone_weights_sha256=file_sha256(folder / saved) if saved and world.is_main else None,
        ),
        extra=extra,
    )


def utilisation(
    run: RunConfig, result: LoopResult, world: distributed.World, counting_seconds: float
) -> dict[str, Any]:
    """Where pretraining's wall time went and how much of the devices' peak it used: the data-wait
    share, the meter's and the checkpoints' seconds (`counting_seconds`: the one-image count for
    flops_per_image), achieved FLOP/s and MFU against the peak of `world_size` devices (measured, on
    CPU, by rank 0 alone: the one that writes the record)."""
    timing = result.timing
    assert timing is not None
    achieved = result.flops / result.wall_seconds if result.wall_seconds > 0 else None
    train = run.train
    peak = device_peak(result.device, train.precision, train.peak_flops_per_s) if world.is_main else None
    per_device = peak.flops_per_s if peak is not None else None
    return {
        "data_wait_share": result.data_wait_share,
        "meter_seconds": result.meter_seconds + counting_seconds,
        "checkpoint_seconds": timing.checkpoint,
        "checkpoint_count": timing.checkpoints,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": per_device,
        "peak_source": peak.source if peak is not None else None,
        "mfu": achieved / (world.size * per_device) if achieved and per_device else None,
    }


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
