"""How a run ended, written the same way for every record: a command's run folder (cli/common.py execute)
and each rung of a ladder (stages/ladder.py), so a rung that fails or is interrupted says so in its own
folder as any run does."""

from __future__ import annotations

import time
from pathlib import Path

from budgetssl.engine import signals
from budgetssl.errors import BudgetSSLError
from budgetssl.record.sections import Outcome, Record
from budgetssl.record.summary import environment, now


def started(command: str) -> Outcome:
    return Outcome(command=command, status="running", started_at=now())


def ended(outcome: Outcome, error: BaseException | None, folder: Path | None = None) -> Outcome:
    """`outcome` as the stage ended: `completed` (no error); `interrupted` by a stop signal after a
    checkpoint (its signal, step and checkpoint, as a path inside the run `folder`); `failed` on a bad
    input (a BudgetSSLError: its message, type and, for a non-finite loss, the step) or on a crash."""
    if error is None:
        outcome.status = "completed"
    elif isinstance(error, signals.Interrupted):
        outcome.status, outcome.error, outcome.error_type = "interrupted", str(error), "Interrupted"
        outcome.signal, outcome.interrupted_at_step = error.signal_name, error.step
        outcome.checkpoint = inside(error.checkpoint, folder)
    elif isinstance(error, BudgetSSLError):
        outcome.status, outcome.error, outcome.error_type = "failed", str(error), type(error).__name__
        outcome.failed_step = getattr(error, "step", None)
    else:
        outcome.status, outcome.error = "failed", f"{type(error).__name__}: {error}"
        outcome.error_type = type(error).__name__
    return outcome


def inside(path: str | None, folder: Path | None) -> str | None:
    """A file of the run folder as a path inside it, so the record stays true when the folder moves."""
    if path is None or folder is None:
        return path
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def finished(record: Record, start: float) -> Record:
    """`record` with its outcome's wall time (since `start`, perf_counter), end time and environment."""
    outcome = record.outcome
    outcome.wall_seconds, outcome.finished_at = time.perf_counter() - start, now()
    outcome.environment = environment()
    return record
