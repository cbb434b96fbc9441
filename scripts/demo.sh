#!/usr/bin/env bash
# The demo sweep on the built-in synthetic data, on CPU: supervised pretraining at three FLOP budgets
# (pretrain, then transfer to segmentation), the random-init baseline, then the table and the figure.
# Its output, results/demo/, is rebuilt from scratch on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=results/demo
budgets=${DEMO_BUDGETS:-1e12,2e12,4e12}
rm -rf "$out"
start=$(date +%s)

budgetssl-run --multirun "budget.flops=$budgets" train.progress=false \
  "hydra.sweep.dir=$out/runs" 'hydra.sweep.subdir=${method.name}_${budget.flops}'
budgetssl-transfer train.progress=false "hydra.run.dir=$out/runs/random_init"
budgetssl-report "$out/runs" --out "$out"

echo
echo "demo: finished in $(( $(date +%s) - start )) s"
echo "demo: run records in $out/runs/*/summary.json"
echo "demo: report in $out/report.md, figure in $out/miou_vs_flops.png"
