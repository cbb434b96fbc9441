"""A budget ladder (budget.ladder=[...]): one trunk, a branch per rung, each rung a complete run folder.

Layout: the command's run folder is the ladder's. The trunk's checkpoints and metrics.jsonl are in it,
and its summary.json, whose `ladder` field (role trunk) gives what the ladder spent against separate
runs at its budgets; analysis/collect.py does not count it as a run. Each rung is a complete run folder
under it, <ladder>/rungs/<budget>/: its config (.hydra/config.yaml, as Hydra writes a run's), metrics.jsonl
(the trunk's rows to its branch point, then its branch's), summary.json, weights and the checkpoints of
its branch, with `ladder` (role rung) naming the trunk, its branch step and the FLOPs it shares.

Order, in one process (every rank of a torchrun the same): the trunk trains to the smallest rung's
branch point and checkpoints there, as a run stops at the end of its plan (engine/loop.py `until`); that
checkpoint becomes the rung's first, with the rung's own plan and config (a `handoff`); the rung resumes
from it like any interrupted run, cools down to its budget and is recorded (and transferred, under
budgetssl-run); the trunk resumes from its own checkpoint to the next branch point; and so on. The
trunk is the largest rung's wsd run stopped before its cool-down, so its schedules never anneal.

A rung's config is the ladder's with budget.flops its budget and budget.ladder cut at it: run alone,
that config trains this same rung (the same trunk to its branch point, the same warm-up reference).

Resuming: run the same command again. A completed rung is skipped, a rung with checkpoints resumes
from its newest, and the trunk from its own; on a completed ladder only the trunk's record is made
again (the console script skips a completed folder before that).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.check import RunConfig
from budgetssl.config.run_name import spell_budget
from budgetssl.engine import distributed
from budgetssl.engine.checkpoint_files import Checkpoints
from budgetssl.engine.loop import LoopResult, train
from budgetssl.engine.resume import branched
from budgetssl.errors import BudgetSSLError
from budgetssl.files import atomic_write
from budgetssl.meter.budget import FlopBudget
from budgetssl.meter.energy import EnergyReading, EnergyTracker
from budgetssl.meter.ladder import LadderPlan, branch_step
from budgetssl.record.identity import identity_of
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.sections import Record
from budgetssl.record.summary import completed_record, write_summary
from budgetssl.record.wandb_log import summarize, wandb_run
from budgetssl.stages.outcome import ended, finished, started
from budgetssl.stages.pretrain import (
    build,
    energy_tracked,
    loop_settings,
    monitor_of,
    pretrain_checkpoints,
    pretrained,
)

RUNGS = "rungs"
METRICS = "metrics.jsonl"
CONFIG = Path(".hydra") / "config.yaml"
TRUNK = "../.."  # a rung's record names its trunk by its place: the folder two up


def rung_names(budgets: list[float]) -> list[str]:
    """Folder names for the (sorted) rungs: each budget as a run folder names it (2.5e11), with as
    many digits as tell the rungs apart."""
    for digits in range(3, 18):
        names = [spell_budget(b, digits) for b in budgets]
        if len(set(names)) == len(names):
            return names
    return [repr(b) for b in budgets]


def rung_config(run: RunConfig, budgets: list[float], i: int) -> RunConfig:
    """Rung `i`'s config: the ladder's, with budget.flops its budget and budget.ladder cut at it."""
    return replace(run, budget=replace(run.budget, flops=budgets[i], ladder=budgets[: i + 1]))


Then = Callable[[RunConfig, Path, Backbone], dict[str, Any]]  # a rung's further sections (its transfer)


def ladder(run: RunConfig, folder: Path, command: str, then: Then | None = None) -> Record:
    """Train the ladder of `run` in `folder`; each rung's record (with `then(rung_run, rung_folder,
    backbone)`'s sections merged in: the transfer, under budgetssl-run) is written in its folder, and
    the trunk's record is returned for the ladder's own summary.json."""
    trunk = Trunk(run, folder)
    for i in range(len(trunk.budgets)):
        trunk.rung(i, command, then)
    return trunk.record()


class Trunk:
    """The ladder's method and batch stream, trained in turns: the trunk to a branch point (`to`), a
    rung's branch (`rung`), the trunk on to the next, ...; the trunk's record at the end (`record`)."""

    def __init__(self, run: RunConfig, folder: Path) -> None:
        self.run, self.folder, self.world = run, folder, distributed.current()
        self.budgets = sorted(float(b) for b in run.budget.ladder or ())
        self.names = rung_names(self.budgets)
        self.method, self.batches = build(run)
        self.monitor = monitor_of(
            run, self.method
        )  # every rung's too: a rung's history starts as the trunk's
        self.checkpoints = pretrain_checkpoints(run, folder)
        self.log = MetricsLog(folder / METRICS, enabled=self.world.is_main)
        self.readings: list[EnergyReading] = []

    def plan(self, result: LoopResult) -> LadderPlan:
        return LadderPlan.make(self.budgets, self.run.train.cooldown_fraction, result.plan.flops_per_step)

    def to(self, budget: float) -> LoopResult:
        """The trunk, resumed from its checkpoint, trained to the branch point of the rung `budget`."""
        f = self.run.train.cooldown_fraction
        with EnergyTracker(energy_tracked(self.run)) as energy:
            result = train(
                self.method,
                self.batches,
                loop_settings(self.run),
                FlopBudget(self.run.budget.flops),
                self.log,
                label="pretrain",
                checkpoints=self.checkpoints,
                distributed=True,
                until=lambda plan: branch_step(budget, f, plan.flops_per_step),
                monitor=self.monitor,
            )
        self.readings.append(energy.reading)
        return result

    def rung(self, i: int, command: str, then: Then | None) -> None:
        """Rung `i`: skipped if completed; else its branch (started from the trunk at its branch point
        unless it has checkpoints of its own), its record (and `then`'s sections) in its folder. A rung
        that fails or is interrupted leaves its own record saying so (stages/outcome.py, as any run's),
        and the ladder stops there."""
        world = self.world
        start, outcome = time.perf_counter(), started(command)
        run, folder = rung_config(self.run, self.budgets, i), self.folder / RUNGS / self.names[i]
        checkpoints = pretrain_checkpoints(run, folder)
        done, branched_already = world.broadcast(
            (completed_record(folder) is not None, bool(checkpoints.existing()))
        )
        if done:
            return
        try:
            record = self.branch(i, run, folder, checkpoints, branched_already, then)
        except BaseException as e:
            if world.is_main:
                failed = Record(identity=identity_of(run), outcome=ended(outcome, e, folder))
                write_summary(folder, finished(failed, start))
            raise
        if world.is_main:
            record.outcome = ended(outcome, None)
            write_summary(folder, finished(record, start))
        world.barrier()  # every rank sees the rung completed

    def branch(
        self, i: int, run: RunConfig, folder: Path, checkpoints: Checkpoints, resumed: bool, then: Then | None
    ) -> Record:
        """Rung `i`'s branch trained to its budget (from the trunk at its branch point unless `resumed`
        from its own checkpoints) and its record, without its outcome."""
        world, budget = self.world, self.budgets[i]
        if not resumed:
            trunk = self.to(budget)
            branch_at = self.plan(trunk).rungs[i].branch_step
            if trunk.steps != branch_at:
                raise BudgetSSLError(
                    f"the trunk in {self.folder} is at step {trunk.steps}, past rung {self.names[i]}'s "
                    f"branch point (step {branch_at}), and {folder} holds no checkpoint of its branch: "
                    f"remove {self.folder} to train the ladder again"
                )
            if world.is_main:
                handoff(self.checkpoints, checkpoints, run, folder, self.folder / METRICS, branch_at)
            world.barrier()  # the rung's first checkpoint is on disk before any rank reads it
        logger = run.logger.wandb if world.is_main else replace(run.logger.wandb, mode="disabled")
        with wandb_run(logger, folder, f"{self.folder.name}/{RUNGS}/{self.names[i]}", run.to_dict()) as wandb:
            with EnergyTracker(energy_tracked(run)) as energy:
                result = train(
                    self.method,
                    self.batches,
                    loop_settings(run),
                    FlopBudget(budget),
                    MetricsLog(folder / METRICS, enabled=world.is_main),
                    label="pretrain",
                    checkpoints=checkpoints,
                    distributed=True,
                    monitor=self.monitor,
                )
            backbone, record = pretrained(
                run,
                folder,
                self.method,
                self.batches,
                result,
                energy.reading,
                ladder=self.plan(result).rung_section(i, TRUNK),
                keep_method=True,  # the trunk trains on
                monitor=self.monitor,
            )
            if record.energy is not None and record.energy.energy_detail:
                detail = record.energy.energy_detail
                record.energy.energy_detail = f"its branch alone (the trunk's is the ladder's); {detail}"
            if then is not None:
                record.merge(**then(run, folder, backbone))
            summarize(wandb, record)
        return record

    def record(self) -> Record:
        """The trunk's record: at its end (trained there already, unless every rung was done before)."""
        trunk = self.to(self.budgets[-1])
        _, record = pretrained(
            self.run,
            self.folder,
            self.method,
            self.batches,
            trunk,
            trunk_energy(self.readings),
            ladder=self.plan(trunk).trunk_section([f"{RUNGS}/{name}" for name in self.names]),
            weights=False,
            monitor=self.monitor,
        )
        return record


def handoff(
    trunk: Checkpoints, rung: Checkpoints, run: RunConfig, folder: Path, trunk_metrics: Path, step: int
) -> None:
    """Start rung `run` in `folder` from the trunk's checkpoint at `step`: the same state under the
    rung's plan as its first checkpoint (engine/resume.py `branched`, saved with the rung's config), the
    trunk's metrics rows to `step` as its first rows, and its config beside them."""
    found = trunk.latest()
    if found is None or int(found[1]["step"]) != step:
        raise BudgetSSLError(f"no checkpoint of the trunk at step {step} in {trunk.folder}")
    flops_per_step = int(found[1]["plan"]["flops_per_step"])
    config = run.to_dict()
    atomic_write(folder / CONFIG, lambda tmp: tmp.write_text(OmegaConf.to_yaml(config)))
    rows = []
    if trunk_metrics.is_file():
        for line in trunk_metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("stage") == "pretrain" and int(row.get("step", 0)) <= step:
                rows.append(line + "\n")
    atomic_write(folder / METRICS, lambda tmp: tmp.write_text("".join(rows)))
    rung.save(branched(found[1], FlopBudget(run.budget.flops).plan(flops_per_step)))
    rung.wait()


def trunk_energy(readings: list[EnergyReading]) -> EnergyReading:
    """The trunk's energy over its stretches (between the branches)."""
    if not readings:
        return EnergyReading(None, None, "disabled", "nothing trained")
    kwh = [r.energy_kwh for r in readings]
    co2 = [r.co2_kg for r in readings]
    return EnergyReading(
        sum(kwh) if all(k is not None for k in kwh) else None,  # type: ignore[misc]
        sum(co2) if all(c is not None for c in co2) else None,  # type: ignore[misc]
        readings[-1].method,
        f"the trunk alone, summed over {len(readings)} stretch(es); last: {readings[-1].detail}",
    )
