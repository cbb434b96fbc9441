"""budgetssl-report RUNS_DIR --out OUT_DIR: a table of every completed run and the mIoU-vs-FLOPs figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from budgetssl.analysis.collect import collect
from budgetssl.analysis.figure import plot_runs
from budgetssl.analysis.table import markdown_table
from budgetssl.record.files import atomic_write


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="budgetssl-report", description=__doc__)
    parser.add_argument("runs_dir", type=Path, help="folder searched (recursively) for summary.json files")
    parser.add_argument(
        "--out", type=Path, default=None, help="where report.md and figures go (default: RUNS_DIR)"
    )
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        parser.error(f"{args.runs_dir} is not a folder of runs")
    out = args.out or args.runs_dir
    found = collect(args.runs_dir)
    print(f"budgetssl-report: {found.describe()} under {args.runs_dir}", file=sys.stderr)
    if not found.runs:
        print("budgetssl-report: error: nothing to report; run budgetssl-run first", file=sys.stderr)
        raise SystemExit(1)
    table = markdown_table(found.runs)
    lines = ["# budgetssl report", "", found.describe() + ".", "", table, ""]
    figures = []
    if any(r.get("miou") is not None for r in found.runs):
        figures.append(
            plot_runs(found.runs, "total_flops", "miou", out / "miou_vs_flops.png", "mIoU vs total FLOPs")
        )
        lines += ["![mIoU vs FLOPs](miou_vs_flops.png)", ""]
    atomic_write(out / "report.md", lambda tmp: tmp.write_text("\n".join(lines)))
    print(table)
    print(f"\nbudgetssl-report: wrote {out / 'report.md'}" + "".join(f", {f}" for f in figures))


if __name__ == "__main__":
    main()
