"""A markdown table of runs: what was trained, what it cost, what it scored."""

from __future__ import annotations

from typing import Any

from budgetssl.analysis.aggregate import BASELINE, Point
from budgetssl.analysis.collapse import mark, note
from budgetssl.analysis.frontier import Crossing, ties
from budgetssl.analysis.noise import Noise
from budgetssl.record.sections import Record

COLUMNS = [
    ("method", "method"),
    ("dataset", "dataset"),
    ("backbone", "backbone"),
    ("recipe.optimizer", "optimizer"),
    ("recipe.lr", "lr (scaled)"),
    ("budget_flops", "budget (FLOPs)"),
    ("train_flops", "train FLOPs"),
    ("transfer_flops", "transfer FLOPs"),
    ("energy_kwh", "kWh (measured)"),
    ("co2_kg", "CO2 kg (measured)"),
    ("co2_kg_estimated", "CO2 kg (estimated)"),
    ("miou", "mIoU %"),
    ("miou_objects", "objects mIoU %"),
    ("probe_miou", "probe mIoU %"),
    ("knn_accuracy", "k-NN acc %"),
    ("linear_accuracy", "linear acc %"),
    ("collapse.rule", "collapsed"),  # the first rule that fired (analysis/collapse.py), `-` where none
]
# The metrics a report can rank by: the fine-tuned mIoU, the same without the background class, the
# frozen backbone's linear probe (transfer.probe=true), and the frozen backbone's classification scores
# on the labelled held-out split (weighted k-NN and a linear classifier).
METRICS = {
    "miou": "mIoU",
    "miou_objects": "objects mIoU",
    "probe_miou": "probe mIoU",
    "knn_accuracy": "k-NN accuracy",
    "linear_accuracy": "linear accuracy",
}


# A random init has no pretraining: its budget, cost and recipe are empty, not zero.
PRETRAINING_ONLY = {"dataset", "recipe.optimizer", "recipe.lr", "budget_flops", "train_flops"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1e5:
        return f"{value:.3g}"
    if isinstance(value, float) and value != 0 and abs(value) < 1e-2:
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def sort_key(record: Record) -> tuple:
    i = record.identity
    return (str(i.method), str(i.backbone), float(i.budget_flops or 0))


def cell(record: Record, key: str) -> str:
    if key in PRETRAINING_ONLY and record.identity.method == BASELINE:
        return "-"
    return _cell(record.value(key))


def markdown_table(records: list[Record], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """One row per run; `columns`: (record key, title) pairs (budgetssl-report --verify adds one)."""
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(cell(r, k) for k, _ in columns) + " |" for r in sorted(records, key=sort_key)]
    return "\n".join([head, rule, *rows])


def _flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _text(value: str | None) -> str:
    return "-" if value is None else str(value)


def _budget(p: Point) -> str:
    return "-" if p.baseline else _flops(p.budget)


def point_name(p: Point) -> str:
    """A point in a list of ties: `mae/vit_small@1e+12` (random init: `random_init/vit_small`)."""
    return f"{p.label}/{_text(p.backbone)}" + ("" if p.baseline else f"@{_budget(p)}")


def summary_table(pts: list[Point], y: str = "miou") -> str:
    """One row per configuration: the mean over seeds, with the spread where there are several, and
    its marks: collapsed (any seed: analysis/collapse.py), did not learn (analysis/learning.py)."""
    rows = [
        "| method | dataset | backbone | budget (FLOPs) | seeds | " + y + " mean | std | marked |",
        "|---" * 8 + "|",
    ]
    for p in sorted(pts, key=lambda p: (str(p.dataset), str(p.backbone), p.budget, -p.y)):
        spread = f"{p.spread:.2f}" if p.seeds > 1 else "-"
        rows.append(
            f"| {p.label} | {_text(p.dataset)} | {_text(p.backbone)} | {_flops(p.budget)} | {p.seeds} "
            f"| {p.y:.2f} | {spread} | {note(p) or '-'} |"
        )
    return "\n".join(rows)


def front_table(front: list[Point], best: dict[float, list[Point]], label: str = "mIoU",
                noise: Noise | None = None) -> str:  # fmt: skip
    """The front (with `noise`: every point not beaten beyond it, each with the front points it ties
    with) and the best configuration at each budget followed by the ones tied with it; each row says
    its seeds and warns where a verdict rests on one."""
    rows = [
        f"| on the Pareto front | dataset | backbone | budget (FLOPs) | total FLOPs | {label} | seeds "
        "| ties and warnings |",
        "|---" * 8 + "|",
    ]
    for p in front:
        tied = ties(p, front, noise) if noise is not None else []
        notes = ["tied with " + ", ".join(point_name(q) for q in tied)] if tied else []
        notes += ["1 seed"] if p.seeds == 1 else []
        rows.append(
            f"| {mark(p.label, [p])} | {_text(p.dataset)} | {_text(p.backbone)} | {_budget(p)} "
            f"| {_flops(p.x)} | {p.y:.2f} | {p.seeds} | {'; '.join(notes) or '-'} |"
        )
    rows += [
        "",
        f"| budget (FLOPs) | best method | dataset | backbone | {label} | seeds | verdict |",
        "|---" * 7 + "|",
    ]
    for budget, (top, *tied) in best.items():
        single = any(p.seeds == 1 for p in (top, *tied))
        verdict = f"best, tied with {len(tied)} other(s)" if tied else "best"
        verdict += " (rests on one seed)" if single else ""
        rows.append(
            f"| {_flops(budget)} | {mark(top.label, [top])} | {_text(top.dataset)} | {_text(top.backbone)} "
            f"| {top.y:.2f} | {top.seeds} | {verdict} |"
        )
        rows += [
            f"| {_flops(budget)} | {mark(p.label, [p])} | {_text(p.dataset)} | {_text(p.backbone)} "
            f"| {p.y:.2f} | {p.seeds} | tied with the best" + ("; 1 seed" if p.seeds == 1 else "") + " |"
            for p in tied
        ]
    return "\n".join(rows)


def crossing_table(found: list[Crossing]) -> str:
    rows = [
        "| method | dataset | small | large | large overtakes small at (FLOPs) | given the seeds' noise |",
        "|---" * 6 + "|",
    ]
    rows += [
        f"| {c.method} | {c.dataset} | {c.small} | {c.large} | {_flops(c.flops) if c.flops else c.note} "
        f"| {(c.verdict or '-') + (' (rests on one seed)' if c.single_seed else '')} |"
        for c in found
    ]
    return "\n".join(rows)
