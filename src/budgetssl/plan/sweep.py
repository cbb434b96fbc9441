"""A sweep priced: its jobs expanded, checked, counted (in a second process for a large sweep) and
priced, with the totals and assumptions plan.json reports."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from budgetssl.config.check import check_plan, typed
from budgetssl.config.schema import PlanConfig
from budgetssl.meter.peak import accelerator_named
from budgetssl.plan.cost import measured_in
from budgetssl.plan.jobs import Job, expand
from budgetssl.plan.output import assumptions, totals
from budgetssl.plan.price import Counts, Row, finish, prepare

COMMAND = "budgetssl-run"  # the command whose jobs are priced: pretraining, transfer and probe


@dataclass
class Planned:
    rows: list[Row]
    summary: dict[str, Any]  # plan.json less its jobs: the command, totals, assumptions, seconds
    out: Path  # where plan.csv and plan.json go


# From this many jobs on, the counts are made in a second process while this one composes and checks the
# jobs (plan/price.py Counts). Forked, it starts with this process's imports; with one thread, as torch's
# DataLoader runs its forked workers (an OpenMP pool does not survive a fork).
POOL_FROM = 32


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def pool(size: int) -> ProcessPoolExecutor | None:
    """The counting process for a sweep of `size` jobs, where it pays off and the platform can fork."""
    if size < POOL_FROM or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=one_thread)


def own_settings(job: Job) -> str | None:
    """The plan's own section of `job`, checked before any job is priced (a bad plan.* value, an unknown
    plan.device, stops the plan; a job's other settings are its own row's error): its plan.from_runs."""
    settings = typed(job.config.plan, PlanConfig, "plan")
    check_plan(settings)
    accelerator_named(settings.device)
    return settings.from_runs


def make(overrides: list[str], multirun: bool) -> Planned:
    """Every job of `budgetssl-run [--multirun] overrides`, priced."""
    start = time.perf_counter()
    with ExitStack() as stack:
        sweep = stack.enter_context(expand(overrides, multirun, COMMAND))
        worker = pool(sweep.size)
        counts = Counts(stack.enter_context(worker) if worker else None)
        prepared: list = []
        evidence: dict = {}
        first: Job | None = None
        for job in sweep.jobs:
            where = own_settings(job)
            if where and where not in evidence:
                evidence[where] = measured_in(Path(where))
            prepared.append((prepare(job, counts), where))
            first = first or job
        rows = [
            p if isinstance(p, Row) else finish(p, evidence.get(where) if where else None)
            for p, where in prepared
        ]
    assert first is not None  # a sweep has a job
    out = OmegaConf.select(first.config, "plan.out")
    summary = {
        "command": " ".join([COMMAND, *(["--multirun"] if multirun else []), *overrides]),
        "totals": totals(rows),
        "assumptions": assumptions(
            rows,
            float(OmegaConf.select(first.config, "energy.hardware.pue")),
            float(OmegaConf.select(first.config, "energy.hardware.grid_kg_per_kwh")),
        ),
        "distinct_counts": len(counts.made),
        "seconds": time.perf_counter() - start,
    }
    folder = Path(out) if out else sweep.folder or first.folder.parent
    return Planned(rows, summary, folder)
