"""Accuracy against cost: one line per method on a log axis (mean over seeds, spread as error bars),
the Pareto front marked (with the points the seeds' noise cannot tell apart from it), random init drawn
as the zero-budget level, and each converged scaling fit as a dashed curve with its bootstrap band.
A collapsed point (analysis/collapse.py) is drawn with its own marker, ✕, and never joins the front
unless `include_collapsed`; a point of a method that did not learn (analysis/learning.py) with its own,
+, and never joins the front unless `include_unlearned`."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from budgetssl.analysis.aggregate import Aggregate, Point  # noqa: E402
from budgetssl.analysis.collapse import is_collapsed, kept, mark  # noqa: E402
from budgetssl.analysis.fits import LEVEL, Fit  # noqa: E402
from budgetssl.analysis.frontier import pareto_front  # noqa: E402
from budgetssl.analysis.noise import Noise  # noqa: E402
from budgetssl.files import atomic_write  # noqa: E402

LABELS = {
    "miou": "mIoU (%)",
    "miou_objects": "mIoU over the object classes (%)",
    "probe_miou": "probe mIoU (%, frozen backbone, linear head)",
    "pixel_accuracy": "pixel accuracy (%)",
    "co2_kg": "CO2 (kg, measured)",
    "total_co2_kg": "CO2 (kg, measured, pretraining + transfer)",
    "co2_kg_estimated": "CO2 (kg, estimated)",
    "energy_kwh": "energy (kWh, measured)",
    "knn_accuracy": "k-NN accuracy (%, frozen backbone)",
    "linear_accuracy": "linear accuracy (%, frozen backbone)",
}


MARKERS = ("o", "^", "D", "v", "P", "*")  # one per dataset and backbone drawn together
COLLAPSED = "x"  # a collapsed point's marker, whatever its dataset and backbone (none of MARKERS)
UNLEARNED = "+"  # a point of a method that did not learn (analysis/learning.py), likewise


def _label(field: str) -> str:
    return LABELS.get(field, field.replace("_", " ") + (" (fma=2)" if "flops" in field else ""))


@dataclass(frozen=True)
class FitCurve:
    """A converged fit as drawn: the law on a log grid from its smallest point to `upto`, and its
    bootstrap band (None without seeds to resample)."""

    fit: Fit
    xs: np.ndarray
    ys: np.ndarray
    band: tuple[np.ndarray, np.ndarray] | None


def fit_curves(fits: list[Fit], upto: float | None = None) -> list[FitCurve]:
    """What the figures draw of the fits: only those with a law (too few points or no convergence:
    nothing), each up to `upto` (the predicted budget) or its largest point."""
    out = []
    for f in fits:
        if f.law is None:
            continue
        lo, hi = f.x_range
        xs = np.geomspace(lo, max(hi, upto or hi), 100)
        out.append(FitCurve(f, xs, f.law(xs), f.interval(xs)))
    return out


def _draw(ax: Any, points: list[Point], baselines: list[Point], colours: dict[str, Any],
          noise: Noise | None = None, curves: Sequence[FitCurve] = (),
          include_collapsed: bool = False, include_unlearned: bool = False) -> bool:  # fmt: skip
    lines: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        lines[(p.label, str(p.dataset), str(p.backbone))].append(p)
    # Colour: the method; marker: the dataset and backbone, named only where they vary.
    variants = sorted(
        {key[1:] for key in lines} | {(str(c.fit.dataset), str(c.fit.backbone)) for c in curves}
    )
    marker = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(variants)}
    for (label, dataset, backbone), line in sorted(lines.items()):
        line.sort(key=lambda p: p.x)  # type: ignore[arg-type,return-value]
        ax.errorbar(
            [p.x for p in line],
            [p.y for p in line],
            yerr=[p.spread for p in line] if any(p.seeds > 1 for p in line) else None,
            marker=marker[(dataset, backbone)],
            markevery=[i for i, p in enumerate(line) if not is_collapsed(p) and not p.unlearned],
            capsize=3,
            color=colours[label],
            label=f"{label} {dataset}/{backbone}" if len(variants) > 1 else label,
        )
        collapsed = [p for p in line if is_collapsed(p)]
        unlearned = [p for p in line if p.unlearned and not is_collapsed(p)]
        for symbol, flagged in ((COLLAPSED, collapsed), (UNLEARNED, unlearned)):
            if flagged:
                ax.scatter([p.x for p in flagged], [p.y for p in flagged], marker=symbol, s=90,
                           linewidths=2, color=colours[label], zorder=4)  # fmt: skip
    for symbol, name, option, included, shown in (
        (COLLAPSED, "collapsed", "--include-collapsed", include_collapsed, any(map(is_collapsed, points))),
        (
            UNLEARNED,
            "did not learn",
            "--include-unlearned",
            include_unlearned,
            any(p.unlearned for p in points),
        ),
    ):
        if shown:
            where = f"in the front: {option}" if included else "not in the front or fits"
            ax.scatter([], [], marker=symbol, s=90, linewidths=2, color="black", label=f"{name} ({where})")
    if curves:  # one legend entry for every fit, in neutral grey
        band = f", {LEVEL:.0%} bootstrap band" if any(c.band is not None for c in curves) else ""
        ax.plot([], [], linestyle="--", color="grey", lw=1, label="scaling fit" + band)
    for c in curves:
        colour = colours.get(c.fit.label, "black")
        ax.plot(c.xs, c.ys, linestyle="--", color=colour, lw=1)
        if c.band is not None:
            ax.fill_between(c.xs, c.band[0], c.band[1], color=colour, alpha=0.15, lw=0)
    placed = [b for b in baselines if b.x is not None]
    candidates = kept(points + placed, include_collapsed, include_unlearned)
    front = pareto_front(candidates)
    circled = pareto_front(candidates, noise) if noise is not None else front
    if front:
        ax.step([p.x for p in front], [p.y for p in front], where="post", color="black", lw=1, alpha=0.6)
        name = "Pareto front" + (" (circled: and its ties)" if noise is not None else "")
        ax.scatter([p.x for p in circled], [p.y for p in circled], s=140, facecolors="none",
                   edgecolors="black", zorder=3, label=name)  # fmt: skip
    for b in sorted(baselines, key=lambda b: str(b.backbone)):
        ax.axhline(
            b.y, color="grey", linestyle="--", label=f"{mark('random init', [b])} {b.backbone} ({b.y:.1f})"
        )
    if placed:
        ax.scatter([p.x for p in placed], [p.y for p in placed], marker="s", color="grey", zorder=3)
    ax.set_xscale("log")
    xs = [p.x for p in points + placed if p.x is not None] + [float(x) for c in curves for x in c.xs[[0, -1]]]
    if xs and max(xs) / min(xs) < 10:  # widen to whole decades, or the axis labels only minor ticks
        ax.set_xlim(10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs)) + 1e-9))
    ax.grid(True, which="both", alpha=0.3)
    return bool(points or baselines)


def _colours(found: Aggregate) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({p.label for p in found.points})
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out


def plot_points(found: Aggregate, out: Path, title: str = "", noise: Noise | None = None,
                curves: Sequence[FitCurve] = (), include_collapsed: bool = False,
                include_unlearned: bool = False) -> Path:  # fmt: skip
    """Draw the aggregate's `y` against its `x` (with the fits' `curves`, where its x is the fits'
    FLOPs); refuse an empty figure."""
    x, y = found.x, found.y
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if not _draw(
        ax,
        found.points,
        found.baselines,
        _colours(found),
        noise,
        curves,
        include_collapsed,
        include_unlearned,
    ):
        plt.close(fig)
        raise ValueError(f"no completed run has both '{x}' and '{y}' to plot")
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(title or f"{_label(y)} vs {_label(x)}")
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_facets(found: Aggregate, out: Path, title: str = "", noise: Noise | None = None,
                curves: Sequence[FitCurve] = (), include_collapsed: bool = False,
                include_unlearned: bool = False) -> Path:  # fmt: skip
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
            here = [c for c in curves if c.fit.backbone == backbone and c.fit.dataset == dataset]
            baselines = [b for b in found.baselines if b.backbone == backbone]
            _draw(ax, panel, baselines, colours, noise, here, include_collapsed, include_unlearned)
            ax.set_title(f"{dataset} / {backbone}", fontsize=9)
            ax.set_xlabel(_label(x), fontsize=8)
            ax.set_ylabel(_label(y), fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(title or f"{_label(y)} vs {_label(x)}, by pretraining dataset and backbone")
    return _save(fig, out)
