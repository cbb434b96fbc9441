"""The one training loop: a metered first step, a plan from the budget, schedules over that plan.

The loop knows no method: it trains a Task (engine.task) with a Trainer (engine.trainer: one update),
prices every step with the meter before spending it (engine.metering), checkpoints and resumes through
a Checkpointer (engine.state) and stops on a preemption signal (engine.signals) after saving. Under
torchrun the loss is averaged over ranks and the decision to stop (budget spent, a signal, a non-finite
loss) is the same on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from budgetssl.engine import signals
from budgetssl.engine.checkpoint import Checkpoints
from budgetssl.engine.distributed import World, check_in_sync, current
from budgetssl.engine.metering import first_step, price
from budgetssl.engine.progress import Progress
from budgetssl.engine.recipe import ParamCounts
from budgetssl.engine.settings import LoopSettings
from budgetssl.engine.signals import Interrupted
from budgetssl.engine.state import Checkpointer, RunState
from budgetssl.engine.task import Task
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.budget import Budget, Plan
from budgetssl.meter.step_meter import StepMeter
from budgetssl.record.metrics import MetricsLog


class NonFiniteLoss(BudgetSSLError):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss is {loss} at step {step}; lower the learning rate or check the data")
        self.step = step


@dataclass
class LoopResult:
    plan: Plan
    steps: int
    flops: int
    breakdown: dict[str, dict[str, int]]
    first_loss: float
    final_loss: float
    wall_seconds: float
    final_lr: float
    resumed_from_step: int = 0  # 0: this run was never interrupted (or restarted from scratch)
    world_size: int = 1
    param_counts: ParamCounts | None = None  # trained parameters with and without weight decay


def logged(step: int, every: int, last: int) -> bool:
    """Whether step `step` gets a metrics row: the first, every `every`-th and the last."""
    return step == 1 or step % every == 0 or step == last


def train(
    task: Task,
    batches: Iterator[dict[str, Any]],
    settings: LoopSettings,
    budget: Budget,
    log: MetricsLog | None = None,
    label: str = "train",
    checkpoints: Checkpoints | None = None,
    distributed: bool = False,
) -> LoopResult:
    """Train until the plan is done or the next step would overspend the budget.

    `distributed`: train data-parallel over the ranks torchrun started (engine.distributed.start);
    otherwise every process trains on its own. With `checkpoints`, resume from the newest, save every
    `checkpoint_every_steps`, on a stop signal (then raise Interrupted) and once at the end.
    """
    world = current() if distributed else World()
    trainer = Trainer(task, settings, world)
    meter = StepMeter()
    saver = Checkpointer(checkpoints, trainer, meter, batches)
    progress = Progress(settings.progress and world.is_main, label)
    state = saver.resume() or RunState(lr=settings.recipe.lr)
    resumed_from = state.step
    if log is not None:
        log.discard_after(label, state.step)  # rows an interrupted attempt logged past its checkpoint
    if state.plan is not None:
        task.on_plan(state.plan.steps)
        progress.start(state.plan.steps, state.plan.budget_flops)
        progress.update(state.step, state.spent, state.loss)
    task.train()
    state.started = tick = time.perf_counter()
    try:
        while state.plan is None or state.step < state.plan.steps:
            batch = to_device(next(batches), trainer.device)
            data_seconds = time.perf_counter() - tick
            fraction = state.fraction
            lr = trainer.schedule(fraction)
            if state.plan is None:
                first = first_step(trainer, meter, budget, batch, fraction)
                loss, logs, cost = first.loss, first.logs, first.cost
                state.first, state.plan = first.cost, first.plan
                progress.start(state.plan.steps, state.plan.budget_flops)
            else:
                cost = price(trainer, meter, batch, state.first)  # type: ignore[arg-type]
                if state.spent + cost.total > state.plan.budget_flops:
                    break
                loss, logs = trainer.step(batch, None, fraction)
            state.spent += cost.total
            state.step += 1
            loss_value, stop = world.step_sync(loss, signals.requested() is not None)
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(state.step - 1, loss_value)
            if state.step == 1:
                state.first_loss = loss_value
            state.loss, state.lr, state.logs = loss_value, lr, logs
            now = time.perf_counter()
            if log is not None and logged(state.step, settings.log_every, state.plan.steps):
                row = {"stage": label, "step": state.step, "flops": state.spent, "loss": loss_value, "lr": lr}
                timing = {"step_seconds": now - tick - data_seconds, "data_seconds": data_seconds}
                log.write(row | timing | logs)
            progress.update(state.step, state.spent, loss_value)
            tick = now
            path = saver.save(state) if stop or saver.due(state.step) else None
            if stop:
                world.barrier()  # rank 0's checkpoint is on disk before any rank exits
                raise Interrupted(signals.requested() or "a stop signal on another rank", state.step, path)
    finally:
        progress.close()
    assert state.plan is not None and state.first is not None
    check_in_sync(task, world)
    saver.finish(state)
    return LoopResult(
        plan=state.plan,
        steps=state.step,
        flops=state.spent,
        breakdown=state.first.breakdown,
        first_loss=state.first_loss,
        final_loss=state.loss,
        wall_seconds=state.wall_seconds(),
        final_lr=state.lr,
        resumed_from_step=resumed_from,
        world_size=world.size,
        param_counts=trainer.param_counts,
    )
