"""What each console script runs: the stages composed into one record (cli/ binds them to Hydra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from budgetssl.config.check import RunConfig
from budgetssl.record.sections import Record
from budgetssl.stages.ladder import ladder
from budgetssl.stages.pretrain import pretrain
from budgetssl.stages.transfer import source_record, transfer

if TYPE_CHECKING:
    from budgetssl.backbones.backbone import Backbone


def pretrain_only(run: RunConfig, folder: Path) -> Record:
    """budgetssl-pretrain (with budget.ladder: the ladder, each rung a run folder under this one)."""
    if run.budget.ladder is not None:
        return ladder(run, folder, "budgetssl-pretrain")
    return pretrain(run, folder)[1]


def transfer_only(run: RunConfig, folder: Path) -> Record:
    """budgetssl-transfer: the source run's record (or random init's) with this transfer."""
    return source_record(run).merge(**transfer(run, folder))


def pretrain_then_transfer(run: RunConfig, folder: Path) -> Record:
    """budgetssl-run: one record of both stages (with budget.ladder: each rung's record holds both, and
    this folder's the trunk's)."""

    def transferred(rung: RunConfig, rung_folder: Path, backbone: Backbone) -> dict[str, Any]:
        return transfer(rung, rung_folder, backbone)

    if run.budget.ladder is not None:
        return ladder(run, folder, "budgetssl-run", then=transferred)
    backbone, record = pretrain(run, folder)
    return record.merge(**transferred(run, folder, backbone))
