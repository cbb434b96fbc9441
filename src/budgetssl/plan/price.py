"""One job priced without training: its steps and FLOPs at every stage, then their cost on the planned
accelerator, and what the user should know before spending them (plan/warnings.py).

The FLOPs are the ones the run will spend, by the run's own rules: a step counted on meta tensors
(verify/flops.py, the engine's metered first step; the record's flops_per_step, exactly), the budget's
steps (meter/budget.py FlopBudget: floor(budget / step)), a ladder's trunk and cool-downs
(meter/ladder.py LadderPlan), the transfer's steps (transfer/finetune.py transfer_budget) at its own
counted step, once per rung, and the probe's feature pass (readout/segmentation.py). What the run does
not meter into its cost is not priced either: the read-outs' k-NN and linear classifiers, the monitors
(outside the budget), the scoring of the validation splits, and the probe's linear heads, which train
until they converge (at most readout.max_epochs epochs), so their cost is known only after.

A count takes seconds (a ViT-L step at batch 4096: about two), and a sweep's jobs share few distinct
steps (the study's 300 jobs: 16), so each distinct count is made once: keyed by what a step's shapes
depend on (`step_key`), not by the budget, the seed or the transfer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf

from budgetssl.config.check import RunConfig
from budgetssl.config.run_name import spell_budget
from budgetssl.config.volatile import without
from budgetssl.data.registry import DATASETS
from budgetssl.errors import BudgetSSLError, ConfigError
from budgetssl.meter.budget import FlopBudget, Plan
from budgetssl.meter.ladder import LadderPlan
from budgetssl.meter.peak import accelerator_named, dtype_of
from budgetssl.methods.registry import METHODS
from budgetssl.plan.cost import Measured, cost, utilisation
from budgetssl.plan.jobs import Job
from budgetssl.plan.warnings import before_spending
from budgetssl.plugins import check_config
from budgetssl.readout.segmentation import probe_indices
from budgetssl.record.identity import identity_of
from budgetssl.record.summary import SUMMARY, completed_record
from budgetssl.transfer.finetune import transfer_budget, transfer_settings
from budgetssl.transfer.registry import TRANSFERS
from budgetssl.verify.flops import probe_feature_flops, step_flops, transfer_step

PLANNED, COMPLETED, ERROR = "planned", "completed", "error"


@dataclass
class Row:
    """One job of the plan: plan.csv's row (its fields, in this order), plan.json's job."""

    job: int
    status: str  # planned | completed (skipped, not counted) | error (the run would fail; not counted)
    method: str | None
    backbone: str | None
    dataset: str | None
    budget: str  # the budget's spelling (1e18), or the ladder's rungs
    folder: str
    overrides: list[str] = field(default_factory=list)  # the job's own (budgetssl-run OVERRIDES runs it)
    flops_per_step: int | None = None
    steps: int | None = None  # pretraining steps in all (a ladder: its trunk and every cool-down)
    pretrain_flops: int | None = None
    transfer_flops: int | None = None  # every rung's transfer
    probe_flops: int | None = None  # the probe's feature pass, every rung's (its heads are not priced)
    total_flops: int | None = None
    device: str | None = None
    dtype: str | None = None
    gpus: int | None = None
    mfu: float | None = None
    mfu_source: str | None = None
    mfu_records: int | None = None
    gpu_hours: float | None = None
    wall_hours: float | None = None  # on the job's GPUs
    energy_kwh: float | None = None
    co2_kg: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_key(run: RunConfig, classes: int) -> str:
    """What a pretraining step's count depends on: the method, the backbone, the loop and its recipe
    (train, less what cannot change a result), the image size, and the data's classes for a method that
    reads labels (a classifier's width: a method without labels has no module of that width); not the
    budget, the seed, the dataset's files, the transfer or the read-outs."""
    tree = asdict(run)  # the typed sections as plain containers (RunConfig.to_dict's content, faster)
    labelled = "label" in METHODS.get(run.method.name).needs
    parts = {
        "method": tree["method"],
        "backbone": tree["backbone"],
        "train": without({"train": tree["train"]})["train"],
        "image_size": run.dataset.image_size,
        "classes": classes if labelled else None,
    }
    return json.dumps(parts, sort_keys=True, default=str)


def transfer_key(run: RunConfig, what: str, *extra: Any) -> str:
    """What the transfer's step (or the probe's feature pass) depends on: the backbone, the transfer
    section, the loop's settings it runs under (transfer/finetune.py transfer_settings: the transfer's
    own recipe, the pretraining's precision and device) and the read-outs' (the probe's chunks)."""
    tree = without(asdict(run))
    parts = {k: tree[k] for k in ("backbone", "transfer", "readout")}
    settings = repr(transfer_settings(run.transfer, run.train))
    return json.dumps(
        {"what": what, **parts, "settings": settings, "extra": extra}, sort_keys=True, default=str
    )


def count(kind: str, tree: dict[str, Any], *extra: Any) -> int:
    """One count of a run given as its config tree (RunConfig.to_dict: what crosses to a worker process):
    `step` (extra: the data's classes), `transfer` or `probe` (extra: its images)."""
    run = check_config(OmegaConf.create(tree))
    if kind == "step":
        return step_flops(run, *extra)
    info = TRANSFERS.get(run.transfer.name).info_of(run.transfer)
    if kind == "transfer":
        return transfer_step(run, info)
    return probe_feature_flops(run, info, *extra)


class Counts:
    """Each distinct count made once (module docstring): here, or in `pool`'s worker process while this
    one composes and checks the next jobs. `ask` returns a function that gives the count when called."""

    def __init__(self, pool: Executor | None = None) -> None:
        self.pool = pool
        self.made: dict[str, Future[int] | int] = {}

    def ask(self, key: str, kind: str, run: RunConfig, *extra: Any) -> Callable[[], int]:
        if key not in self.made:
            tree = run.to_dict()
            self.made[key] = (
                self.pool.submit(count, kind, tree, *extra) if self.pool else count(kind, tree, *extra)
            )
        return lambda: self.value(key)

    def value(self, key: str) -> int:
        made = self.made[key]
        return int(made.result() if isinstance(made, Future) else made)

    def step(self, run: RunConfig, classes: int) -> Callable[[], int]:
        return self.ask(step_key(run, classes), "step", run, classes)

    def transfer(self, run: RunConfig) -> Callable[[], int]:
        return self.ask(transfer_key(run, "transfer"), "transfer", run)

    def probe(self, run: RunConfig, images: int) -> Callable[[], int]:
        return self.ask(transfer_key(run, "probe", images), "probe", run, images)


def classes_of(run: RunConfig) -> int:
    """The classes of the run's pretraining data as its config tells (data/base.py classes_from_config)."""
    found = DATASETS.get(run.dataset.name).classes_from_config(run.dataset)
    if found is None:
        raise ConfigError(
            f"the classes of dataset '{run.dataset.name}' are known only from its files (a class list): set "
            f"dataset.num_classes where the dataset has it, to price its step without reading the data"
        )
    return found[0]


@dataclass(frozen=True)
class Pretrained:
    """The pretraining's plan: its steps and FLOPs, the plan the schedules span, and its rungs."""

    steps: int
    flops: int
    plan: Plan  # the run's plan (a ladder's: of its largest rung, which the trunk serves)
    rungs: int  # models transferred: 1, or the ladder's rungs


def pretraining(run: RunConfig, per_step: int) -> Pretrained:
    """The pretraining's steps and FLOPs at `per_step`: floor(budget / step) steps, or a ladder's trunk and
    every cool-down (a BudgetError where the budget, or the smallest rung, buys less than a step)."""
    plan = FlopBudget(run.budget.flops).plan(per_step)
    if run.budget.ladder is None:
        return Pretrained(plan.steps, plan.steps * per_step, plan, 1)
    ladder = LadderPlan.make(list(run.budget.ladder), run.train.cooldown_fraction, per_step)
    steps = ladder.trunk_steps + sum(r.cooldown_steps for r in ladder.rungs)
    return Pretrained(steps, ladder.ladder_flops, plan, len(ladder.rungs))


def probe_images(run: RunConfig) -> tuple[int | None, str | None]:
    """The images the probe reads, and a warning where the config alone cannot tell."""
    known = TRANSFERS.get(run.transfer.name).train_images_from_config(run.transfer)
    if known is not None:
        return len(probe_indices(run.readout, known)), None
    if run.readout.probe_images:
        return run.readout.probe_images, (
            f"the probe is priced on readout.probe_images={run.readout.probe_images} images: transfer "
            f"'{run.transfer.name}'s training split is assumed to hold at least as many (not read)"
        )
    return None, (
        "the probe reads every training image (readout.probe_images=null), known only from the data: "
        "its cost is not priced"
    )


def budget_spelling(run: RunConfig) -> str:
    if run.budget.ladder is not None:
        return "ladder [" + ",".join(spell_budget(r) for r in sorted(run.budget.ladder)) + "]"
    return spell_budget(run.budget.flops)


@dataclass
class Pending:
    """A job checked, its counts asked for: priced once they are made (`finish`)."""

    row: Row
    run: RunConfig
    job: Job
    step: Callable[[], int]
    transfer: Callable[[], int]
    probe: Callable[[], int] | None


def prepare(job: Job, counts: Counts) -> Row | Pending:
    """`job`'s row where it is done before any count (completed: skipped; a config the run refuses), else
    the job with its counts asked for."""
    raw = identity_of(job.config)
    budget = OmegaConf.select(job.config, "budget.flops", default=None)
    row = Row(
        job=job.number,
        status=PLANNED,
        method=raw.method,
        backbone=raw.backbone,
        dataset=raw.dataset,
        budget=spell_budget(budget) if isinstance(budget, int | float) else str(budget),
        folder=str(job.folder),
        overrides=job.overrides,
    )
    try:
        run = check_config(job.config)
        row.budget = budget_spelling(run)
        if completed_record(job.folder) is not None:
            if not run.rerun:
                row.status = COMPLETED
                row.warnings.append(f"skipped, already completed: {job.folder / SUMMARY}")
                return row
            row.warnings.append("rerun=true: runs again although its folder holds a completed record")
        probe = None
        if run.transfer.probe:
            images, note = probe_images(run)
            row.warnings += [note] if note else []
            probe = counts.probe(run, images) if images else (lambda: 0)
        return Pending(row, run, job, counts.step(run, classes_of(run)), counts.transfer(run), probe)
    except BudgetSSLError as e:
        return failed(row, e)


def failed(row: Row, e: BudgetSSLError) -> Row:
    row.status, row.error = ERROR, str(e)
    return row


def finish(pending: Pending, evidence: list[Measured] | None) -> Row:
    """The job's steps and FLOPs at its counted steps, its warnings and its cost; or the error the run
    would stop at (a budget below one step)."""
    row, run = pending.row, pending.run
    try:
        per_step = pending.step()
        pre = pretraining(run, per_step)
        t_step = pending.transfer()
        t_plan = transfer_budget(run.transfer).plan(t_step)
        probe = pre.rungs * pending.probe() if pending.probe else None
        gpus = run.plan.gpus if run.plan and run.plan.gpus else pending.job.launcher_gpus
        row.warnings += before_spending(run, per_step, pre.plan, gpus)
    except BudgetSSLError as e:
        return failed(row, e)
    row.flops_per_step, row.steps, row.pretrain_flops = per_step, pre.steps, pre.flops
    row.transfer_flops = pre.rungs * t_plan.steps * t_step
    row.probe_flops = probe
    row.total_flops = pre.flops + row.transfer_flops + (probe or 0)
    priced_on(row, run, gpus, evidence)
    return row


def priced_on(row: Row, run: RunConfig, gpus: int, evidence: list[Measured] | None) -> None:
    """`row`'s cost on plan.device at the job's MFU (plan/cost.py)."""
    assert run.plan is not None and row.total_flops is not None
    device = accelerator_named(run.plan.device)
    dtype = dtype_of(run.train.precision, run.train.tf32)
    found = utilisation(
        run.plan.mfu,
        evidence,
        run.plan.from_runs,
        (run.method.name, run.backbone.name, run.train.precision, device.name),
        run.energy.hardware.utilization,
    )
    hw = run.energy.hardware
    priced = cost(
        row.total_flops, device.peaks[dtype], found.mfu, gpus, device.watts, hw.pue, hw.grid_kg_per_kwh
    )
    row.device, row.dtype, row.gpus = device.name, dtype, gpus
    row.mfu, row.mfu_source, row.mfu_records = found.mfu, found.source, found.records
    row.gpu_hours, row.wall_hours = priced.gpu_hours, priced.wall_hours
    row.energy_kwh, row.co2_kg = priced.energy_kwh, priced.co2_kg
