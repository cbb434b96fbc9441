"""Accuracy against cost: one line per method on a log axis (mean over seeds, spread as error bars),
the Pareto front marked, random init drawn as the zero-budget level."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from budgetssl.analysis.aggregate import Aggregate, Point  # noqa: E402
from budgetssl.analysis.frontier import pareto_front  # noqa: E402
from budgetssl.record.files import atomic_write  # noqa: E402

LABELS = {
    "miou": "mIoU (%)",
    "miou_objects": "mIoU over the object classes (%)",
    "probe_miou": "probe mIoU (%, frozen backbone, linear head)",
    "pixel_accuracy": "pixel accuracy (%)",
    "co2_kg": "CO2 (kg, measured)",
    "total_co2_kg": "CO2 (kg, measured, pretraining + transfer)",
    "co2_kg_estimated": "CO2 (kg, estimated)",
    "energy_kwh": "energy (kWh, measured)",
}


def _label(field: str) -> str:
    return LABELS.get(field, field.replace("_", " ") + (" (fma=2)" if "flops" in field else ""))


def _draw(ax: Any, points: list[Point], baselines: list[Point], colours: dict[str, Any]) -> bool:
    lines: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        lines[p.method].append(p)
    for method, line in sorted(lines.items()):
        line.sort(key=lambda p: p.x)  # type: ignore[arg-type,return-value]
        ax.errorbar(
            [p.x for p in line],
            [p.y for p in line],
            yerr=[p.spread for p in line] if any(p.seeds > 1 for p in line) else None,
            marker="o",
            capsize=3,
            color=colours[method],
            label=method,
        )
    placed = [b for b in baselines if b.x is not None]
    front = pareto_front(points + placed)
    if front:
        ax.step([p.x for p in front], [p.y for p in front], where="post", color="black", lw=1, alpha=0.6)
        ax.scatter([p.x for p in front], [p.y for p in front], s=140, facecolors="none", edgecolors="black",
                   label="Pareto front", zorder=3)  # fmt: skip
    for b in sorted(baselines, key=lambda b: str(b.backbone)):
        ax.axhline(b.y, color="grey", linestyle="--", label=f"random init {b.backbone} ({b.y:.1f})")
    if placed:
        ax.scatter([p.x for p in placed], [p.y for p in placed], marker="s", color="grey", zorder=3)
    ax.set_xscale("log")
    xs = [p.x for p in points + placed if p.x is not None]
    if xs and max(xs) / min(xs) < 10:  # widen to whole decades, or the axis labels only minor ticks
        ax.set_xlim(10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs)) + 1e-9))
    ax.grid(True, which="both", alpha=0.3)
    return bool(points or baselines)


def _colours(found: Aggregate) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({p.method for p in found.points})
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out


def plot_points(found: Aggregate, out: Path, title: str = "") -> Path:
    """Draw the aggregate's `y` against its `x`; refuse an empty figure."""
    x, y = found.x, found.y
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if not _draw(ax, found.points, found.baselines, _colours(found)):
        plt.close(fig)
        raise ValueError(f"no completed run has both '{x}' and '{y}' to plot")
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(title or f"{_label(y)} vs {_label(x)}")
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_facets(found: Aggregate, out: Path, title: str = "") -> Path:
    """One panel per pretraining dataset (rows) and backbone (columns); random init by backbone."""
    x, y = found.x, found.y
    datasets = sorted({p.dataset for p in found.points if p.dataset is not None})
    backbones = sorted({p.backbone for p in found.points + found.baselines if p.backbone is not None})
    if not datasets or not backbones:
        raise ValueError(f"no pretrained run has both '{x}' and '{y}' to plot by dataset and backbone")
    colours = _colours(found)
    fig, axes = plt.subplots(
        len(datasets), len(backbones), figsize=(4.2 * len(backbones), 3.2 * len(datasets)), squeeze=False
    )
    for i, dataset in enumerate(datasets):
        for j, backbone in enumerate(backbones):
            ax = axes[i][j]
            panel = [p for p in found.points if p.backbone == backbone and p.dataset == dataset]
            _draw(ax, panel, [b for b in found.baselines if b.backbone == backbone], colours)
            ax.set_title(f"{dataset} / {backbone}", fontsize=9)
            ax.set_xlabel(_label(x), fontsize=8)
            ax.set_ylabel(_label(y), fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(title or f"{_label(y)} vs {_label(x)}, by pretraining dataset and backbone")
    return _save(fig, out)
