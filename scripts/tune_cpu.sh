#!/usr/bin/env bash
# Re-run the sweep that chose the CPU recipes (configs/experiment/tune_cpu.yaml) and print the grid's
# scores and the best cell per method (scripts/tune_summary.py). Extra arguments are Hydra overrides,
# e.g. 'method=cpu/mae' to tune one method. About 36 runs, two at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
budgetssl-run --multirun +experiment=tune_cpu "$@" </dev/null || true  # failed cells are listed below
python scripts/tune_summary.py results/tune/runs
