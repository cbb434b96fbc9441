"""budgetssl-pretrain: pretrain until the FLOP budget is spent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetssl.cli.common import hydra_command
from budgetssl.config.check import RunConfig


def pretrain_stage(run: RunConfig, folder: Path) -> dict[str, Any]:
    from budgetssl.stages.pretrain import pretrain

    return pretrain(run, folder)[1]


main = hydra_command(pretrain_stage, "budgetssl-pretrain")
