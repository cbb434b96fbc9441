"""budgetssl-report RUNS_DIR --out OUT_DIR [--metric miou|probe_miou|miou_objects]: tables, the study's
findings and figures from every run below RUNS_DIR (failed and unreadable records are counted, listed and
left out), ranked by the chosen metric. The default metric writes report.md and miou_vs_*.png; another
writes report_<metric>.md and <metric>_vs_*.png, so one folder holds the reports of several metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from budgetssl.analysis.aggregate import baselines, points
from budgetssl.analysis.collect import Collection, collect
from budgetssl.analysis.figure import plot_facets, plot_runs
from budgetssl.analysis.frontier import best_per_budget, crossings, pareto_front
from budgetssl.analysis.table import (
    METRICS,
    crossing_table,
    front_table,
    markdown_table,
    summary_table,
)
from budgetssl.record.files import atomic_write


def with_totals(run: dict[str, Any]) -> dict[str, Any]:
    """Add total_co2_kg: pretraining plus transfer, measured (null when neither was measured)."""
    parts = [run.get("co2_kg"), run.get("transfer_co2_kg")]
    known = [float(v) for v in parts if isinstance(v, (int, float))]
    return {**run, "total_co2_kg": sum(known) if known else None}


def report_file(metric: str) -> str:
    return "report.md" if metric == "miou" else f"report_{metric}.md"


def figures(runs: list[dict[str, Any]], out: Path, metric: str = "miou") -> list[Path]:
    written = []
    co2 = "total_co2_kg" if any(r.get("total_co2_kg") for r in runs) else "co2_kg_estimated"
    several = len({r.get("dataset") for r in runs if r.get("dataset")}) > 1 or (
        len({r.get("backbone") for r in runs if r.get("backbone")}) > 1
    )
    for x, name in (("total_flops", f"{metric}_vs_flops"), (co2, f"{metric}_vs_co2")):
        try:
            written.append(plot_runs(runs, x, metric, out / f"{name}.png"))
            if several:
                written.append(plot_facets(runs, x, metric, out / f"{name}_facets.png"))
        except ValueError as e:
            print(f"budgetssl-report: no {name} figure: {e}", file=sys.stderr)
    return written


def findings(runs: list[dict[str, Any]], metric: str = "miou") -> list[str]:
    label = METRICS[metric]
    pts = points(runs, "total_flops", metric)
    lines = ["## Findings", ""]
    for backbone, (mean, spread, n) in sorted(baselines(runs, metric).items(), key=lambda kv: str(kv[0])):
        lines.append(
            f"- random init ({backbone}): {label} {mean:.2f}"
            + (f" ± {spread:.2f} over {n} seeds" if n > 1 else "")
        )
    if not pts:
        return lines + ["", f"No pretrained run has a {label} yet.", ""]
    lines += ["", f"### Pareto front ({label} against total FLOPs) and the best method at each budget", ""]
    front = pareto_front(pts + points(runs, "total_flops", metric, baseline=True))
    lines += [front_table(front, best_per_budget(pts), label), ""]
    params = {str(r["backbone"]): float(r["params"]) for r in runs if r.get("backbone") and r.get("params")}
    found = crossings(pts, params)
    if found:
        lines += ["### Where a larger backbone overtakes a smaller one", "", crossing_table(found), ""]
    lines += ["### Mean over seeds", "", summary_table(pts, metric), ""]
    return lines


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
        "with transfer.probe=true); a metric other than miou names its files report_<metric>.md and "
        "<metric>_vs_*.png",
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
    if metric != "miou" and not any(isinstance(r.get(metric), (int, float)) for r in found.runs):
        hint = " (run the transfer with transfer.probe=true)" if metric == "probe_miou" else ""
        print(f"budgetssl-report: error: no completed run has '{metric}'{hint}", file=sys.stderr)
        raise SystemExit(1)
    runs = [with_totals(r) for r in found.runs]
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    drawn = figures(runs, out, metric)
    found_lines = findings(runs, metric)
    title = "# budgetssl report" + ("" if metric == "miou" else f": {METRICS[metric]} (`{metric}`)")
    lines = [title, "", found.describe() + "."]
    if metric == "probe_miou":
        lines += [
            "",
            "Cost is `total_flops` (pretraining + fine-tuning); each probe's own cost is `probe_flops`.",
        ]
    lines += ["", "## Runs", "", table, ""]
    lines += found_lines + skipped(found)
    lines += [f"![{p.stem}]({p.name})" for p in drawn] + [""]
    path = out / report_file(metric)
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
    print(table)
    print("\n" + "\n".join(found_lines))
    print(f"budgetssl-report: wrote {path}" + "".join(f", {p}" for p in drawn))


if __name__ == "__main__":
    main()
