"""Running a stage's monitor inside the loop: before the first step, on logged steps and at the end.

The loop knows no monitor either: the stage passes any callable of the training device that returns
named numbers and says the FLOPs of one call (budgetssl.monitor.watch.Monitor is the pretraining's).
What it returns is kept in the run state (`RunState.monitors`, saved with every checkpoint): its values
at initialisation, once per run however often it resumes; the values of each monitored step; its calls,
FLOPs and seconds (`Timing.monitor`), none of them in the meter's count or the budget. Under torchrun
every rank runs it on the same weights and batch (rank 0 writes the rows and the record).
"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from budgetssl.engine.resume import RunState


class Monitor(Protocol):
    flops_per_call: int | None  # counted on its first call

    def __call__(self, device: torch.device) -> dict[str, float]: ...


class Monitoring:
    """The monitor's calls of one attempt, recorded in `state`."""

    def __init__(self, monitor: Monitor, state: RunState, device: torch.device) -> None:
        self.monitor, self.state, self.device = monitor, state, device
        state.monitors.setdefault("init", None)
        state.monitors.setdefault("history", [])
        state.monitors.setdefault("calls", 0)
        state.monitors.setdefault("flops", 0)

    def call(self) -> dict[str, float]:
        start = time.perf_counter()
        values = self.monitor(self.device)
        self.state.timing.monitor += time.perf_counter() - start
        self.state.monitors["calls"] += 1
        self.state.monitors["flops"] += int(self.monitor.flops_per_call or 0)
        return values

    def at_init(self) -> None:
        """Before step 1 (not again on resume: the saved values stand)."""
        if self.state.step == 0 and self.state.monitors["init"] is None:
            self.state.monitors["init"] = self.call()

    def at(self, step: int) -> dict[str, float]:
        """A monitored step's values, kept in the history (once per step)."""
        history = self.state.monitors["history"]
        if history and history[-1][0] == step:
            return dict(history[-1][1])
        values = self.call()
        history.append([step, values])
        return values
