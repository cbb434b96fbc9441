"""The loop's progress and everything a resumed run needs, as one checkpointable dict.

Saved: the task (method modules, EMA teachers, centres and scheduled values are all in its state_dict),
the trainer's state (optimizer, gradient scaler), every rank's RNG states, the meter's spent FLOPs,
steps, plan and measured step costs (a resumed run never re-measures or re-spends), and the data
position. Learning-rate and method schedules are functions of the fraction of the plan done, so they
resume from `step`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from budgetssl.engine import rng
from budgetssl.engine.checkpoint import CheckpointError, Checkpoints
from budgetssl.engine.distributed import World
from budgetssl.engine.schedule import step_fraction
from budgetssl.engine.trainer import Trainer
from budgetssl.meter.budget import Plan
from budgetssl.meter.step_meter import StepCost, StepMeter


@runtime_checkable
class Resumable(Protocol):
    """A batch stream that can say where it is and go back there (data.loader.Batches); any other
    iterator restarts from its beginning on resume."""

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


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
    started: float = field(default_factory=time.perf_counter)  # this attempt's start (not saved)

    @property
    def fraction(self) -> float:
        """The share of the plan done at this step: 0 before (and on) the first."""
        return 0.0 if self.plan is None else step_fraction(self.step, self.plan.steps)

    def wall_seconds(self) -> float:
        """Training wall time of every attempt so far, this one included."""
        return self.seconds + time.perf_counter() - self.started


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
        **meter.state_dict(),
        "progress": {
            "first_loss": state.first_loss,
            "loss": state.loss,
            "lr": state.lr,
            "logs": dict(state.logs),
            "seconds": state.wall_seconds(),
        },
        "model": trainer.task.state_dict(),
        **trainer.state_dict(),
        "rng": world.gather(rng.capture()),
        "data": batches.state() if isinstance(batches, Resumable) else None,
        "world_size": world.size,
    }


def restore(
    saved: dict[str, Any], trainer: Trainer, meter: StepMeter, batches: Any, world: World
) -> RunState:
    """Put the task, trainer, meter, data position and this rank's RNG back as saved."""
    trainer.task.load_state_dict(saved["model"])
    trainer.load_state_dict(saved)
    meter.load_state_dict(saved)
    if saved.get("data") is not None and isinstance(batches, Resumable):
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


class Checkpointer:
    """The loop's checkpoints: resume from the newest, save when due or asked, and once at the end.
    Without a `Checkpoints` folder it resumes nothing and saves nothing."""

    def __init__(
        self, checkpoints: Checkpoints | None, trainer: Trainer, meter: StepMeter, batches: Any
    ) -> None:
        self.checkpoints, self.trainer, self.meter, self.batches = checkpoints, trainer, meter, batches
        self.world = trainer.world
        self.saved_at: int | None = None

    def resume(self) -> RunState | None:
        """The state of the newest usable checkpoint, restored into trainer, meter and data; None if none."""
        if self.checkpoints is None:
            return None
        found = self.checkpoints.latest()
        state = restore(found[1], self.trainer, self.meter, self.batches, self.world) if found else None
        if len(set(self.world.gather(state.step if state else 0))) > 1:
            raise CheckpointError(
                f"the ranks found different checkpoints in {self.checkpoints.folder}; is it shared?"
            )
        self.saved_at = state.step if state is not None else None
        return state

    def due(self, step: int) -> bool:
        return self.checkpoints is not None and self.checkpoints.due(step)

    def save(self, state: RunState) -> str | None:
        """Save now (every rank calls it; rank 0 writes); the path, or None without checkpoints."""
        if self.checkpoints is None:
            return None
        path = self.checkpoints.save(snapshot(state, self.trainer, self.meter, self.batches, self.world))
        self.saved_at = state.step
        return str(path)

    def finish(self, state: RunState) -> None:
        """Save the final state (unless just saved) and keep only it: a re-run (or budgetssl-run's
        transfer) resumes at the end."""
        if self.checkpoints is None:
            return
        if self.saved_at != state.step:
            self.save(state)
        self.checkpoints.prune(keep=1)
