"""What the engine trains: a Task, an nn.Module whose forward(batch) returns a StepOutput.

The hooks are the whole contract between the loop and what it trains (a pretraining method, a
segmenter). Each is a no-op here, so the loop calls every hook on every task and a task overrides only
the ones it needs; methods.base.Method documents what each is for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from budgetssl.engine.schedule import Clock


@dataclass
class StepOutput:
    """One forward pass of a task: the loss to minimise and values to log. A value to log may be a
    tensor (e.g. an accuracy): the loop reads it on the host only on steps it logs, so a step never
    waits for the device to report it."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


def host_values(logs: dict[str, Any]) -> dict[str, Any]:
    """Logged values as numbers on the host (a tensor read here: a synchronisation on a GPU)."""
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in logs.items()}


class Task(nn.Module):
    """A trainable step. Order within one step: on_step_start, forward, backward, on_after_backward,
    optimizer step, on_step_end; on_plan once the budget is priced (and again on resume)."""

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict] | None:
        """The task's own optimizer groups (e.g. a backbone at a lower lr: "lr_scale"); None: the
        recipe's rule groups every trainable parameter."""
        return None

    def on_plan(self, steps: int) -> dict[str, float]:
        """The plan's schedules span `steps` updates (engine/schedule.py Timeline.reference_steps: the
        plan's own under cosine, a ladder's smallest rung's under wsd); returns scheduled values the plan
        changed, to log."""
        return {}

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        """Before the forward; returns scheduled values worth logging. `clock` (engine/schedule.py) is
        where the step stands: warm-ups and freezes read `clock.warm`, annealed values `clock.anneal`
        (also its value as a float); a caller may pass a bare fraction (`Clock.of` reads it)."""
        return {}

    def on_after_backward(self, clock: Clock) -> None:
        """After the backward pass, before gradient clipping and the optimizer step."""

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        """After the optimizer step (EMA updates); returns scheduled values worth logging."""
        return {}
