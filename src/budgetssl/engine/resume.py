"""The loop's progress and everything a resumed run needs, as one checkpointable dict.

Saved: the task (method modules, EMA teachers, centres and scheduled values are all in its state_dict),
the trainer's state (optimizer, gradient scaler), every rank's RNG states, the meter's spent FLOPs,
steps, plan and measured step costs (a resumed run never re-measures or re-spends), and the data
position. Learning-rate and method schedules are functions of the step's clock, made from `step` and
the plan (engine/schedule.py Timeline), so they resume from `step`. A checkpoint may also start another
run: a ladder's rung branches from its trunk's checkpoint with its own plan (stages/ladder.py).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from budgetssl.engine import rng
from budgetssl.engine.checkpoint_files import CheckpointError, Checkpoints
from budgetssl.engine.distributed import World
from budgetssl.engine.task import host_values
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
class Timing:
    """Where training's wall time went, over every attempt of the run (seconds; saved in checkpoints)."""

    data: float = 0.0  # waiting for the next batch (the loader, and views made as it hands a batch out)
    first_step: float = 0.0  # the metered first step, until its loss was on the host
    probes: float = 0.0  # measuring a new input shape on a throwaway copy of the task
    checkpoint: float = 0.0  # training stopped for checkpoints (a host copy, or waiting for a write)
    checkpoints: int = 0  # checkpoints saved
    monitor: float = 0.0  # the label-free monitors' calls (outside the meter and the budget)

    def meter_seconds(self, wall: float, steps: int) -> float:
        """Time spent measuring FLOPs: every probe, and what the metered first step took beyond an
        ordinary step (the mean of the others; with no other step, all of it). An upper bound: the
        first step's one-off warm-up (allocations, kernel choice) counts as metering."""
        if steps <= 1:
            return self.probes + self.first_step
        other = self.data + self.checkpoint + self.probes + self.first_step + self.monitor
        ordinary = max(0.0, wall - other) / (steps - 1)
        return self.probes + max(0.0, self.first_step - ordinary)


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
    timing: Timing = field(default_factory=Timing)  # where the wall time went, this attempt included
    # The monitors' record: `init` (before step 1), `history` ([step, values] per monitored step),
    # `calls` and `flops` (engine/loop.py Monitored); saved, so a resumed run keeps its init values.
    monitors: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)  # this attempt's start (not saved)

    def take_losses(self, read: list[tuple[int, float]]) -> None:
        """Take the losses just read on the host, (step, value) pairs: the first step's, the latest."""
        if read and read[0][0] == 1:
            self.first_loss = read[0][1]
        if read:
            self.loss = read[-1][1]

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
            "logs": host_values(state.logs),
            "seconds": state.wall_seconds(),
            "timing": asdict(state.timing),
            "monitors": state.monitors,
        },
        "model": trainer.task.state_dict(),
        **trainer.state_dict(),
        "rng": world.gather(rng.capture()),
        "data": batches.state() if isinstance(batches, Resumable) else None,
        "world_size": world.size,
    }


def branched(saved: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The checkpoint `saved` as the first of another run that trains on from it under `plan` (a ladder's
    rung from its trunk at the rung's branch point): the same state at the same step, the new plan; the
    new run's `Checkpoints.save` writes it with that run's config."""
    state = {k: v for k, v in saved.items() if k not in ("format", "config")}
    return {**state, "plan": asdict(plan)}


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
        timing=Timing(**progress.get("timing", {})),  # absent from checkpoints written before it
        monitors=dict(progress.get("monitors") or {}),
    )


class SaveAndResume:
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

    def save(self, state: RunState, wait: bool = False) -> str | None:
        """Save now (every rank calls it; rank 0 writes, in the background unless `wait`); the path, or
        None without checkpoints. The time training stood still for it goes into `state.timing`."""
        if self.checkpoints is None:
            return None
        start = time.perf_counter()
        state.timing.checkpoints += 1
        path = self.checkpoints.save(snapshot(state, self.trainer, self.meter, self.batches, self.world))
        if wait:
            self.checkpoints.wait()
        state.timing.checkpoint += time.perf_counter() - start
        self.saved_at = state.step
        return str(path)

    def finish(self, state: RunState) -> None:
        """Save the final state (unless just saved), wait until it is on disk, and keep only it: a re-run
        (or budgetssl-run's transfer) resumes at the end."""
        if self.checkpoints is None:
            return
        if self.saved_at != state.step:
            self.save(state, wait=True)
        start = time.perf_counter()
        self.checkpoints.wait()
        state.timing.checkpoint += time.perf_counter() - start
        self.checkpoints.prune(keep=1)

    def abandon(self) -> None:
        """Training failed: let a write under way finish (its own error, if any, is not the failure's)."""
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.wait()
        except Exception as e:  # the training error is the one to report
            warnings.warn(f"the last checkpoint was not written: {e}", stacklevel=2)
