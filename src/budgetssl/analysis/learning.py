"""Whether each method learned, in the chosen metric: the findings that name a method whose mean score is
below random init's beyond the seeds' noise, and a method whose mean falls with budget beyond the noise
(a budget whose mean is below the previous budget's). Both use the ties' rule (analysis/noise.py), so a
difference within the noise is never named. Collapsed points are judged too, and marked.

The mark (chosen here, stated in the report and the README): a configuration (method, dataset, backbone,
schedule) *did not learn* in the report's metric when, at its largest budget, its mean does not beat its
backbone's random init beyond the seeds' noise, or when its mean falls with budget beyond the noise
anywhere on its curve. Pretraining that buys nothing over random init at the most compute it was given,
or loses what it had with more, is no verdict on the method's worth at that budget: like a collapsed run
(analysis/collapse.py) its points are tabled and drawn with their mark but left out of the Pareto front,
the best method per budget, the crossings and the fits (`--include-unlearned` puts them back). The
monitors' verdict is per run and label-free; this one needs random init and the labels, so it lives in
the report. Smaller budgets below random init are not marked by themselves: a method still learning at
a small budget is what the study measures."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

from budgetssl.analysis.aggregate import Aggregate, Point
from budgetssl.analysis.collapse import UNLEARNED, is_collapsed, note
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


def _curves(points: list[Point]) -> dict[tuple, list[Point]]:
    curves: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        curves[p.config].append(p)
    return {config: sorted(curve, key=lambda p: p.budget) for config, curve in curves.items()}


def unlearned(points: list[Point], baselines: list[Point], noise: Noise) -> dict[tuple, str]:
    """Each configuration the module's rule judges unlearned, with why (its numbers)."""
    falls = _by_config(falls_with_budget(points, noise))
    why: dict[tuple, str] = {}
    for config, curve in _curves(points).items():
        top, reasons = curve[-1], []
        b = _baseline_for(top, baselines)
        if b is not None and (top.y <= b.y or noise.tied(top, b)):
            reasons.append(
                f"not above random init beyond the seeds' noise at its largest budget, {top.budget:.3g} "
                f"FLOPs ({top.y:.2f} against {b.y:.2f}, noise margin {noise.margin(top, b):.2f})"
            )
        found = falls.get((top.label, top.dataset, top.backbone), [])
        found = [s for s in found if s.point.config == config]
        if found:
            reasons.append(
                "falls with budget beyond the seeds' noise at "
                + "; ".join(
                    f"{s.point.budget:.3g} FLOPs ({s.point.y:.2f} against {s.reference.y:.2f})" for s in found
                )  # fmt: skip
            )
        if reasons:
            why[config] = "; ".join(reasons)
    return why


def mark_unlearned(found: Aggregate, noise: Noise) -> Aggregate:
    """`found` with every point of an unlearned configuration carrying why (Point.unlearned)."""
    why = unlearned(found.points, found.baselines, noise)
    return dataclasses.replace(
        found, points=[dataclasses.replace(p, unlearned=why.get(p.config, "")) for p in found.points]
    )


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


def section(
    points: list[Point], baselines: list[Point], noise: Noise, label: str, include_unlearned: bool = False
) -> list[str]:
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
    return lines + [""] + unlearned_section(points, label, include_unlearned)


def unlearned_section(points: list[Point], label: str, include_unlearned: bool = False) -> list[str]:
    """The methods marked `did not learn` (Point.unlearned), each with why, and what the report does with
    them; nothing where none is."""
    marked = {(p.label, p.dataset, p.backbone): p.unlearned for p in points if p.unlearned}
    if not marked:
        return []
    where = (
        "they stay in every verdict, marked, because of `--include-unlearned`"
        if include_unlearned
        else "tabled and drawn (marked +) with the mark, left out of the Pareto front, the best method per "
        "budget, the crossings and the fits (`--include-unlearned` puts them back)"
    )
    lines = [f"### Methods that did not learn ({label})", ""]
    lines += [
        f"Marked `{UNLEARNED}`: a configuration whose mean {label} at its largest budget does not beat "
        f"random init beyond the seeds' noise, or falls with budget beyond it; {where}.",
        "",
    ]
    lines += [
        f"- {name} / {dataset or '-'} / {backbone or '-'}: {why}"
        for (name, dataset, backbone), why in sorted(marked.items(), key=lambda kv: str(kv[0]))
    ]
    return lines + [""]
