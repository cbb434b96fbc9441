"""FLOPs per step, measured once per distinct input shape and remembered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from budgetssl.meter.counter import PassCounter

ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]


def shape_key(batch: dict[str, Any]) -> ShapeKey:
    """What a step's cost depends on: the shapes and dtypes of the batch's tensors."""
    return tuple(
        (name, tuple(value.shape), str(value.dtype))
        for name, value in sorted(batch.items())
        if isinstance(value, torch.Tensor)
    )


@dataclass(frozen=True)
class StepCost:
    total: int
    breakdown: dict[str, dict[str, int]]


class StepMeter:
    """A cache of step costs by input shape."""

    def __init__(self) -> None:
        self.costs: dict[ShapeKey, StepCost] = {}

    def known(self, batch: dict[str, Any]) -> StepCost | None:
        return self.costs.get(shape_key(batch))

    def record(self, batch: dict[str, Any], counter: PassCounter) -> StepCost:
        cost = StepCost(total=counter.total, breakdown={k: dict(v) for k, v in counter.passes.items()})
        self.costs[shape_key(batch)] = cost
        return cost
