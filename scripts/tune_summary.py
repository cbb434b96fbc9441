"""Print the CPU recipe sweep (configs/experiment/tune_cpu.yaml): per method, the probe and fine-tuned
mIoU of every (lr, weight decay) cell, and the cell with the best probe mIoU (ties: fine-tuned mIoU)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(root: str) -> None:
    cells: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(Path(root).glob("*/summary.json")):
        record = json.loads(path.read_text())
        recipe = record.get("recipe") or {}
        cells[str(record.get("method"))].append(
            {
                "lr": recipe.get("lr"),
                "wd": recipe.get("weight_decay"),
                "status": record.get("status"),
                "probe": record.get("probe_miou"),
                "miou": record.get("miou"),
                "loss": (record.get("first_loss"), record.get("final_loss")),
            }
        )
    for method, rows in sorted(cells.items()):
        print(f"\n{method}\n| lr | weight decay | probe mIoU | fine-tuned mIoU | loss first -> last |")
        print("|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["lr"] or 0, r["wd"] or 0)):
            if r["status"] != "completed":
                print(f"| {r['lr']} | {r['wd']} | {r['status']} | | |")
                continue
            first, last = r["loss"]
            scores = f"{r['probe']:.2f} | {r['miou']:.2f}"
            print(f"| {r['lr']:g} | {r['wd']:g} | {scores} | {first:.3f} -> {last:.3f} |")
        done = [r for r in rows if r["status"] == "completed" and r["probe"] is not None]
        if done:
            best = max(done, key=lambda r: (r["probe"], r["miou"]))
            print(f"best: lr {best['lr']:g}, weight decay {best['wd']:g} (probe {best['probe']:.2f})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/tune/runs")
