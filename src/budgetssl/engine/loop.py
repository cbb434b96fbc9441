"""The one training loop: a metered first step, a plan from the budget, schedules over that plan.

Each step's schedules read its Clock (engine/schedule.py), which the settings' Timeline makes from the
step and the plan: one fraction under cosine; under wsd a warm-up position and an anneal position. A
run may stop before its plan's end (`until`: a ladder's trunk at a rung's branch point), with its
schedules still those of the whole plan.

The loop knows no method: it trains a Task (engine.task) with a Trainer (engine.trainer: one update),
prices every step with the meter before spending it (engine.metering), checkpoints and resumes through
a SaveAndResume (engine.state) and stops on a preemption signal (engine.signals) after saving. Under
torchrun the loss is averaged over ranks and the decision to stop (budget spent, a signal, a non-finite
loss) is the same on every rank.

Nothing in a step waits for the device: losses stay on it until a logged step, a checkpoint or the end
reads them (engine.losses, which also stops the run at the first non-finite one, with its step), and a
checkpoint is written in the background. Where the wall time went (data, metering, checkpoints,
monitors) is kept in the state and returned. The data time is how long the loop blocks for the next
batch: a Batches stream (data/loader.py) views the batch after the current one on a thread while the
step runs, so what it counts is the loader's part of the next batch and whatever of the views the step
did not cover; the loop ends that thread as it ends.

A stage may pass a `monitor` (engine/monitoring.py): called before the first step, on every logged step
(its values join that step's metrics row, prefixed `monitor/`) and at the end, outside the meter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from budgetssl.data.loader import Batches
from budgetssl.engine import signals
from budgetssl.engine.checkpoint_files import Checkpoints
from budgetssl.engine.distributed import World, check_in_sync, current
from budgetssl.engine.losses import LossReader, NonFiniteLoss
from budgetssl.engine.metering import first_step, price
from budgetssl.engine.monitoring import Monitor, Monitoring
from budgetssl.engine.progress import Progress
from budgetssl.engine.recipe import ParamCounts
from budgetssl.engine.resume import RunState, SaveAndResume, Timing
from budgetssl.engine.settings import LoopSettings
from budgetssl.engine.signals import Interrupted
from budgetssl.engine.task import Task, host_values
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.budget import Budget, Plan
from budgetssl.meter.step_meter import StepMeter
from budgetssl.record.metrics import MetricsLog

__all__ = ["LoopResult", "NonFiniteLoss", "logged", "train"]

MONITOR_PREFIX = "monitor/"  # a monitor's values in a metrics row


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
    timing: Timing | None = None  # where the wall time went (every attempt)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where it trained
    loss_reads: int = 0  # host reads of the loss in this attempt (each one transfer)
    runtime: dict[str, Any] = field(default_factory=dict)  # how the steps ran: Trainer.runtime()
    monitors: dict[str, Any] = field(default_factory=dict)  # RunState.monitors: init, history, calls, flops

    @property
    def data_wait_share(self) -> float:
        """The fraction of the training wall time spent waiting for data."""
        return self.timing.data / self.wall_seconds if self.timing and self.wall_seconds > 0 else 0.0

    @property
    def meter_seconds(self) -> float:
        return self.timing.meter_seconds(self.wall_seconds, self.steps) if self.timing else 0.0


def last_step(plan: Plan, until: Callable[[Plan], int] | None) -> int:
    """The step this call trains to: the plan's end, or earlier where `until` says (a trunk's stop)."""
    return plan.steps if until is None else min(plan.steps, until(plan))


def logged(step: int, every: int, last: int) -> bool:
    """Whether step `step` gets a metrics row: the first, every `every`-th and the last."""
    return step == 1 or step % every == 0 or step == last


class Window:
    """The steps since the last metrics row: their mean step and data seconds, for the next row. Means
    over the window are exact with an asynchronous device, where one step's host time is not its own."""

    def __init__(self, state: RunState, now: float) -> None:
        self.reset(state, now)

    def reset(self, state: RunState, now: float) -> None:
        self.start, self.step = now, state.step
        self.data, self.checkpoint = state.timing.data, state.timing.checkpoint
        self.monitor = state.timing.monitor

    def row(self, state: RunState, now: float) -> dict[str, float]:
        steps = max(1, state.step - self.step)
        data = state.timing.data - self.data
        paused = state.timing.checkpoint - self.checkpoint + state.timing.monitor - self.monitor
        other = now - self.start - data - paused
        timing = {"step_seconds": other / steps, "data_seconds": data / steps}
        self.reset(state, now)
        return timing


