"""The loop's progress and everything a resumed run needs, as one checkpointable dict.

Saved: the task (method modules, EMA teachers, centres and scheduled values are all in its state_dict),
optimizer, gradient scaler, every rank's RNG states, the meter's spent FLOPs, steps, plan and measured
step costs (a resumed run never re-measures or re-spends), and the data position. Learning-rate and
method schedules are functions of the fraction of the plan done, so they resume from `step`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from budgetssl.engine import rng
from budgetssl.engine.distributed import World
from budgetssl.meter.budget import Plan
from budgetssl.meter.step_meter import StepCost, StepMeter

if TYPE_CHECKING:
    from budgetssl.engine.loop import Trainer


@dataclass
class RunState:
    """What the loop has done so far."""

    step: int = 0
    spent: int = 0  # FLOPs, fma=2
    plan: Plan | None = None
    first: StepCost | None = None  # the measured first step (its breakdown goes into the record)
    first_loss: float = math.nan
    loss: float = math.nan
    lr: float = math.nan
    logs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # training wall time of earlier attempts of this run


def snapshot(
    state: RunState, trainer: Trainer, meter: StepMeter, batches: Any, world: World
) -> dict[str, Any]:
    """The checkpoint of this moment (a collective: every rank calls it, rank 0 writes the result)."""
    assert state.plan is not None and state.first is not None
    return {
        "step": state.step,
        "spent": state.spent,
        "plan": asdict(state.plan),
        "first": asdict(state.first),
        "costs": [[list(key), asdict(cost)] for key, cost in meter.costs.items()],
        "progress": {
            "first_loss": state.first_loss,
            "loss": state.loss,
            "lr": state.lr,
            "logs": dict(state.logs),
            "seconds": state.seconds,
        },
        "model": trainer.task.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.precision.scaler.state_dict(),
        "find_unused": trainer.find_unused,
        "rng": world.gather(rng.capture()),
        "data": batches.state() if hasattr(batches, "state") else None,
        "world_size": world.size,
    }


def restore(
    saved: dict[str, Any], trainer: Trainer, meter: StepMeter, batches: Any, world: World
) -> RunState:
    """Put the task, optimizer, scaler, meter, data position and this rank's RNG back as saved."""
    trainer.task.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):
        trainer.precision.scaler.load_state_dict(saved["scaler"])
    trainer.find_unused = bool(saved.get("find_unused", False))
    for key, cost in saved["costs"]:
        meter.costs[tuple((name, tuple(shape), dtype) for name, shape, dtype in key)] = StepCost(**cost)
    if saved.get("data") is not None and hasattr(batches, "restore"):
        batches.restore(saved["data"])
    states = saved.get("rng") or []
    if world.rank < len(states):
        rng.restore(states[world.rank])
    progress = saved["progress"]
    return RunState(
        step=int(saved["step"]),
        spent=int(saved["spent"]),
        plan=Plan(**saved["plan"]),
        first=StepCost(**saved["first"]),
        first_loss=progress["first_loss"],
        loss=progress["loss"],
        lr=progress["lr"],
        logs=dict(progress["logs"]),
        seconds=float(progress["seconds"]),
    )
