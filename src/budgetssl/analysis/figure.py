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

from budgetssl.analysis.aggregate import Point, baselines, points  # noqa: E402
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


def _draw(ax: Any, runs: list[dict[str, Any]], x: str, y: str, colours: dict[str, Any]) -> bool:
    pts = points(runs, x, y)
    lines: dict[str, list[Point]] = defaultdict(list)
    for p in pts:
        lines[p.method].append(p)
    for method, line in sorted(lines.items()):
        line.sort(key=lambda p: p.x)
        ax.errorbar(
            [p.x for p in line],
            [p.y for p in line],
            yerr=[p.spread for p in line] if any(p.seeds > 1 for p in line) else None,
            marker="o",
            capsize=3,
            color=colours[method],
            label=method,
        )
    base = points(runs, x, y, baseline=True)
    front = pareto_front(pts + base)
    if front:
        ax.step([p.x for p in front], [p.y for p in front], where="post", color="black", lw=1, alpha=0.6)
        ax.scatter([p.x for p in front], [p.y for p in front], s=140, facecolors="none", edgecolors="black",
                   label="Pareto front", zorder=3)  # fmt: skip
    for backbone, (level, _, _) in sorted(baselines(runs, y).items(), key=lambda kv: str(kv[0])):
        ax.axhline(level, color="grey", linestyle="--", label=f"random init {backbone} ({level:.1f})")
    if base:
        ax.scatter([p.x for p in base], [p.y for p in base], marker="s", color="grey", zorder=3)
    ax.set_xscale("log")
    xs = [p.x for p in pts + base]
    if xs and max(xs) / min(xs) < 10:  # widen to whole decades, or the axis labels only minor ticks
        ax.set_xlim(10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs)) + 1e-9))
    ax.grid(True, which="both", alpha=0.3)
    return bool(pts) or bool(baselines(runs, y))


def _colours(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({str(r.get("method")) for r in runs})
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out


def plot_runs(runs: list[dict[str, Any]], x: str, y: str, out: Path, title: str = "") -> Path:
    """Draw `y` against `x` for every run that has both; refuse an empty figure."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if not _draw(ax, runs, x, y, _colours(runs)):
        plt.close(fig)
        raise ValueError(f"no completed run has both '{x}' and '{y}' to plot")
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(title or f"{_label(y)} vs {_label(x)}")
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_facets(runs: list[dict[str, Any]], x: str, y: str, out: Path, title: str = "") -> Path:
    """One panel per pretraining dataset (rows) and backbone (columns); random init by backbone."""
    datasets = sorted({r.get("dataset") for r in runs if r.get("dataset") is not None})
    backbones = sorted({r.get("backbone") for r in runs if r.get("backbone") is not None})
    colours = _colours(runs)
    fig, axes = plt.subplots(
        len(datasets), len(backbones), figsize=(4.2 * len(backbones), 3.2 * len(datasets)), squeeze=False
    )
    for i, dataset in enumerate(datasets):
        for j, backbone in enumerate(backbones):
            ax = axes[i][j]
            panel = [
                r
                for r in runs
                if r.get("backbone") == backbone and (r.get("dataset") == dataset or r.get("dataset") is None)
            ]
            _draw(ax, panel, x, y, colours)
            ax.set_title(f"{dataset} / {backbone}", fontsize=9)
            ax.set_xlabel(_label(x), fontsize=8)
            ax.set_ylabel(_label(y), fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(title or f"{_label(y)} vs {_label(x)}, by pretraining dataset and backbone")
    return _save(fig, out)
