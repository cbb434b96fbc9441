"""The study's findings, computed: the Pareto front of accuracy against cost, and where the curves of a
small and a large backbone cross."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from budgetssl.analysis.aggregate import Point


def pareto_front(pts: list[Point]) -> list[Point]:
    """Points no other point beats on both cost (lower x) and score (higher y), cheapest first."""
    front: list[Point] = []
    for p in sorted(pts, key=lambda p: (p.x, -p.y)):
        if not front or p.y > front[-1].y:
            front.append(p)
    return front


def best_per_budget(pts: list[Point]) -> dict[float, Point]:
    """For each budget asked for, the configuration that scored highest."""
    best: dict[float, Point] = {}
    for p in pts:
        if p.budget not in best or p.y > best[p.budget].y:
            best[p.budget] = p
    return dict(sorted(best.items()))


@dataclass(frozen=True)
class Crossing:
    method: str
    dataset: str | None
    small: str
    large: str
    flops: float | None  # where the large backbone's curve overtakes the small one's; None if not seen
    note: str


def _crossing(small: list[Point], large: list[Point]) -> tuple[float | None, str]:
    """Both curves linear in log(x) between their points; the first x where large - small turns >= 0."""
    lo, hi = max(small[0].x, large[0].x), min(small[-1].x, large[-1].x)
    if lo >= hi:
        return None, "the two curves share no range of FLOPs"
    xs = sorted({p.x for p in small + large if lo <= p.x <= hi} | {lo, hi})

    def at(curve: list[Point], x: float) -> float:
        for a, b in zip(curve, curve[1:], strict=False):
            if a.x <= x <= b.x:
                t = 0.0 if b.x == a.x else (math.log(x) - math.log(a.x)) / (math.log(b.x) - math.log(a.x))
                return a.y + t * (b.y - a.y)
        return curve[-1].y

    gaps = [at(large, x) - at(small, x) for x in xs]
    if gaps[0] >= 0:
        return None, "the large backbone is ahead over the whole range"
    for (x0, g0), (x1, g1) in zip(
        zip(xs, gaps, strict=True), zip(xs[1:], gaps[1:], strict=True), strict=False
    ):
        if g0 < 0 <= g1:
            t = -g0 / (g1 - g0)
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0))), "crosses"
    return None, "the small backbone is ahead over the whole range"


def crossings(pts: list[Point], params: dict[str, float]) -> list[Crossing]:
    """For each method and dataset run on two or more backbones, the smallest vs the largest."""
    curves: dict[tuple[str, str | None], dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for p in pts:
        if p.backbone is not None:
            curves[(p.method, p.dataset)][p.backbone].append(p)
    out = []
    for (method, dataset), by_backbone in sorted(curves.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if len(by_backbone) < 2:
            continue
        ranked = sorted(by_backbone, key=lambda b: params.get(b, 0.0))
        small, large = ranked[0], ranked[-1]
        a, b = sorted(by_backbone[small], key=lambda p: p.x), sorted(by_backbone[large], key=lambda p: p.x)
        flops, note = _crossing(a, b) if len(a) > 1 and len(b) > 1 else (None, "needs two budgets each")
        out.append(Crossing(method, dataset, small, large, flops, note))
    return out
