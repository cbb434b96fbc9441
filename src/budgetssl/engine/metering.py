"""The meter's side of the loop: the first step measured and the budget planned from it; later steps
priced before they are spent, a new input shape measured first by the same step on a throwaway copy.

Distributed, every rank measures its share and the shares are summed, so the plan and the FLOPs are
those of the global batch; each function here is a collective that every rank calls together.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from budgetssl.engine.distributed import World
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import Task
from budgetssl.engine.trainer import Trainer
from budgetssl.meter.budget import Budget, Plan
from budgetssl.meter.counter import PassCounter
from budgetssl.meter.step_meter import StepCost, StepMeter

Span = Callable[[Plan], int]  # the steps a plan's schedules span (the EMA teacher is planned on them)


def plan_steps(plan: Plan) -> int:
    return plan.steps


@dataclass
class FirstStep:
    """The measured first update: its loss and logs, its cost and the plan made from that cost."""

    loss: torch.Tensor
    logs: dict[str, float]
    cost: StepCost
    plan: Plan


class EarlyPlan:
    """The plan from the first step's cost before the task's after-step work (EMA updates), told to the
    task so that step's update already follows it. That work is element-wise and counts 0 FLOPs in
    practice; where it does not, `first_step` re-makes the plan from the whole step and tells it again."""

    def __init__(
        self, counter: PassCounter, world: World, budget: Budget, task: Task, span: Span = plan_steps
    ) -> None:
        self.counter, self.world, self.budget, self.task, self.span = counter, world, budget, task, span
        self.steps = 0

    def __call__(self) -> dict[str, float]:
        passes = summed(self.counter.passes, self.world)
        self.steps = self.span(self.budget.plan(sum(p["total"] for p in passes.values())))
        return self.task.on_plan(self.steps)


def first_step(
    trainer: Trainer,
    meter: StepMeter,
    budget: Budget,
    batch: dict[str, Any],
    fraction: Clock | float,
    span: Span = plan_steps,
) -> FirstStep:
    """Run the first update under the counter, remember its cost and plan the budget from it. The task
    is told the steps its schedules span, `span(plan)` (engine/schedule.py Timeline.reference_steps)."""
    counter = PassCounter()
    early = EarlyPlan(counter, trainer.world, budget, trainer.task, span)
    loss, logs = trainer.step(batch, counter, fraction, before_step_end=early)
    counter.passes = summed(counter.passes, trainer.world)
    cost = meter.record(batch, counter)
    plan = budget.plan(cost.total)
    if span(plan) != early.steps:
        trainer.task.on_plan(span(plan))
    return FirstStep(loss, logs, cost, plan)


@dataclass
class Price:
    """A step's cost, whether any rank voted to stop, and the seconds spent measuring a new shape."""

    cost: StepCost
    stop: bool = False
    seconds: float = 0.0


def price(
    trainer: Trainer, meter: StepMeter, batch: dict[str, Any], clock: Clock | float, stop: bool = False
) -> Price:
    """The cost of a step on `batch` at `clock`: known from its shape, or (on every rank, so the sum is
    global) measured now by `probe`. Under torchrun the one host collective this makes (never a device
    synchronisation) also carries this rank's vote to `stop`, so every rank learns whether any was asked
    to stop and stops after the same step."""
    cost = meter.known(batch)
    unknown, stop = trainer.world.any_of(cost is None, stop)
    if not unknown:
        assert cost is not None
        return Price(cost, stop)
    start = time.perf_counter()
    cost = meter.record(batch, probe(trainer, batch, clock))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)  # the probe's own time (a new shape is rare)
    return Price(cost, stop, time.perf_counter() - start)


def probe(trainer: Trainer, batch: dict[str, Any], clock: Clock | float) -> PassCounter:
    """The step the loop runs (Trainer.step at `clock`: the task's hooks, channels-last, every pass),
    counted, on a throwaway copy of the trainer: the task deep-copied, with an optimizer and a gradient
    scaler of its own in the same state, so the run's own weights and state are untouched and the count
    is the real step's at this shape. Summed over ranks (every rank probes together)."""
    twin = Trainer(copy.deepcopy(trainer.task), trainer.settings, trainer.world)
    twin.load_state_dict(copy.deepcopy(trainer.state_dict()))
    twin.channels_last = trainer.channels_last  # the task's copy keeps its memory format
    counter = PassCounter()
    twin.step(batch, counter, clock)
    counter.passes = summed(counter.passes, trainer.world)
    return counter


def summed(passes: dict[str, dict[str, int]], world: World) -> dict[str, dict[str, int]]:
    """Each entry of a step's FLOP breakdown summed over ranks: the cost of the global step."""
    keys = [(p, k) for p in sorted(passes) for k in sorted(passes[p])]
    totals = world.sum_ints([passes[p][k] for p, k in keys])
    out: dict[str, dict[str, int]] = {p: {} for p in passes}
    for (p, k), v in zip(keys, totals, strict=True):
        out[p][k] = v
    return out
