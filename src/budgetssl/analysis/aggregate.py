"""Runs grouped by what they varied (method, dataset, backbone, schedule, budget), computed once per pair
of axes: seeds averaged with their spread and their own values kept (for ties and the fits' bootstrap),
how many of them collapsed (analysis/collapse.py), and the random-init runs gathered in the same pass."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from budgetssl.analysis.verdict import collapse_of
from budgetssl.record.sections import Record

BASELINE = "random_init"
COSINE = "cosine"  # the schedule of a record that names none (written before train.schedule existed)


@dataclass(frozen=True)
class Point:
    """One configuration: the mean of `x` and `y` over its seeds, the spread (std) of `y` and each seed's
    `y`. A random-init point has no pretraining dataset and a budget of 0; its x is None when no seed has
    one. A wsd run (a ladder's rung) is its own configuration: never averaged with a cosine run."""

    method: str
    dataset: str | None
    backbone: str | None
    budget: float
    x: float | None
    y: float
    spread: float
    seeds: int
    schedule: str = COSINE
    values: tuple[float, ...] = ()  # each seed's y, in the order the runs were read
    collapsed: int = 0  # seeds whose record says `collapse` (analysis/collapse.py: what that does)
    rules: tuple[str, ...] = ()  # the first rule that fired in each collapsed seed, each named once
    # Why the report judges this point's configuration did not learn in `y` (analysis/learning.py), or ''.
    unlearned: str = ""

    @property
    def baseline(self) -> bool:
        return self.method == BASELINE

    @property
    def label(self) -> str:
        """The method as a reader sees it: `mae`, or `mae (wsd)` for a schedule other than cosine."""
        return self.method if self.schedule == COSINE else f"{self.method} ({self.schedule})"

    @property
    def config(self) -> tuple[str, str | None, str | None, str]:
        """What a curve over budgets shares: method, dataset, backbone and schedule."""
        return (self.method, self.dataset, self.backbone, self.schedule)


@dataclass
class Aggregate:
    """Every configuration's point for `y` against `x`: pretrained ones and random-init ones apart."""

    x: str
    y: str
    points: list[Point] = field(default_factory=list)  # pretrained, x > 0 (the axis is logarithmic)
    baselines: list[Point] = field(default_factory=list)  # random init, one per backbone and transfer

    def front_candidates(self) -> list[Point]:
        return self.points + [b for b in self.baselines if b.x is not None]


def schedule_of(record: Record) -> str:
    """The record's lr schedule; a random init has none to vary, an older record ran cosine."""
    if record.identity.method == BASELINE:
        return COSINE
    return str(record.identity.schedule or COSINE)


def aggregate(records: list[Record], x: str, y: str) -> Aggregate:
    """One pass over the records: configurations with `y` (and, pretrained, an `x` > 0)."""
    groups: dict[tuple, list[tuple[float | None, float, str | None]]] = defaultdict(list)
    for record in records:
        xv, yv = record.number(x), record.number(y)
        baseline = record.identity.method == BASELINE
        if yv is None or (not baseline and (xv is None or xv <= 0)):
            continue
        i = record.identity
        key = (str(i.method), i.dataset, i.backbone, schedule_of(record), float(i.budget_flops or 0))
        verdict = collapse_of(record)
        groups[key].append((xv if xv is not None and xv > 0 else None, yv, verdict and verdict.rule))
    found = Aggregate(x, y)
    for (method, dataset, backbone, schedule, budget), values in groups.items():
        ys = [v[1] for v in values]
        xs = [v[0] for v in values if v[0] is not None]
        rules = [v[2] for v in values if v[2] is not None]
        point = Point(
            method=method,
            dataset=dataset,
            backbone=backbone,
            budget=budget,
            x=statistics.fmean(xs) if xs else None,
            y=statistics.fmean(ys),
            spread=statistics.stdev(ys) if len(ys) > 1 else 0.0,
            seeds=len(ys),
            schedule=schedule,
            values=tuple(ys),
            collapsed=len(rules),
            rules=tuple(sorted(set(rules))),
        )
        (found.baselines if point.baseline else found.points).append(point)
    order = lambda p: (p.method, p.schedule, str(p.dataset), str(p.backbone), p.x or 0.0)  # noqa: E731
    found.points.sort(key=order)
    found.baselines.sort(key=order)
    return found
