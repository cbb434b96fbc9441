"""budgetssl-transfer: fine-tune a segmentation head on a pretrained run or a random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetssl.cli.common import hydra_command
from budgetssl.config.check import RunConfig


def transfer_stage(run: RunConfig, folder: Path) -> dict[str, Any]:
    import json

    from budgetssl.pretrain import identity
    from budgetssl.record.summary import SUMMARY
    from budgetssl.transfer.stage import transfer

    record = transfer(run, folder)
    if run.transfer.from_run:
        # Carry the pretraining run's cost and identity, so this record stands alone in a report.
        summary = Path(run.transfer.from_run).expanduser() / SUMMARY
        source = json.loads(summary.read_text()) if summary.is_file() else {}
        keep = {
            k: v for k, v in source.items() if k not in ("status", "command", "wall_seconds", "environment")
        }
        keep = {k: v for k, v in keep.items() if not k.startswith(("transfer", "miou", "pixel_accuracy"))}
        base = {**keep, "pretrain_run": str(Path(run.transfer.from_run).resolve())}
    else:
        base = {**identity(run), "method": "random_init", "dataset": None, "budget_flops": 0.0}
        base.update(steps=0, train_flops=0)
    base.setdefault("train_flops", 0)
    return {**base, **record, "total_flops": base["train_flops"] + record["transfer_flops"]}


main = hydra_command(transfer_stage, "budgetssl-transfer")
