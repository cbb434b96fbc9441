"""The README's demo table from the demo's run records: `python scripts/demo_table.py results/demo/runs`.

One row per method and budget (random init first): mean ± std over seeds of the fine-tuned mIoU, the
frozen probe's mIoU, k-NN and linear accuracy; how many seeds the collapse verdict flagged, with the rules
that fired first; and the scores on which the report marks the method `did not learn` (analysis/learning.py),
judged as budgetssl-report judges them (the same aggregate, noise and rule), so the table is the reports'.
"""

from __future__ import annotations

import sys
from pathlib import Path

from budgetssl.analysis import collapse, learning
from budgetssl.analysis.aggregate import Point, aggregate
from budgetssl.analysis.collect import collect
from budgetssl.analysis.noise import noise_of

METRICS = {"miou": "fine-tuned mIoU", "probe_miou": "probe mIoU", "knn_accuracy": "k-NN %"}
METRICS["linear_accuracy"] = "linear %"
SHORT = {"miou": "fine-tuned", "probe_miou": "probe", "knn_accuracy": "k-NN", "linear_accuracy": "linear"}


def cell(p: Point | None) -> str:
    return "-" if p is None else f"{p.y:.2f} ± {p.spread:.2f}"


def main(root: Path) -> None:
    records = [run.record for run in collect(root).runs]
    by_metric = {}
    for metric in METRICS:
        found = aggregate(records, "total_flops", metric)
        by_metric[metric] = learning.mark_unlearned(found, noise_of(collapse.pooled(found)))
    first = by_metric["miou"]
    order = sorted({(p.method, p.budget) for p in first.points}, key=lambda k: (-_best(first, k[0]), k[1]))
    header = ["method", "budget", *METRICS.values(), "collapsed (seeds: rule)", "did not learn"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    baselines = [next(iter(by_metric[m].baselines), None) for m in METRICS]
    print(f"| random_init | - | {' | '.join(cell(b) for b in baselines)} | 0/{baselines[0].seeds} | - |")
    for method, budget in order:
        points = [
            next((p for p in by_metric[m].points if (p.method, p.budget) == (method, budget)), None)
            for m in METRICS
        ]
        p = points[0]
        rules = f": {', '.join(p.rules)}" if p.collapsed else ""
        unlearned = [SHORT[m] for m, q in zip(METRICS, points, strict=True) if q is not None and q.unlearned]
        print(
            f"| {method} | {budget:.2g} | {' | '.join(cell(q) for q in points)} | "
            f"{p.collapsed}/{p.seeds}{rules} | {', '.join(unlearned) or '-'} |"
        )


def _best(found, method: str) -> float:
    """Methods ordered by their score at their largest budget (the fine-tuned mIoU), best first."""
    return max((p for p in found.points if p.method == method), key=lambda p: p.budget).y


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/demo/runs"))
