"""budgetssl-report RUNS_DIR --out OUT_DIR [--include-collapsed] [--include-unlearned]
[--metric miou|probe_miou|miou_objects|knn_accuracy|linear_accuracy]: tables, the study's findings and
figures from every run below RUNS_DIR (failed and unreadable records are counted, listed and left out),
ranked by the chosen metric. The default metric writes report.md and miou_vs_*.png; another writes
report_<metric>.md and <metric>_vs_*.png, so one folder holds the reports of several metrics. Beside
them, runs.csv: one flat row per completed run, for pandas or a spreadsheet. Every verdict (the Pareto
front, the best method per budget, the crossings) lists as ties the differences within the seeds' noise;
every configuration with three budgets or more gets a scaling fit, drawn on the figures and asked for the
score at `--predict-at` FLOPs. A collapsed run (its record's `collapse`) is marked in every table and
figure and left out of every verdict and fit unless `--include-collapsed`; the findings list it, and name
each method below random init or falling with budget beyond the seeds' noise. A method that at its largest
budget does not beat random init beyond the noise, or falls with budget, is marked `did not learn` and left
out the same way unless `--include-unlearned` (analysis/learning.py states the rule)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from budgetssl.analysis import collapse, learning
from budgetssl.analysis.aggregate import COSINE, Aggregate, Point, aggregate
from budgetssl.analysis.collect import Collection, Run, collect
from budgetssl.analysis.figure import FitCurve, fit_curves, plot_facets, plot_points
from budgetssl.analysis.fit_table import scaling_section
from budgetssl.analysis.fits import fit_all
from budgetssl.analysis.frontier import best_per_budget, crossings, pareto_front
from budgetssl.analysis.noise import noise_of
from budgetssl.analysis.runs_csv import write_runs_csv
from budgetssl.analysis.table import (
    COLUMNS,
    METRICS,
    crossing_table,
    front_table,
    markdown_table,
    point_name,
    summary_table,
)
from budgetssl.files import atomic_write
from budgetssl.plan.cost import Measured, measured, reaching
from budgetssl.record.sections import Record

RUNS_CSV = "runs.csv"
# What to run when no record has the asked metric.
HINTS = {
    "probe_miou": "run the transfer with transfer.probe=true",
    "knn_accuracy": "k-NN and linear accuracy are measured on the labelled held-out split of data with "
    "labels (synthetic, the ImageNet layouts, COCO with labels): rerun the runs, and random init, with this "
    "version",
}
HINTS["linear_accuracy"] = HINTS["knn_accuracy"]


def report_file(metric: str) -> str:
    return "report.md" if metric == "miou" else f"report_{metric}.md"


def figures(
    records: list[Record],
    by_flops: Aggregate,
    out: Path,
    curves: list[FitCurve] | None = None,
    include_collapsed: bool = False,
    include_unlearned: bool = False,
) -> list[Path]:
    """The score against total FLOPs (the findings' aggregate, with the scaling fits' `curves`) and
    against CO2, each also by dataset and backbone when the runs vary either; collapsed points marked."""
    metric = by_flops.y
    co2 = "total_co2_kg" if any(r.total_co2_kg for r in records) else "co2_kg_estimated"
    several = len({r.identity.dataset for r in records if r.identity.dataset}) > 1 or (
        len({r.identity.backbone for r in records if r.identity.backbone}) > 1
    )
    written = []
    for found, name, drawn in (
        (by_flops, f"{metric}_vs_flops", curves or []),
        (aggregate(records, co2, metric), f"{metric}_vs_co2", []),
    ):
        noise = noise_of(collapse.pooled(found, include_collapsed))
        found = learning.mark_unlearned(found, noise)
        try:
            written.append(plot_points(found, out / f"{name}.png", noise=noise, curves=drawn,
                                       include_collapsed=include_collapsed,
                                       include_unlearned=include_unlearned))  # fmt: skip
            if several:
                written.append(plot_facets(found, out / f"{name}_facets.png", noise=noise, curves=drawn,
                                           include_collapsed=include_collapsed,
                                           include_unlearned=include_unlearned))  # fmt: skip
        except ValueError as e:
            print(f"budgetssl-report: no {name} figure: {e}", file=sys.stderr)
    return written


def findings(
    found: Aggregate,
    params: dict[str, float],
    include_collapsed: bool = False,
    runs: list[Run] | None = None,
    include_unlearned: bool = False,
) -> list[str]:
    """Random init, the collapsed runs (from `runs`), the Pareto front and the best method per budget, the
    crossings, the means over seeds and the methods that do not learn: every verdict with the ties the
    seeds' noise leaves (analysis/noise.py states the rule, and the report repeats it), and every verdict
    without the collapsed points unless `include_collapsed` (analysis/collapse.py states the rule) and
    without the points of methods that did not learn unless `include_unlearned` (analysis/learning.py)."""
    label = METRICS[found.y]
    noise = noise_of(collapse.pooled(found, include_collapsed))
    found = learning.mark_unlearned(found, noise)
    judged = collapse.judged(found, include_collapsed, include_unlearned)
    lines = ["## Findings", ""]
    for b in sorted(found.baselines, key=lambda b: str(b.backbone)):
        lines.append(
            f"- random init ({b.backbone or '-'}): {label} {b.y:.2f}"
            + (f" ± {b.spread:.2f} over {b.seeds} seeds" if b.seeds > 1 else " (1 seed)")
            + (f" ({collapse.note(b)})" if collapse.is_collapsed(b) else "")
        )
    if runs is not None:
        lines += [""] + collapse.section(runs, include_collapsed)
    if not found.points:
        return lines + ["", f"No pretrained run has a {label} yet.", ""]
    lines += ([] if lines[-1] == "" else [""]) + [f"Ties: {noise.describe()}", ""]
    lines += [f"### Pareto front ({label} against total FLOPs) and the best method at each budget", ""]
    lines += [
        front_table(
            pareto_front(judged.front_candidates(), noise),
            best_per_budget(judged.points, noise),
            label,
            noise,
        ),
        "",
    ]
    every = {p.budget for p in judged.points}
    for b in sorted({p.budget for p in found.points} - every):
        here = [p for p in found.points if p.budget == b]
        if all(collapse.is_collapsed(p) for p in here):
            why, options = "is collapsed", "`--include-collapsed`"
        elif not any(collapse.is_collapsed(p) for p in here):
            why, options = "is of a method that did not learn", "`--include-unlearned`"
        else:
            why, options = "is collapsed or did not learn", "`--include-collapsed` and `--include-unlearned`"
        lines.append(f"- at {b:.3g} FLOPs every point {why}: no best method ({options} to rank them)")
    lines += [""] if lines[-1] != "" else []
    crossed = crossings(judged.points, params, noise)
    if crossed:
        lines += ["### Where a larger backbone overtakes a smaller one", "", crossing_table(crossed), ""]
    if any(p.seeds > 1 for p in found.points):
        lines += ["### Mean over seeds", "", summary_table(found.points, found.y), ""]
    else:
        lines += ["Every point has one seed: run more (e.g. `seed=0,1,2`) to see the spread.", ""]
    return lines + learning.section(found.points, found.baselines, noise, label, include_unlearned)


def _flops(text: str) -> float:
    """--predict-at's value: a positive number of FLOPs, or argparse's error naming the fix."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of FLOPs (e.g. 1e15)")
    return value


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predict-at",
        type=_flops,
        default=None,
        metavar="FLOPS",
        help="total FLOPs (pretraining + fine-tuning) at which the scaling fits predict each score and "
        "the best method (default: 10x the largest budget of the runs)",
    )


