"""flops_per_step re-derived from the run folder's saved config, at full size, without paying for a step;
the same count, before a run, is what budgetssl-flops prints (`count`).

The method and its backbone are built on torch's meta device (meter/meta.py: shapes without storage), the
batch is meta tensors of the shapes the method's own views make of a stand-in sample, at the configured
global batch. Then the engine's own metered first step runs on them (engine/metering.py first_step: the
Trainer's forward, backward, optimizer and after-step passes under the meter's counting mode, with the
attention rules of meter/attention.py). FLOP rules read shapes only, so the count is the real step's,
exactly, at any size: tests/test_verify.py compares it with real steps of every method and with the
published ViT-B/L counts at batch 4096.

The step is counted in fp32 on one process at the global batch: the count reads shapes, not dtypes, and
under torchrun the ranks' shares sum to the global batch's (contrastive losses gather every rank's
embeddings, so each rank's logits are its rows of the global matrix).

The transfer's step (`transfer_step`: the Segmenter fine-tuned by transfer/finetune.py) and the probe's
feature pass (`probe_feature_flops`: readout/segmentation.py's frozen read-out of its training images) are
counted the same way, for budgetssl-plan to price a run's every stage before it runs.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from math import floor
from typing import Any

import torch

from budgetssl.backbones.backbone import build_backbone, without_drop_path
from budgetssl.config.check import RunConfig
from budgetssl.data.base import build_dataset
from budgetssl.data.info import DataInfo
from budgetssl.engine.distributed import World
from budgetssl.engine.metering import FirstStep, first_step
from budgetssl.engine.settings import LoopSettings, loop_settings
from budgetssl.engine.task import Task
from budgetssl.engine.trainer import Trainer
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.budget import FlopBudget, StepBudget
from budgetssl.meter.counter import CONVENTION, CONVENTION_DETAIL, flops_per_image
from budgetssl.meter.meta import META, build_on_meta, stand_in_batch
from budgetssl.meter.step_meter import StepMeter
from budgetssl.methods.base import Method, build_method
from budgetssl.readout.features import compute_features
from budgetssl.readout.segmentation import probe_model, read_features
from budgetssl.record.identity import identity_of
from budgetssl.record.sections import Pretraining, Record
from budgetssl.transfer.base import TransferInfo
from budgetssl.transfer.finetune import probe_config, segmenter, transfer_settings
from budgetssl.verify.accounting import pretrained_here
from budgetssl.verify.folder import RunFolder
from budgetssl.verify.result import Check, fail, ok, skip


@dataclass(frozen=True)
class Derived:
    """The step's cost as the saved config gives it."""

    flops_per_step: int
    breakdown: dict[str, dict[str, int]]
    flops_per_image: int
    batch: dict[str, tuple[int, ...]]  # the stand-in batch's shapes
    seconds: float  # building the model and counting the step
    params: int = 0  # the backbone's parameters


def data_info(run: RunConfig, record: Record) -> DataInfo:
    """The facts about the data a method's modules depend on (a classifier's width): the record's
    data_classes, else (a record written before it) the dataset's own, where it can be read here."""
    classes = record.pretraining.data_classes if record.pretraining is not None else None
    if classes is None:
        try:
            return build_dataset(run.dataset, "train").info
        except (BudgetSSLError, OSError, ValueError) as e:
            raise BudgetSSLError(
                f"the record has no data_classes (written before budgetssl recorded it) and dataset "
                f"'{run.dataset.name}' cannot be read here to count its classes: {e}"
            ) from None
    return DataInfo(image_size=run.dataset.image_size, class_names=tuple(f"class{i}" for i in range(classes)))


def counted_step(
    task: Task, settings: LoopSettings, batch: dict[str, Any], budget: Any, scalars: Any
) -> FirstStep:
    """The engine's metered first step of `task` (built on meta, its scalar buffers in `scalars`) on
    the meta `batch`, under `settings` on the meta device in fp32, uncompiled."""
    settings = replace(settings, device="meta", precision="fp32", compile=False)
    trainer = Trainer(task, settings)  # moves the task to meta, its scalar buffers too
    scalars.put_back()
    task.train()
    return first_step(trainer, StepMeter(), budget, batch, 0.0)


def pretraining_step(run: RunConfig, info: DataInfo, budget: Any) -> tuple[Method, FirstStep, dict]:
    """The method of `run` on data described by `info`, built on meta, its first step counted on the
    stand-in batch under `budget`; and that batch."""
    size = run.dataset.image_size
    built = build_on_meta(
        lambda: build_method(
            run.method, build_backbone(run.backbone, size, drop_path=run.train.drop_path), info
        )
    )
    method = built.module
    batch = stand_in_batch(method.views(), size, run.train.batch_size)
    return method, counted_step(method, loop_settings(run), batch, budget, built), batch


def step_flops(run: RunConfig, classes: int) -> int:
    """flops_per_step of `run` on data of `classes` classes, counted on meta tensors, its budget not
    planned: what budgetssl-plan prices a job's steps with."""
    info = data_info(run, Record(pretraining=Pretraining(data_classes=classes)))
    return int(pretraining_step(run, info, StepBudget(1))[1].cost.total)


