"""Runs grouped by what they varied (method, dataset, backbone, budget); seeds averaged, spread kept."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

BASELINE = "random_init"
GROUP = ("method", "dataset", "backbone", "budget_flops")


@dataclass(frozen=True)
class Point:
    """One configuration: the mean of `x` and `y` over its seeds, and the spread (std) of `y`."""

    method: str
    dataset: str | None
    backbone: str | None
    budget: float
    x: float
    y: float
    spread: float
    seeds: int


def _value(run: dict[str, Any], key: str) -> float | None:
    value = run.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def points(runs: list[dict[str, Any]], x: str, y: str, baseline: bool = False) -> list[Point]:
    """Mean over seeds of every configuration that has both fields (x > 0: the axis is logarithmic);
    the random-init runs only when `baseline` (they cost their transfer alone)."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        xv, yv = _value(run, x), _value(run, y)
        if xv is None or yv is None or xv <= 0 or (run.get("method") == BASELINE) != baseline:
            continue
        groups[tuple(run.get(k) for k in GROUP)].append((xv, yv))
    out = []
    for (method, dataset, backbone, budget), values in groups.items():
        ys = [v[1] for v in values]
        out.append(
            Point(
                method=str(method),
                dataset=dataset,
                backbone=backbone,
                budget=float(budget or 0),
                x=statistics.fmean(v[0] for v in values),
                y=statistics.fmean(ys),
                spread=statistics.stdev(ys) if len(ys) > 1 else 0.0,
                seeds=len(ys),
            )
        )
    return sorted(out, key=lambda p: (p.method, str(p.dataset), str(p.backbone), p.x))


def baselines(runs: list[dict[str, Any]], y: str) -> dict[str | None, tuple[float, float, int]]:
    """Random-init score per backbone: (mean, std, seeds). It has no pretraining dataset."""
    found: dict[str | None, list[float]] = defaultdict(list)
    for run in runs:
        yv = _value(run, y)
        if run.get("method") == BASELINE and yv is not None:
            found[run.get("backbone")].append(yv)
    return {
        b: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for b, v in found.items()
    }
