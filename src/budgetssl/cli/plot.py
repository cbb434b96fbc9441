"""budgetssl-plot RUNS_DIR --x FIELD --y FIELD --out FILE [--include-collapsed]: one figure of any two record
fields; collapsed runs are marked and kept off the Pareto front unless --include-collapsed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from budgetssl.analysis import collapse
from budgetssl.analysis.aggregate import aggregate
from budgetssl.analysis.collect import collect
from budgetssl.analysis.figure import plot_points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="budgetssl-plot", description=__doc__)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--x", default="total_flops", help="record field on the (log) x axis")
    parser.add_argument("--y", default="miou", help="record field on the y axis")
    parser.add_argument(
        "--out", type=Path, default=None, help="image file (default: RUNS_DIR/<y>_vs_<x>.png)"
    )
    parser.add_argument(
        "--include-collapsed",
        action="store_true",
        help="let collapsed runs onto the Pareto front (still marked)",
    )
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        parser.error(f"{args.runs_dir} is not a folder of runs")
    found = collect(args.runs_dir)
    print(f"budgetssl-plot: {found.describe()}", file=sys.stderr)
    out = args.out or args.runs_dir / f"{args.y}_vs_{args.x}.png"
    try:
        collapse.check(found.runs)
        plot_points(aggregate(found.records, args.x, args.y), out, include_collapsed=args.include_collapsed)
    except ValueError as e:
        print(f"budgetssl-plot: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(out)


if __name__ == "__main__":
    main()
