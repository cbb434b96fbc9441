"""Print the CPU recipe sweep (configs/experiment/tune_cpu.yaml): per method, the probe and fine-tuned
mIoU of every (lr, weight decay) cell with its collapse verdict, and the chosen cell: the best probe mIoU
(ties: fine-tuned mIoU) among the cells the collapse monitor does not flag. A flagged cell is never
chosen while an unflagged one completed: the zoo's probe of a collapsed run can still beat random init's
(its features keep a little of the input), and a recipe chosen there is a recipe that collapses. Where
every cell is flagged the best of them is printed, said so."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from budgetssl.analysis.collect import collect
from budgetssl.analysis.verdict import collapse_of


def main(root: str) -> None:
    cells: dict[str, list[dict]] = defaultdict(list)
    found = collect(Path(root))
    for run in found.runs:
        record = run.record
        recipe = record.value("recipe") or {}
        verdict = collapse_of(record)
        cells[str(record.value("method"))].append(
            {
                "lr": recipe.get("lr"),
                "wd": recipe.get("weight_decay"),
                "probe": record.value("probe_miou"),
                "miou": record.value("miou"),
                "loss": (record.value("first_loss"), record.value("final_loss")),
                "collapse": verdict.rule if verdict else "-",
            }
        )
    for method, rows in sorted(cells.items()):
        header = "| lr | weight decay | probe mIoU | fine-tuned mIoU | loss first -> last | collapsed |"
        print(f"\n{method}\n{header}")
        print("|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["lr"] or 0, r["wd"] or 0)):
            first, last = r["loss"]
            scores = f"{r['probe']:.2f} | {r['miou']:.2f}"
            print(f"| {r['lr']:g} | {r['wd']:g} | {scores} | {first:.3f} -> {last:.3f} | {r['collapse']} |")
        done = [r for r in rows if r["probe"] is not None]
        sound = [r for r in done if r["collapse"] == "-"]
        if done:
            best = max(sound or done, key=lambda r: (r["probe"], r["miou"]))
            flagged = "" if sound else " -- every cell collapsed: the best flagged one"
            cell = f"lr {best['lr']:g}, weight decay {best['wd']:g}"
            print(f"best: {cell} (probe {best['probe']:.2f}){flagged}")
    for path in found.failed + found.unreadable:
        print(f"not completed: {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/tune/runs")
