"""Collapsed runs in the report: each run's verdict (analysis/verdict.py reads it from the record), the one
rule that says which points the verdicts leave out, and how a collapsed run is marked in tables and listed
in the findings.

The rule for a point of several seeds (chosen here, stated in the report and the README): a point -- one
(method, dataset, backbone, schedule, budget) -- is collapsed when ANY of its seeds is. Its mean stays
the mean over all its seeds (what was measured), it is drawn and tabled with its mark, and it is left out
of the Pareto front, the best method per budget, the crossings of a small and a large backbone, the
scaling fits, and the seeds' noise pooled for their ties: a verdict must never rest on a run that did
not learn, and keeping a method's surviving seeds alone would report it better than it is.
`--include-collapsed` puts the collapsed points back into every verdict (still marked).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from budgetssl.analysis.aggregate import Aggregate, Point
from budgetssl.analysis.collect import Run
from budgetssl.analysis.verdict import FIELD, collapse_of
from budgetssl.record.sections import Record

UNLEARNED = "did not learn"  # the mark of a point analysis/learning.py judges unlearned


def check(runs: Sequence[Run]) -> None:
    """Every run's verdict reads; else a ValueError naming the run's summary.json."""
    for run in runs:
        try:
            collapse_of(run.record)
        except ValueError as e:
            raise ValueError(f"{run.folder / 'summary.json'}: {e}") from None


def is_collapsed(p: Point) -> bool:
    """THE rule: a point is collapsed when any of its seeds is (the module's docstring says why)."""
    return p.collapsed > 0


def kept(
    points: Iterable[Point], include_collapsed: bool = False, include_unlearned: bool = False
) -> list[Point]:
    """The points a verdict may use: the uncollapsed ones (all with `include_collapsed`) whose configuration
    the report does not judge unlearned (analysis/learning.py; all with `include_unlearned`)."""
    return [
        p for p in points
        if (include_collapsed or not is_collapsed(p)) and (include_unlearned or not p.unlearned)
    ]  # fmt: skip


def pooled(found: Aggregate, include_collapsed: bool = False) -> list[Point]:
    """The points whose seeds the ties' noise pools: those the verdicts use (baselines included)."""
    kept_ = judged(found, include_collapsed)
    return kept_.points + kept_.baselines


def judged(found: Aggregate, include_collapsed: bool = False, include_unlearned: bool = False) -> Aggregate:
    """The aggregate every verdict reads (front, best per budget, crossings, fits, the ties' noise)."""
    return dataclasses.replace(
        found,
        points=kept(found.points, include_collapsed, include_unlearned),
        baselines=kept(found.baselines, include_collapsed, include_unlearned),
    )


def note(p: Point) -> str:
    """'' or what marks the point: `collapsed: rank_ratio` / `collapsed in 1 of 3 seeds: rank_ratio` (first
    rules that fired) and/or `did not learn` (the report's judgement, analysis/learning.py)."""
    parts = []
    if is_collapsed(p):
        seeds = "" if p.collapsed == p.seeds else f" in {p.collapsed} of {p.seeds} seeds"
        parts.append(f"collapsed{seeds}: {', '.join(p.rules)}")
    if p.unlearned:
        parts.append(UNLEARNED)
    return "; ".join(parts)


def mark(label: str, points: Sequence[Point]) -> str:
    """A method's name as a verdict's table prints it: `byol (collapsed: rank_ratio)` where the verdict
    rests on a collapsed point, `simclr (did not learn)` on one judged unlearned (only with the
    `--include-*` options), else the name alone."""
    flagged = [p for p in points if is_collapsed(p)]
    marks = []
    if len(points) == 1 and (flagged or points[0].unlearned):
        return f"{label} ({note(points[0])})"
    if flagged:
        rules = sorted({r for p in flagged for r in p.rules})
        at = ", ".join(f"{p.budget:.3g}" for p in sorted(flagged, key=lambda p: p.budget))
        marks.append(f"collapsed at {at}: {', '.join(rules)}")
    if any(p.unlearned for p in points):
        marks.append(UNLEARNED)
    return f"{label} ({'; '.join(marks)})" if marks else label


RULE_TEXT = (
    "A point (method, dataset, backbone, schedule, budget) is marked collapsed when any of its seeds is; "
    "its mean stays over all its seeds"
)


def section(runs: Sequence[Run], include_collapsed: bool) -> list[str]:
    """The findings' list of collapsed runs, each with its rule and values, and what the report does with
    them."""
    lines = ["### Collapsed runs", ""]
    flagged = [(run, c) for run in runs if (c := collapse_of(run.record)) is not None]
    if not any(FIELD in run.record.to_json() for run in runs):
        return lines + [
            f"No record carries a verdict (`{FIELD}`: written before it existed): none is marked or left "
            "out.",
            "",
        ]
    if not flagged:
        return lines + [f"No run is marked collapsed ({len(runs)} verdict(s) read).", ""]
    where = (
        "they stay in every verdict, marked, because of `--include-collapsed`"
        if include_collapsed
        else "such points are drawn (marked ✕) and tabled but left out of the Pareto front, the best method "
        "per budget, the crossings, the scaling fits and the noise pooled for their ties "
        "(`--include-collapsed` puts them back)"
    )
    lines += [f"{RULE_TEXT}; {where}.", ""]
    for run, c in sorted(flagged, key=lambda rc: _order(rc[0].record)):
        i = run.record.identity
        budget = float(i.budget_flops or 0)
        lines.append(
            f"- {i.method} / {i.dataset or '-'} / {i.backbone or '-'} at {budget:.3g} FLOPs, seed "
            f"{'-' if i.seed is None else i.seed} (`{run.folder}`): {c.describe()}"
        )
    return lines + [""]


def _order(record: Record) -> tuple:
    i = record.identity
    return (str(i.method), str(i.dataset), str(i.backbone), float(i.budget_flops or 0), str(i.seed))