def scaling_fits(
    found: Aggregate,
    params: dict[str, float],
    predict_at: float | None,
    include_collapsed: bool = False,
    include_unlearned: bool = False,
    evidence: list[Measured] | None = None,
) -> tuple[list[str], list[FitCurve]]:
    """The "Scaling fits" section and the curves the score-vs-FLOPs figures draw (converged fits only,
    extended to the predicted budget); collapsed points are not fitted unless `include_collapsed`, nor
    those of methods that did not learn unless `include_unlearned`. With the runs' measured MFUs
    (`evidence`), what reaching the predicted budget costs beside each prediction (`reaching_costs`)."""
    if not found.points:
        return [], []
    largest = max(p.budget for p in found.points) or max(float(p.x or 0) for p in found.points)
    at = predict_at if predict_at is not None else 10 * largest
    found = learning.mark_unlearned(found, noise_of(collapse.pooled(found, include_collapsed)))
    judged = collapse.judged(found, include_collapsed, include_unlearned)
    fits = fit_all(judged.points)
    out = [p for p in found.points if p not in judged.points]
    collapsed = [point_name(p) for p in out if collapse.is_collapsed(p)]
    unlearned = [point_name(p) for p in out if not collapse.is_collapsed(p)]
    lines = scaling_section(
        fits,
        at,
        params,
        METRICS[found.y],
        default=predict_at is None,
        left_out=collapsed,
        unlearned=unlearned,
    )
    return lines + reaching_costs(found.points, at, evidence or []), fit_curves(fits, at)


