"""FLOPs per step, measured once per distinct input shape and remembered."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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

    def state_dict(self) -> dict[str, Any]:
        """The measured costs as plain lists and dicts (a checkpoint loads with weights_only=True), so a
        resumed run never re-measures a shape."""
        return {"costs": [[list(key), asdict(cost)] for key, cost in self.costs.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, cost in state["costs"]:
            self.costs[tuple((name, tuple(shape), dtype) for name, shape, dtype in key)] = StepCost(**cost)
