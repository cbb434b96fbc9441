"""The one training loop: metered first step, a plan from the budget, schedules over that plan.

The loop knows no method: a task is an nn.Module whose forward(batch) returns a StepOutput; its
optional on_step_start(fraction) runs before the forward, on_step_end(fraction) after the update.
Trainable parameters are the ones with requires_grad.

Distributed (torchrun): every rank measures its share of the first step and the shares are summed, so
the plan and the FLOPs are those of the global batch; the loss is averaged over ranks and the decision
to stop (budget spent, a preemption signal, a non-finite loss) is the same on every rank. With
`checkpoints`, the loop resumes from the newest checkpoint, saves every `checkpoint_every_steps`, on a
stop signal (then raises Interrupted) and once at the end.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from budgetssl.config.schema import TrainConfig
from budgetssl.engine import signals
from budgetssl.engine.checkpoint import CheckpointError, Checkpoints
from budgetssl.engine.distributed import World, all_reduce_gradients, check_in_sync, current, wrap
from budgetssl.engine.precision import Precision, resolve_device
from budgetssl.engine.progress import Progress
from budgetssl.engine.recipe import (
    ParamCounts,
    clip_per_parameter,
    count_params,
    decays,
    optimizer_kwargs,
    param_groups,
    peak_lr,
)
from budgetssl.engine.schedule import cosine, step_fraction, warmup_cosine
from budgetssl.engine.signals import Interrupted
from budgetssl.engine.state import RunState, restore, snapshot
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.budget import Plan
from budgetssl.meter.counter import PassCounter
from budgetssl.meter.step_meter import StepCost, StepMeter
from budgetssl.record.metrics import MetricsLog


class NonFiniteLoss(BudgetSSLError):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss is {loss} at step {step}; lower the learning rate or check the data")
        self.step = step


@dataclass
class LoopSettings:
    lr: float  # the peak lr, after batch scaling
    final_lr_ratio: float
    warmup_fraction: float
    weight_decay: float
    optimizer: str = "adamw"
    grad_clip: float | None = None
    precision: str = "fp32"
    device: str = "auto"
    log_every: int = 10
    progress: bool = True
    betas: tuple[float, float] | None = None  # null: the optimizer's default
    eps: float | None = None
    momentum: float | None = None
    weight_decay_end: float | None = None  # null: constant; else cosine weight_decay -> this
    no_weight_decay: tuple[str, ...] = ("biases_norms", "tokens")
    grad_clip_mode: str = "global"  # global | per_param

    @classmethod
    def from_train(cls, t: TrainConfig) -> LoopSettings:
        return cls(
            lr=peak_lr(t),
            final_lr_ratio=t.final_lr_ratio,
            warmup_fraction=t.warmup_fraction,
            weight_decay=t.weight_decay,
            optimizer=t.optimizer,
            grad_clip=t.grad_clip,
            precision=t.precision,
            device=t.device,
            log_every=t.log_every,
            progress=t.progress,
            betas=tuple(t.betas) if t.betas is not None else None,  # type: ignore[arg-type]
            eps=t.eps,
            momentum=t.momentum,
            weight_decay_end=t.weight_decay_end,
            no_weight_decay=tuple(t.no_weight_decay),
            grad_clip_mode=t.grad_clip_mode,
        )


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
    last_logs: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int = 0  # 0: this run was never interrupted (or restarted from scratch)
    world_size: int = 1
    param_counts: ParamCounts | None = None  # trained parameters with and without weight decay


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class Trainer:
    def __init__(self, task: nn.Module, settings: LoopSettings, world: World | None = None) -> None:
        self.settings = settings
        self.world = world or World()
        self.device = self.world.device if self.world.distributed else resolve_device(settings.device)
        self.task = task.to(self.device)
        self.precision = Precision(settings.precision, self.device)
        # A task may group its parameters (e.g. a backbone at a lower learning rate: "lr_scale");
        # otherwise the recipe's rule says which parameters skip weight decay.
        if hasattr(task, "param_groups"):
            groups = task.param_groups(settings.weight_decay)
        else:
            groups = param_groups(task, settings.weight_decay, settings.no_weight_decay)
        self.param_counts = count_params(groups)
        self.optimizer = create_optimizer_v2(
            groups,
            opt=settings.optimizer,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            **optimizer_kwargs(settings.betas, settings.eps, settings.momentum),
        )
        self.params = [p for p in task.parameters() if p.requires_grad]
        if not self.params:
            raise BudgetSSLError("nothing to train: every parameter of the task is frozen")
        self.ddp: nn.Module | None = None
        self.find_unused = False  # set by the metered first step (or a checkpoint)

    def model(self, metered: bool) -> nn.Module:
        """What runs the forward: the task itself, or (distributed, after the metered step) its DDP
        wrapper. The metered step runs the task itself so that the FLOP breakdown names its parts as
        on one process; its gradients are averaged by hand."""
        if not self.world.distributed or metered:
            return self.task
        if self.ddp is None:
            self.ddp = wrap(self.task, self.world, self.find_unused)
        return self.ddp

    def lr_at(self, fraction: float) -> float:
        s = self.settings
        end = s.lr * s.final_lr_ratio
        return warmup_cosine(fraction, peak=s.lr, end=end, warmup=s.warmup_fraction, start=end)

    def weight_decay_at(self, fraction: float) -> float:
        """Constant, or DINO's cosine from weight_decay to weight_decay_end over the budget."""
        s = self.settings
        if s.weight_decay_end is None:
            return s.weight_decay
        return cosine(fraction, s.weight_decay, s.weight_decay_end)

    def schedule(self, fraction: float) -> float:
        """Set this step's lr (times each group's lr_scale) and weight decay (decayed groups only)."""
        lr, wd = self.lr_at(fraction), self.weight_decay_at(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if decays(group):
                group["weight_decay"] = wd
        return lr

    def step(
        self,
        batch: dict[str, Any],
        counter: PassCounter | None,
        fraction: float,
        before_step_end: Callable[[], dict[str, float] | None] | None = None,
    ):
        """One update. `before_step_end` runs after the optimizer step and before the task's
        on_step_end (the metered first step plans the budget there, so EMA teachers know it)."""
        metered = counter is not None
        count = counter.count if counter is not None else (lambda *a, **k: nullcontext())
        scaler = self.precision.scaler
        model = self.model(metered)
        scheduled = self.task.on_step_start(fraction) if hasattr(self.task, "on_step_start") else {}
        with count("forward", self.task), self.precision.autocast():
            out = model(batch)
        with count("backward"):
            scaler.scale(out.loss).backward()
        if metered and self.world.distributed:
            self.find_unused = self.world.any(any(p.grad is None for p in self.params))
            all_reduce_gradients(self.params, self.world)
        if hasattr(self.task, "on_after_backward"):
            self.task.on_after_backward(fraction)  # e.g. DINO's frozen last layer drops its gradients
        with count("optimizer"):
            if self.settings.grad_clip is not None:
                scaler.unscale_(self.optimizer)
                if self.settings.grad_clip_mode == "per_param":
                    clip_per_parameter(self.params, self.settings.grad_clip)
                else:
                    torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
            scaler.step(self.optimizer)
            scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if before_step_end is not None:
            scheduled = {**scheduled, **(before_step_end() or {})}
        logs = {**scheduled, **out.logs}
        if hasattr(self.task, "on_step_end"):
            with count("after_step"):
                logs.update(self.task.on_step_end(fraction))
        return out.loss.detach(), logs

    def probe(self, batch: dict[str, Any], first: StepCost) -> PassCounter:
        """Cost of a step at a new input shape, measured on a throwaway copy (forward and backward),
        summed over ranks (every rank probes together)."""
        twin = copy.deepcopy(self.task)
        counter = PassCounter()
        with counter.count("forward", twin), self.precision.autocast():
            out = twin(batch)
        with counter.count("backward"):
            out.loss.backward()
        counter.passes = summed(counter.passes, self.world)
        for name in ("optimizer", "after_step"):  # already summed over ranks
            if name in first.breakdown:
                counter.passes[name] = dict(first.breakdown[name])
        return counter


class EarlyPlan:
    """The plan from the first step's cost before the task's after-step work (EMA updates), told to the
    task so that step's update already follows it. That work is element-wise and counts 0 FLOPs in
    practice; where it does not, the loop re-makes the plan from the whole step and tells it again."""

    def __init__(self, counter: PassCounter, world: World, make_plan: Callable[[int], Plan], task: nn.Module):
        self.counter, self.world, self.make_plan, self.task = counter, world, make_plan, task
        self.steps = 0

    def __call__(self) -> dict[str, float]:
        passes = summed(self.counter.passes, self.world)
        self.steps = self.make_plan(sum(p["total"] for p in passes.values())).steps
        return tell_plan(self.task, self.steps)


def tell_plan(task: nn.Module, steps: int) -> dict[str, float]:
    """Give the task the plan's length once it is known (budget-aware schedules, e.g. EMA teachers);
    what it returns are scheduled values the plan changed."""
    return (task.on_plan(steps) or {}) if hasattr(task, "on_plan") else {}


def summed(passes: dict[str, dict[str, int]], world: World) -> dict[str, dict[str, int]]:
    """Each entry of a step's FLOP breakdown summed over ranks: the cost of the global step."""
    keys = [(p, k) for p in sorted(passes) for k in sorted(passes[p])]
    totals = world.sum_ints([passes[p][k] for p, k in keys])
    out: dict[str, dict[str, int]] = {p: {} for p in passes}
    for (p, k), v in zip(keys, totals, strict=True):
        out[p][k] = v
    return out


def resume(
    checkpoints: Checkpoints | None, trainer: Trainer, meter: StepMeter, batches: Any
) -> RunState | None:
    """The state of the newest usable checkpoint, restored into trainer, meter and data; None if none."""
    if checkpoints is None:
        return None
    found = checkpoints.latest()
    state = restore(found[1], trainer, meter, batches, trainer.world) if found is not None else None
    if len(set(trainer.world.gather(state.step if state else 0))) > 1:
        raise CheckpointError(f"the ranks found different checkpoints in {checkpoints.folder}; is it shared?")
    return state


def train(
    task: nn.Module,
    batches: Iterator[dict[str, Any]],
    settings: LoopSettings,
    make_plan: Callable[[int], Plan],
    log: MetricsLog | None = None,
    label: str = "train",
    checkpoints: Checkpoints | None = None,
    distributed: bool = False,
) -> LoopResult:
    """Train until the plan is done or the next step would overspend its budget.

    `distributed`: train data-parallel over the ranks torchrun started (engine.distributed.start);
    otherwise every process trains on its own.
    """
    world = current() if distributed else World()
    trainer = Trainer(task, settings, world)
    meter = StepMeter()
    progress = Progress(settings.progress and world.is_main, label)
    state = resume(checkpoints, trainer, meter, batches) or RunState(lr=settings.lr)
    saved_at: int | None = state.step if state.plan is not None else None
    resumed_from = state.step
    if log is not None:
        log.discard_after(label, state.step)  # rows an interrupted attempt logged past its checkpoint
    if state.plan is not None:
        tell_plan(task, state.plan.steps)
        progress.start(state.plan.steps, state.plan.budget_flops)
        progress.update(state.step, state.spent, state.loss)
    task.train()
    start = time.perf_counter()
    tick = start

    def save() -> str | None:
        nonlocal saved_at
        if checkpoints is None:
            return None
        path = checkpoints.save(snapshot(elapsed(), trainer, meter, batches, world))
        saved_at = state.step
        return str(path)

    def elapsed() -> RunState:
        return replace(state, seconds=state.seconds + time.perf_counter() - start)

    try:
        while state.plan is None or state.step < state.plan.steps:
            batch = to_device(next(batches), trainer.device)
            data_seconds = time.perf_counter() - tick
            fraction = 0.0 if state.plan is None else step_fraction(state.step, state.plan.steps)
            lr = trainer.schedule(fraction)
            cost = meter.known(batch)
            if state.plan is None:
                counter = PassCounter()
                early = EarlyPlan(counter, world, make_plan, task)
                loss, logs = trainer.step(batch, counter, fraction, before_step_end=early)
                counter.passes = summed(counter.passes, world)
                state.first = cost = meter.record(batch, counter)
                state.plan = make_plan(cost.total)
                if state.plan.steps != early.steps:
                    tell_plan(task, state.plan.steps)
                progress.start(state.plan.steps, state.plan.budget_flops)
            else:
                if world.any(cost is None):  # every rank prices the new shape, so the sum is global
                    cost = meter.record(batch, trainer.probe(batch, state.first))  # type: ignore[arg-type]
                assert cost is not None
                if state.spent + cost.total > state.plan.budget_flops:
                    break
                loss, logs = trainer.step(batch, None, fraction)
            state.spent += cost.total
            state.step += 1
            loss_value, stop = world.step_sync(loss, signals.requested() is not None)
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(state.step - 1, loss_value)
            state.loss, state.lr, state.logs = loss_value, lr, logs
            if state.step == 1:
                state.first_loss = loss_value
            now = time.perf_counter()
            if log is not None and (
                state.step % settings.log_every == 0 or state.step == 1 or state.step == state.plan.steps
            ):
                seconds = {"step_seconds": now - tick - data_seconds, "data_seconds": data_seconds}
                log.write(
                    {"stage": label, "step": state.step, "flops": state.spent, "loss": loss_value, "lr": lr}
                    | seconds
                    | logs
                )
            progress.update(state.step, state.spent, loss_value)
            tick = now
            path = None
            if stop or (checkpoints is not None and checkpoints.due(state.step)):
                path = save()
            if stop:
                world.barrier()  # rank 0's checkpoint is on disk before any rank exits
                raise Interrupted(signals.requested() or "a stop signal on another rank", state.step, path)
    finally:
        progress.close()
    assert state.plan is not None and state.first is not None
    check_in_sync(task, world)
    if checkpoints is not None:
        if saved_at != state.step:
            save()
        checkpoints.prune(keep=1)  # the final one: a re-run (or budgetssl-run's transfer) resumes at the end
    return LoopResult(
        plan=state.plan,
        steps=state.step,
        flops=state.spent,
        breakdown=state.first.breakdown,
        first_loss=state.first_loss,
        final_loss=state.loss,
        wall_seconds=elapsed().seconds,
        final_lr=state.lr,
        last_logs=state.logs,
        resumed_from_step=resumed_from,
        world_size=world.size,
        param_counts=trainer.param_counts,
    )
