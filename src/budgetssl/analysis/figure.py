"""Accuracy against cost: one line per method on a log axis, random init as the zero-budget line."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from budgetssl.record.files import atomic_write  # noqa: E402

BASELINE = "random_init"


def plot_runs(runs: list[dict[str, Any]], x: str, y: str, out: Path, title: str = "") -> Path:
    """Draw `y` against `x` for every run that has both; refuse an empty figure."""
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    baselines = []
    for run in runs:
        if run.get(y) is None:
            continue
        if run.get("method") == BASELINE:
            baselines.append(float(run[y]))
        elif run.get(x) is not None and float(run[x]) > 0:
            lines[str(run.get("method"))].append((float(run[x]), float(run[y])))
    if not lines and not baselines:
        raise ValueError(f"no completed run has both '{x}' and '{y}' to plot")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    if baselines:
        level = sum(baselines) / len(baselines)
        ax.axhline(level, color="grey", linestyle="--", label=f"random init ({level:.1f})")
    ax.set_xscale("log")
    xs = [p[0] for points in lines.values() for p in points]
    if xs and max(xs) / min(xs) < 10:  # widen to whole decades, or the axis labels only minor ticks
        ax.set_xlim(10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs)) + 1e-9))
    ax.set_xlabel(x.replace("_", " ") + (" (fma=2)" if "flops" in x else ""))
    names = {"miou": "mIoU (%)", "pixel_accuracy": "pixel accuracy (%)"}
    ax.set_ylabel(names.get(y, y.replace("_", " ")))
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out