def reaching_costs(points: list[Point], at: float, evidence: list[Measured]) -> list[str]:
    """What `at` total FLOPs would cost each pretrained configuration (fitted or not: the price does not
    depend on the fit) on the accelerator its runs measured on, at their median measured MFU
    (plan/cost.py reaching: budgetssl-plan's pricing), so the predicted score and its price read
    together."""
    configs = list(dict.fromkeys((p.method, p.dataset, p.backbone, p.schedule) for p in points))
    if not configs:
        return []
    lines = [f"### Cost of reaching {at:.3g} FLOPs", ""]
    for method, dataset, backbone, schedule in configs:
        where = reaching(at, evidence, method, dataset, backbone, schedule)
        wsd = f" ({schedule})" if schedule != COSINE else ""
        lines.append(f"- {method}{wsd} / {dataset or '-'} / {backbone or '-'}: {where}")
    return lines + [""]


def skipped(found: Collection) -> list[str]:
    if not found.failed and not found.unreadable:
        return []
    lines = ["## Left out", ""]
    lines += [f"- failed or unfinished: `{p}`" for p in found.failed]
    lines += [f"- unreadable: `{p}`" for p in found.unreadable]
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="budgetssl-report", description=__doc__)
    parser.add_argument("runs_dir", type=Path, help="folder searched (recursively) for summary.json files")
    parser.add_argument(
        "--out", type=Path, default=None, help="where report.md and figures go (default: RUNS_DIR)"
    )
    parser.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default="miou",
        help="what the findings and figures rank: the fine-tuned mIoU (default), the same without the "
        "background class (miou_objects), or the frozen backbone's linear probe (probe_miou, from runs "
        "with transfer.probe=true), or the frozen backbone's classification accuracy on the labelled "
        "held-out split (knn_accuracy: weighted k-NN; linear_accuracy: a linear classifier); a metric other "
        "than miou names its files report_<metric>.md and <metric>_vs_*.png",
    )
    parser.add_argument(
        "--include-collapsed",
        action="store_true",
        help="keep collapsed runs (their record's `collapse`) in the Pareto front, the best method per "
        "budget, the crossings and the scaling fits; they stay marked (default: left out)",
    )
    parser.add_argument(
        "--include-unlearned",
        action="store_true",
        help="keep the methods that did not learn (at their largest budget not above random init beyond "
        "the seeds' noise, or falling with budget) in the Pareto front, the best method per budget, the "
        "crossings and the scaling fits; they stay marked (default: left out)",
    )
    add_fit_options(parser)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every run folder as budgetssl-verify does; runs that fail stay in the report, marked in "
        "a `verified` column and listed with their failed checks",
    )
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        parser.error(f"{args.runs_dir} is not a folder of runs")
    out = args.out or args.runs_dir
    metric = args.metric
    found = collect(args.runs_dir)
    print(f"budgetssl-report: {found.describe()} under {args.runs_dir}", file=sys.stderr)
    if not found.runs:
        print("budgetssl-report: error: nothing to report; run budgetssl-run first", file=sys.stderr)
        raise SystemExit(1)
    records = found.records
    if metric != "miou" and not any(r.number(metric) is not None for r in records):
        hint = f" ({HINTS[metric]})" if metric in HINTS else ""
        print(f"budgetssl-report: error: no completed run has '{metric}'{hint}", file=sys.stderr)
        raise SystemExit(1)
    lacking = [r for r in records if r.number(metric) is None]
    if lacking:
        methods = ", ".join(sorted({str(r.identity.method) for r in lacking}))
        print(
            f"budgetssl-report: {len(lacking)} completed run(s) have no '{metric}': in the table of runs, "
            f"not in the findings or figures (methods: {methods})",
            file=sys.stderr,
        )
    try:
        collapse.check(found.runs)
    except ValueError as e:
        print(f"budgetssl-report: error: {e} (rewrite that run's record, or rerun it)", file=sys.stderr)
        raise SystemExit(1) from None
    include = args.include_collapsed
    out.mkdir(parents=True, exist_ok=True)
    verified: list[str] = []
    if args.verify:
        from budgetssl.verify.marks import COLUMN, mark_runs  # imports torch: only when asked

        verified = mark_runs(found.runs)
    table = markdown_table(records, COLUMNS + [COLUMN] if args.verify else COLUMNS)
    by_flops = aggregate(records, "total_flops", metric)
    params = {
        str(r.identity.backbone): float(r.provenance.params)
        for r in records
        if r.identity.backbone and r.provenance and r.provenance.params
    }
    unlearned = args.include_unlearned
    fit_lines, curves = scaling_fits(by_flops, params, args.predict_at, include, unlearned, measured(records))
    drawn = figures(records, by_flops, out, curves, include, unlearned)
    found_lines = findings(by_flops, params, include, found.runs, unlearned) + fit_lines
    csv_path = write_runs_csv(found.runs, out / RUNS_CSV)
    title = "# budgetssl report" + ("" if metric == "miou" else f": {METRICS[metric]} (`{metric}`)")
    lines = [title, "", found.describe() + "."]
    if metric == "probe_miou":
        lines += [
            "",
            "Cost is `total_flops` (pretraining + fine-tuning); each probe's own cost is `probe_flops`.",
        ]
    if metric in ("knn_accuracy", "linear_accuracy"):
        lines += [
            "",
            "Cost is `total_flops` (pretraining + fine-tuning), as for every metric; the k-NN and linear "
            "classifiers' own cost is not in it.",
        ]
    if include:
        lines += ["", "`--include-collapsed`: collapsed runs are in every verdict and fit below, marked."]
    if unlearned:
        lines += ["", "`--include-unlearned`: methods that did not learn are in every verdict and fit below, "
                  "marked."]  # fmt: skip
    lines += ["", "## Runs", "", table, ""]
    lines += verified + found_lines + skipped(found)
    lines += [f"![{p.stem}]({p.name})" for p in drawn] + [""]
    path = out / report_file(metric)
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
    print(table)
    if verified:
        print("\n" + "\n".join(verified))
    print("\n" + "\n".join(found_lines))
    print(f"budgetssl-report: wrote {path}, {csv_path}" + "".join(f", {p}" for p in drawn))


if __name__ == "__main__":
    main()
