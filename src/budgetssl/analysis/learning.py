"""Whether each method learned, in the chosen metric: the findings that name a method whose mean score is
below random init's beyond the seeds' noise, and a method whose mean falls with budget beyond the noise
(a budget whose mean is below the previous budget's). Both use the ties' rule (analysis/noise.py), so a
difference within the noise is never named. Collapsed points are judged too, and marked: these findings
say what was measured, they rank nothing."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from budgetssl.analysis.aggregate import Point
from budgetssl.analysis.collapse import is_collapsed, note
from budgetssl.analysis.noise import Noise


@dataclass(frozen=True)
class Shortfall:
    """`point` scores below `reference` beyond the noise's `margin` (K standard errors of the difference)."""

    point: Point
    reference: Point
    margin: float

    @property
    def gap(self) -> float:
        return self.reference.y - self.point.y


def _beyond(p: Point, ref: Point, noise: Noise) -> Shortfall | None:
    if p.y < ref.y and not noise.tied(p, ref):
        return Shortfall(p, ref, noise.margin(p, ref))
    return None


def _baseline_for(p: Point, baselines: list[Point]) -> Point | None:
    """Random init on the same backbone (the same dataset first, where random init names one)."""
    same = [b for b in baselines if b.backbone == p.backbone]
    return next((b for b in same if b.dataset == p.dataset), same[0] if same else None)


def below_random_init(points: list[Point], baselines: list[Point], noise: Noise) -> list[Shortfall]:
    """Every pretrained point whose mean is below its backbone's random init beyond the noise."""
    found = []
    for p in points:
        b = _baseline_for(p, baselines)
        short = _beyond(p, b, noise) if b is not None else None
        if short is not None:
            found.append(short)
    return found


def falls_with_budget(points: list[Point], noise: Noise) -> list[Shortfall]:
    """Every point whose mean is below the same configuration's at the previous (smaller) budget beyond
    the noise."""
    curves: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        curves[p.config].append(p)
    found = []
    for curve in curves.values():
        curve = sorted(curve, key=lambda p: p.budget)
        for prev, p in zip(curve, curve[1:], strict=False):
            short = _beyond(p, prev, noise)
            if short is not None:
                found.append(short)
    return found


def _by_config(found: list[Shortfall]) -> dict[tuple, list[Shortfall]]:
    out: dict[tuple, list[Shortfall]] = defaultdict(list)
    for s in sorted(found, key=lambda s: (s.point.label, str(s.point.dataset), str(s.point.backbone),
                                          s.point.budget)):  # fmt: skip
        out[(s.point.label, s.point.dataset, s.point.backbone)].append(s)
    return out


def _at(s: Shortfall, against: str) -> str:
    p, ref = s.point, s.reference
    mark = f"; {note(p)}" if is_collapsed(p) else ""
    seeds = "; 1 seed" if p.seeds == 1 or ref.seeds == 1 else ""
    return (
        f"{p.budget:.3g} FLOPs ({p.y:.2f} against {against} {ref.y:.2f}: {s.gap:.2f} below, noise margin "
        f"{s.margin:.2f}{seeds}{mark})"
    )


def section(points: list[Point], baselines: list[Point], noise: Noise, label: str) -> list[str]:
    """The findings' lines: each method below random init, and each whose score falls with budget, at
    every budget where it does; `none` where none does."""
    lines = [f"### Methods that do not beat random init, or lose {label} with budget", ""]
    if not baselines:
        lines.append(f"- below random init: not judged, no random-init run has a {label}")
    else:
        below = _by_config(below_random_init(points, baselines, noise))
        lines += [
            f"- {name} / {dataset or '-'} / {backbone or '-'} is below random init beyond the seeds' noise "
            "at " + "; ".join(_at(s, "random init") for s in found)
            for (name, dataset, backbone), found in below.items()
        ] or [f"- no method's mean {label} is below random init's beyond the seeds' noise"]
    falls = _by_config(falls_with_budget(points, noise))
    lines += [
        f"- {name} / {dataset or '-'} / {backbone or '-'} falls with budget beyond the seeds' noise at "
        + "; ".join(_at(s, f"{s.reference.budget:.3g} FLOPs'") for s in found)
        for (name, dataset, backbone), found in falls.items()
    ] or [f"- no method's mean {label} falls with budget beyond the seeds' noise"]
    return lines + [""]
