"""Every check of one run folder, in the order budgetssl-verify prints them."""

from __future__ import annotations

from pathlib import Path

from budgetssl.verify.accounting import check_budget, check_ladder, check_metrics, fine_tuning
from budgetssl.verify.digest import check_weights
from budgetssl.verify.flops import check_flops
from budgetssl.verify.folder import RunFolder, open_run
from budgetssl.verify.naming import check_config_hash, check_identity
from budgetssl.verify.result import Check, fail, ok


def check_status(folder: RunFolder) -> Check:
    outcome = folder.record.outcome
    if outcome.status == "completed":
        return ok("status", "completed")
    return fail("status", "completed", f"{outcome.status}" + (f": {outcome.error}" if outcome.error else ""))


def run_checks(folder: RunFolder) -> list[Check]:
    return [
        check_status(folder),
        check_config_hash(folder),
        check_identity(folder),
        *check_flops(folder),
        check_budget(folder),
        check_weights(folder),
        check_metrics(folder),
        fine_tuning(folder, "transfer"),
        fine_tuning(folder, "probe"),
        check_ladder(folder),
    ]


def verify(path: Path) -> list[Check]:
    """The checks of the run folder at `path` (NotARunFolder where it is not one)."""
    return run_checks(open_run(path))
