"""The study's findings, computed: the Pareto front of accuracy against cost, the best method at each
budget, and where the curves of a small and a large backbone cross -- each, given the seeds' noise
(analysis/noise.py), with the points it cannot tell apart listed as ties."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from budgetssl.analysis.aggregate import Point
from budgetssl.analysis.collapse import mark
from budgetssl.analysis.noise import Noise


def pareto_front(pts: list[Point], noise: Noise | None = None) -> list[Point]:
    """Points no other point beats on both cost (lower or equal x) and score, cheapest first.

    Without `noise`, on the means alone. With it, a point leaves the front only when a point no costlier
    scores higher beyond the noise: a point within noise of a front point stays, as its tie."""
    ordered = sorted(pts, key=lambda p: (p.x, -p.y))
    if noise is None:
        front: list[Point] = []
        for p in ordered:
            if not front or p.y > front[-1].y:
                front.append(p)
        return front
    return [
        p
        for p in ordered
        if not any(q is not p and q.x <= p.x and q.y > p.y and not noise.tied(p, q) for q in pts)
    ]


def ties(p: Point, among: list[Point], noise: Noise) -> list[Point]:
    """The points of `among` (other than `p`) that `p` cannot be told apart from."""
    return [q for q in among if q is not p and noise.tied(p, q)]


def best_per_budget(pts: list[Point], noise: Noise | None = None) -> dict[float, list[Point]]:
    """For each budget asked for, the configuration that scored highest first, then every configuration
    tied with it (highest first); without `noise`, the best alone."""
    by_budget: dict[float, list[Point]] = defaultdict(list)
    for p in pts:
        by_budget[p.budget].append(p)
    out = {}
    for budget, group in sorted(by_budget.items()):
        group = sorted(group, key=lambda p: -p.y)
        out[budget] = [group[0]] + (ties(group[0], group, noise) if noise is not None else [])
    return out


@dataclass(frozen=True)
class Crossing:
    method: str  # the label: `mae`, `mae (wsd)` (marked where a point compared is collapsed)
    dataset: str | None
    small: str
    large: str
    flops: float | None  # where the large backbone's curve overtakes the small one's; None if not seen
    note: str
    verdict: str = ""  # whether the seeds' noise lets the crossing be told apart from a tie
    single_seed: bool = field(default=False)  # a budget compared rests on one seed of either backbone


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


def _verdict(small: list[Point], large: list[Point], noise: Noise) -> tuple[str, bool]:
    """At each budget both backbones ran: which is ahead beyond the noise. A crossing stands only where
    the small one is ahead beyond noise at a lower budget and the large one at a higher budget."""
    at_small = {p.budget: p for p in small}
    shared = [(at_small[p.budget], p) for p in large if p.budget in at_small]
    if not shared:
        return "no budget run on both backbones: noise not judged", False
    signs = {}
    for s, g in sorted(shared, key=lambda pair: pair[0].budget):
        signs[s.budget] = 0 if noise.tied(s, g) else (1 if g.y > s.y else -1)
    single = any(s.seeds == 1 or g.seeds == 1 for s, g in shared)
    small_ahead = [b for b, v in signs.items() if v < 0]
    large_ahead = [b for b, v in signs.items() if v > 0]
    tied = [b for b, v in signs.items() if v == 0]
    if small_ahead and large_ahead and min(small_ahead) < max(large_ahead):
        verdict = (
            f"beyond noise: small ahead at {min(small_ahead):.3g}, large ahead at {max(large_ahead):.3g}"
        )
    else:
        parts = [f"small ahead at {', '.join(f'{b:.3g}' for b in small_ahead)}"] if small_ahead else []
        parts += [f"large ahead at {', '.join(f'{b:.3g}' for b in large_ahead)}"] if large_ahead else []
        parts += [f"tied at {', '.join(f'{b:.3g}' for b in tied)}"] if tied else []
        verdict = "within noise: no crossing the seeds can tell apart (" + "; ".join(parts) + ")"
    return verdict, single


def crossings(pts: list[Point], params: dict[str, float], noise: Noise | None = None) -> list[Crossing]:
    """For each method, schedule and dataset run on two or more backbones, the smallest vs the largest;
    with `noise`, whether the seeds let the crossing be told apart from a tie."""
    curves: dict[tuple[str, str | None], dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for p in pts:
        if p.backbone is not None:
            curves[(p.label, p.dataset)][p.backbone].append(p)
    out = []
    for (label, dataset), by_backbone in sorted(curves.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if len(by_backbone) < 2:
            continue
        ranked = sorted(by_backbone, key=lambda b: params.get(b, 0.0))
        small, large = ranked[0], ranked[-1]
        a, b = sorted(by_backbone[small], key=lambda p: p.x), sorted(by_backbone[large], key=lambda p: p.x)
        flops, note = _crossing(a, b) if len(a) > 1 and len(b) > 1 else (None, "needs two budgets each")
        verdict, single = _verdict(a, b, noise) if noise is not None else ("", False)
        out.append(Crossing(mark(label, a + b), dataset, small, large, flops, note, verdict, single))
    return out
