"""What each console script runs: the stages composed into one record (cli/ binds them to Hydra)."""

from __future__ import annotations

from pathlib import Path

from budgetssl.config.check import RunConfig
from budgetssl.record.sections import Record


def pretrain_only(run: RunConfig, folder: Path) -> Record:
    """budgetssl-pretrain."""
    from budgetssl.stages.pretrain import pretrain

    return pretrain(run, folder)[1]


def transfer_only(run: RunConfig, folder: Path) -> Record:
    """budgetssl-transfer: the source run's record (or random init's) with this transfer."""
    from budgetssl.stages.transfer import source_record, transfer

    record = source_record(run)
    section, probed = transfer(run, folder)
    return record.merge(transfer=section, probe=probed)


def pretrain_then_transfer(run: RunConfig, folder: Path) -> Record:
    """budgetssl-run: one record of both stages."""
    from budgetssl.stages.pretrain import pretrain
    from budgetssl.stages.transfer import transfer

    backbone, record = pretrain(run, folder)
    section, probed = transfer(run, folder, backbone)
    return record.merge(transfer=section, probe=probed)
