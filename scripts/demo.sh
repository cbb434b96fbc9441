#!/usr/bin/env bash
# The demo on the built-in synthetic data, on CPU (configs/experiment/demo.yaml): a sweep of the six
# methods x three seeds, each a ladder of three budgets, two runs at a time, each rung pretrained and
# transferred; the random-init baseline (three seeds);
# then the report (table, findings, figures), once for the fine-tuned mIoU (report.md, miou_vs_*.png), once
# for the frozen linear probe (report_probe_miou.md, probe_miou_vs_*.png) and once for each classification
# score of the frozen backbone (report_knn_accuracy.md, report_linear_accuracy.md and their figures), into
# the same folder. A metric no record has fails the demo (budgetssl-report exits 1, set -e).
# results/demo/ is rebuilt from scratch on every run.
#
# `bash scripts/demo.sh zoo` (make zoo) runs configs/experiment/zoo.yaml the same way: every registered
# method on the demo's protocol, into results/zoo/.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment=${1:-demo}
out=results/$experiment
rm -rf "$out"
start=$(date +%s)
# Two runs share the two cores: one thread each.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

budgetssl-run --multirun "+experiment=$experiment" </dev/null
# Random init, the sweep's seeds (its methods dropped: nothing is pretrained), two at a time.
budgetssl-transfer --multirun "+experiment=$experiment" '~hydra.sweeper.params.method' \
  "hydra.sweep.dir=$out/runs/random_init" 'hydra.sweep.subdir=seed_${seed}' </dev/null
budgetssl-report "$out/runs" --out "$out"
budgetssl-report "$out/runs" --out "$out" --metric probe_miou
budgetssl-report "$out/runs" --out "$out" --metric knn_accuracy
budgetssl-report "$out/runs" --out "$out" --metric linear_accuracy

echo
echo "$experiment: finished in $(( $(date +%s) - start )) s"
echo "$experiment: run records in $out/runs/*/summary.json"
echo "$experiment: report in $out/report.md (fine-tuned), $out/report_probe_miou.md (frozen, linear probe),"
echo "      $out/report_knn_accuracy.md and $out/report_linear_accuracy.md (frozen, classification)"
