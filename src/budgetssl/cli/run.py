"""budgetssl-run: pretrain, then transfer, into one record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetssl.cli.common import hydra_command
from budgetssl.config.check import RunConfig


def run_stage(run: RunConfig, folder: Path) -> dict[str, Any]:
    from budgetssl.stages.pretrain import pretrain
    from budgetssl.stages.transfer import transfer

    backbone, record = pretrain(run, folder)
    scores = transfer(run, folder, backbone)
    return {**record, **scores, "total_flops": record["train_flops"] + scores["transfer_flops"]}


main = hydra_command(run_stage, "budgetssl-run")