def train(
    task: Task,
    batches: Iterator[dict[str, Any]],
    settings: LoopSettings,
    budget: Budget,
    log: MetricsLog | None = None,
    label: str = "train",
    checkpoints: Checkpoints | None = None,
    distributed: bool = False,
    until: Callable[[Plan], int] | None = None,
    monitor: Monitor | None = None,
) -> LoopResult:
    """Train until the plan is done or the next step would overspend the budget.

    `distributed`: train data-parallel over the ranks torchrun started (engine.distributed.start);
    otherwise every process trains on its own. With `checkpoints`, resume from the newest, save every
    `checkpoint_every_steps`, on a stop signal (then raise Interrupted) and once at the end. `until`:
    stop after step until(plan) instead (once the plan is known; the first step is always taken), saving
    there as at an end, so a later call with a later `until` resumes from it. `monitor`: run before
    the first step, on logged steps and at the end (engine/monitoring.py), its values in the rows.
    """
    world = current() if distributed else World()
    trainer = Trainer(task, settings, world)
    meter = StepMeter()
    saver = SaveAndResume(checkpoints, trainer, meter, batches)
    progress = Progress(settings.progress and world.is_main, label)
    losses = LossReader(world)
    state = saver.resume() or RunState(lr=settings.recipe.lr)
    resumed_from = state.step
    if log is not None:
        log.discard_after(label, state.step)  # rows an interrupted attempt logged past its checkpoint
    timeline = settings.timeline
    if state.plan is not None:
        task.on_plan(timeline.reference_steps(state.plan))
        progress.start(state.plan.steps, state.plan.budget_flops)
        progress.update(state.step, state.spent, state.loss)
    monitoring = Monitoring(monitor, state, trainer.device) if monitor is not None else None
    task.train()
    state.started = time.perf_counter()
    if monitoring is not None:
        monitoring.at_init()
    tick = time.perf_counter()
    window = Window(state, tick)
    try:
        while state.plan is None or state.step < last_step(state.plan, until):
            batch = to_device(next(batches), trainer.device)
            ready = time.perf_counter()
            state.timing.data += ready - tick
            clock = timeline.clock(state.step, state.plan)
            lr = trainer.schedule(clock)
            metered = state.plan is None
            if metered:
                first = first_step(trainer, meter, budget, batch, clock, timeline.reference_steps)
                loss, logs, cost = first.loss, first.logs, first.cost
                state.first, state.plan = first.cost, first.plan
                progress.start(state.plan.steps, state.plan.budget_flops)
                stop = False  # under torchrun the first vote comes with the next step's price
            else:
                priced = price(trainer, meter, batch, clock, signals.requested() is not None)
                cost, stop = priced.cost, priced.stop
                state.timing.probes += priced.seconds
                if state.spent + cost.total > state.plan.budget_flops:
                    break
                loss, logs = trainer.step(batch, None, clock)
            if not world.distributed:  # one process stops as soon as it is asked; ranks when one voted
                stop = signals.requested() is not None
            state.spent += cost.total
            state.step += 1
            losses.add(loss, state.step)
            state.lr, state.logs = lr, logs
            save = stop or saver.due(state.step)
            last = last_step(state.plan, until)
            if save or losses.full or logged(state.step, settings.log_every, last):
                # The host reads the losses (a non-finite one ends the run here, with its step), and
                # before a checkpoint the weights are checked too: none holds non-finite weights.
                state.take_losses(losses.read(state.step, trainer.params if save else None))
            now = time.perf_counter()
            if metered:
                state.timing.first_step += now - ready
            if logged(state.step, settings.log_every, last) and (log is not None or monitoring is not None):
                monitored = monitoring.at(state.step) if monitoring is not None else {}
                row = {"stage": label, "step": state.step, "flops": state.spent, "loss": state.loss, "lr": lr}
                row |= window.row(state, time.perf_counter()) | host_values(logs)
                if log is not None:
                    log.write(row | {f"{MONITOR_PREFIX}{k}": v for k, v in monitored.items()})
            progress.update(state.step, state.spent, state.loss)
            path = saver.save(state, wait=stop) if save else None
            if stop:
                world.barrier()  # rank 0's checkpoint is on disk before any rank exits
                raise Interrupted(signals.requested() or "a stop signal on another rank", state.step, path)
            tick = time.perf_counter()
        # The last step's loss (read already unless the budget ended the plan early), and a check
        # before the final checkpoint.
        if monitoring is not None:
            monitoring.at(state.step)  # the end (monitored already where the last step was logged)
        final_save = checkpoints is not None and saver.saved_at != state.step
        state.take_losses(losses.read(state.step, trainer.params if final_save else None))
    except BaseException:
        saver.abandon()
        raise
    finally:
        progress.close()
        if isinstance(batches, Batches):
            batches.close()  # its views thread ends with the loop (the stream stays usable)
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
        timing=state.timing,
        device=trainer.device,
        loss_reads=losses.reads,
        runtime=trainer.runtime(),
        monitors=state.monitors,
    )
