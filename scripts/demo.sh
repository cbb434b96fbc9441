#!/usr/bin/env bash
# The demo on the built-in synthetic data, on CPU: each of the six methods (scripts/demo_methods.txt, with
# CPU-sized heads) pretrains at each budget in DEMO_BUDGETS and transfers to segmentation; then the
# random-init baseline, then the table and the figure. results/demo/ is rebuilt from scratch on every run.
# DEMO_BUDGETS=1e12,2e12,4e12 make demo   runs a budget ladder (about 3x the time per added 2e12).
set -euo pipefail
cd "$(dirname "$0")/.."
out=results/demo
budgets=${DEMO_BUDGETS:-2e12}
rm -rf "$out"
start=$(date +%s)

grep -v '^\s*#' scripts/demo_methods.txt | while read -r method overrides; do
  [ -n "$method" ] || continue
  echo "demo: $method at budget.flops=$budgets"
  # shellcheck disable=SC2086  # the overrides are separate words
  budgetssl-run --multirun "budget.flops=$budgets" "method=$method" $overrides train.progress=false \
    "hydra.sweep.dir=$out/runs" 'hydra.sweep.subdir=${method.name}_${budget.flops}' </dev/null
done
budgetssl-transfer train.progress=false "hydra.run.dir=$out/runs/random_init"
budgetssl-report "$out/runs" --out "$out"

echo
echo "demo: finished in $(( $(date +%s) - start )) s"
echo "demo: run records in $out/runs/*/summary.json"
echo "demo: report in $out/report.md, figure in $out/miou_vs_flops.png"
