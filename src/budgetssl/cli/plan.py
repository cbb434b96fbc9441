"""budgetssl-plan [--multirun] [OVERRIDE ...]: what budgetssl-run's jobs will cost, before they run
(budgetssl/plan/): one table, plan.csv and plan.json in plan.out (default: the sweep's directory)."""

from __future__ import annotations

import sys

from budgetssl.errors import BudgetSSLError

USAGE = (
    "usage: budgetssl-plan [--multirun] [OVERRIDE ...]\n"
    "  prices budgetssl-run's jobs (the same overrides and sweeps) without training: steps, FLOPs, and on\n"
    "  plan.device (plan.gpus per job, at plan.mfu or the median mfu of plan.from_runs' records) GPU-hours,\n"
    "  kWh and CO2; writes plan.csv and plan.json to plan.out (default: the sweep's directory)\n"
    "  e.g. budgetssl-plan --multirun +experiment=study plan.device=h100_sxm plan.mfu=0.4"
)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    try:
        from budgetssl.plan.output import lines, write
        from budgetssl.plan.sweep import make  # imports torch: `--help` answers without it

        planned = make(overrides, multirun)
        paths = write(planned.rows, planned.summary, planned.out)
    except BudgetSSLError as e:
        print(f"budgetssl-plan: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(lines(planned.rows, planned.summary)))
    seconds = planned.summary["seconds"]
    print(
        f"budgetssl-plan: priced {len(planned.rows)} job(s) in {seconds:.1f} s; wrote {paths[0]}, {paths[1]}"
    )


if __name__ == "__main__":
    main()
