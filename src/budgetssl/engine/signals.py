"""Preemption: SIGTERM and SIGUSR1 (SLURM's preemption and `--signal=USR1@<seconds>` before a time limit)
ask the run to stop; the training loop finishes its step, writes a checkpoint and raises Interrupted.

A handler only sets a flag: nothing is written from inside a signal handler. Where a Python handler was
already installed for the signal (submitit installs its own for its preemption signal, USR2 by default
or $SUBMITIT_PREEMPT_SIGNAL), that signal is caught too, and after the checkpoint the previous handler
is called, so submitit requeues the job, which then resumes from the checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; run the same command again
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(Exception):
    """The run stopped on a signal after checkpointing; running the same command again resumes it."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (this stage restarts)"
        super().__init__(
            f"stopped by {signal_name} after step {step}; {where}; run the same command to resume"
        )
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


_received: list[int] = []
_previous: dict[int, Any] = {}


def requested() -> str | None:
    """The name of the first stop signal received, or None."""
    return signal.Signals(_received[0]).name if _received else None


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def _submitit_signal() -> signal.Signals | None:
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal.Signals, name, None)


@contextmanager
def catch() -> Iterator[None]:
    """Catch the stop signals while the block runs (main thread only), then put the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = set(STOP_SIGNALS)
    extra = _submitit_signal()
    if extra is not None and callable(signal.getsignal(extra)):
        wanted.add(extra)
    _received.clear()
    _previous.clear()
    for sig in wanted:
        _previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in _previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def hand_over() -> None:
    """After an interrupted run wrote its record: let a handler that was there before ours (submitit's
    checkpoint-and-requeue) act on the signal we caught."""
    if not _received:
        return
    signum = _received[0]
    old = _previous.get(signum)
    if callable(old):
        old(signum, None)