def derive(run: RunConfig, record: Record, plan_budget: bool = True) -> Derived:
    """The pretraining step of `run` counted on meta tensors (module docstring); `plan_budget=False`
    prices the step without planning `budget.flops` (which may be smaller than one step)."""
    start = time.perf_counter()
    size = run.dataset.image_size
    budget = FlopBudget(run.budget.flops) if run.budget.flops and plan_budget else StepBudget(1)
    method, first, batch = pretraining_step(run, data_info(run, record), budget)
    return Derived(
        flops_per_step=int(first.cost.total),
        breakdown=first.cost.breakdown,
        flops_per_image=flops_per_image(without_drop_path(method.backbone), size),
        batch={k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)},
        seconds=time.perf_counter() - start,
        params=sum(p.numel() for p in method.backbone.parameters()),
    )


def transfer_step(run: RunConfig, info: TransferInfo) -> int:
    """The FLOPs of one fine-tuning step of `run`'s transfer (transfer/finetune.py: its Segmenter on the
    backbone, its recipe) at transfer.batch_size and transfer.image_size, counted on meta tensors;
    `info` the transfer dataset's (its classes). The backbone is built as a random init's is: the
    pretrained one differs in weights only."""
    t = run.transfer
    backbone = build_on_meta(lambda: build_backbone(run.backbone, t.image_size)).module  # wholly on meta
    built = build_on_meta(lambda: segmenter(t, backbone, info, World()))  # its heads may probe it
    size = (t.batch_size, t.image_size, t.image_size)
    batch = {
        "image": torch.empty((size[0], 3, *size[1:]), device=META),
        "mask": torch.empty(size, dtype=torch.int64, device=META),
    }
    return int(
        counted_step(built.module, transfer_settings(t, run.train), batch, StepBudget(1), built).cost.total
    )


def probe_feature_flops(run: RunConfig, info: TransferInfo, images: int) -> int:
    """The FLOPs of the probe's feature pass over `images` training images (readout/segmentation.py:
    the frozen backbone read out as its linear head reads it, in chunks of readout.batch_size), counted
    on meta tensors."""
    cfg = probe_config(run.transfer)
    built = build_on_meta(lambda: probe_model(cfg, build_backbone(run.backbone, cfg.image_size), info))
    model = built.module.to(META)
    built.put_back()
    step = run.readout.batch_size
    chunks = (
        torch.empty((min(step, images - i), 3, cfg.image_size, cfg.image_size), device=META)
        for i in range(0, images, step)
    )
    _, flops = compute_features(
        model.backbone, functools.partial(read_features, model), chunks, META, count=True
    )
    return int(flops or 0)


def count(run: RunConfig) -> dict[str, Any]:
    """What budgetssl-flops prints: the step of `run` counted on meta tensors, with the classes of its
    dataset, without planning its budget (which may be smaller than one step)."""
    classes = build_dataset(run.dataset, "train").info.num_classes
    derived = derive(run, Record(pretraining=Pretraining(data_classes=classes)), plan_budget=False)
    return report(run, derived.flops_per_step, derived.flops_per_image, derived.breakdown, derived.params)


def report(run: RunConfig, per_step: int, per_image: int, breakdown: dict, params: int) -> dict[str, Any]:
    """budgetssl-flops' printed object: the run's identity, the counts and the planned steps."""
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


def passes_differing(recorded: Any, derived: dict[str, dict[str, int]]) -> str:
    """Which passes of the breakdown differ (`forward 10 vs 12`), to say where a mismatch lies."""
    if not isinstance(recorded, dict):
        return ""
    diffs = [
        f"{name} {derived.get(name, {}).get('total')} vs {recorded.get(name, {}).get('total')}"
        for name in sorted(set(recorded) | set(derived))
        if (derived.get(name) or {}).get("total") != (recorded.get(name) or {}).get("total")
    ]
    return f" (by pass, derived vs recorded: {'; '.join(diffs)})" if diffs else ""


def check_flops(folder: RunFolder) -> list[Check]:
    """flops_per_step and flops_per_image of the record against the counts the saved config gives."""
    record = folder.record
    names = ("flops_per_step", "flops_per_image")
    if (why := pretrained_here(folder)) is not None:
        return [skip(n, why) for n in names]
    assert record.pretraining is not None
    recorded = record.pretraining.flops_per_step
    if recorded is None:
        return [fail(n, f"{n} in the record", "none") for n in names]
    try:
        run = folder.run_config()
        derived = derive(run, record)
    except BudgetSSLError as e:
        return [fail(n, "a step built from the saved config", f"none: {e}") for n in names]
    except (RuntimeError, NotImplementedError) as e:  # e.g. a plug-in that reads a tensor on the host
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [
            fail(n, "a step counted on meta tensors", f"none: {type(e).__name__}: {first}") for n in names
        ]
    shapes = ", ".join(f"{k} {list(v)}" for k, v in derived.batch.items())
    how = f"counted on meta tensors in {derived.seconds:.1f} s, batch {shapes}"
    if derived.flops_per_step == recorded:
        step = ok("flops_per_step", f"{recorded} = the saved config's step ({how})")
    else:
        where = passes_differing(record.pretraining.flops_breakdown, derived.breakdown)
        step = fail(
            "flops_per_step", f"{derived.flops_per_step} (the saved config's step)", f"{recorded}{where}"
        )
    per_image = record.pretraining.flops_per_image
    if per_image == derived.flops_per_image:
        image = ok("flops_per_image", f"{per_image} = one forward pass of the backbone on one image")
    else:
        image = fail(
            "flops_per_image", f"{derived.flops_per_image} (one forward pass, one image)", str(per_image)
        )
    return [step, image]
