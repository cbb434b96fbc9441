"""budgetssl-transfer: fine-tune a segmentation head on a pretrained run or a random init."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from budgetssl.cli.common import hydra_command
from budgetssl.config.check import RunConfig

# Fields of the source run that describe the transfer it had, not the pretraining: not carried over.
DROP = ("status", "command", "wall_seconds", "environment")
DROP_PREFIXES = ("transfer", "probe", "miou", "pixel_accuracy", "total_flops")


def pretraining_fields(run: RunConfig) -> dict[str, Any]:
    """Identity and cost of what is being transferred, so this record stands alone in a report."""
    from budgetssl.record.summary import SUMMARY
    from budgetssl.record.weights import provenance, weights_file
    from budgetssl.stages.pretrain import identity

    if not run.transfer.from_run:
        return {**identity(run), "method": "random_init", "dataset": None, "budget_flops": 0.0} | {
            "steps": 0,
            "train_flops": 0,
        }
    source = Path(run.transfer.from_run).expanduser()
    summary = source / SUMMARY
    if source.is_dir() and summary.is_file():
        record = json.loads(summary.read_text())
    else:
        # A bare weights file: budgetssl wrote its pretraining record into the metadata; others are unknown.
        record = provenance(weights_file(source)) or {
            **identity(run),
            "method": "external",
            "dataset": None,
            "budget_flops": None,
            "steps": None,
            "train_flops": None,
        }
    kept = {k: v for k, v in record.items() if k not in DROP and not k.startswith(DROP_PREFIXES)}
    return {**kept, "pretrain_run": str(source.resolve())}


def transfer_stage(run: RunConfig, folder: Path) -> dict[str, Any]:
    from budgetssl.stages.transfer import transfer

    base = pretraining_fields(run)
    record = transfer(run, folder)
    spent = base.get("train_flops")
    total = None if spent is None else spent + record["transfer_flops"]
    return {**base, **record, "total_flops": total}


main = hydra_command(transfer_stage, "budgetssl-transfer")
