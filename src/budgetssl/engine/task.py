"""What the engine trains: any nn.Module whose forward(batch) returns a StepOutput."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepOutput:
    """One forward pass of a task: the loss to minimise and values to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
