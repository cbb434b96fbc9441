"""The one training loop: metered first step, a plan from the budget, schedules over that plan.

The loop knows no method: a task is an nn.Module whose forward(batch) returns a StepOutput; its
optional on_step_start(fraction) runs before the forward, on_step_end(fraction) after the update.
Trainable parameters are the ones with requires_grad.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from budgetssl.config.schema import TrainConfig
from budgetssl.engine.precision import Precision, resolve_device
from budgetssl.engine.progress import Progress
from budgetssl.engine.schedule import step_fraction, warmup_cosine
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
    lr: float
    final_lr_ratio: float
    warmup_fraction: float
    weight_decay: float
    optimizer: str = "adamw"
    grad_clip: float | None = None
    precision: str = "fp32"
    device: str = "auto"
    log_every: int = 10
    progress: bool = True

    @classmethod
    def from_train(cls, t: TrainConfig) -> LoopSettings:
        return cls(
            lr=t.lr,
            final_lr_ratio=t.final_lr_ratio,
            warmup_fraction=t.warmup_fraction,
            weight_decay=t.weight_decay,
            optimizer=t.optimizer,
            grad_clip=t.grad_clip,
            precision=t.precision,
            device=t.device,
            log_every=t.log_every,
            progress=t.progress,
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


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class Trainer:
    def __init__(self, task: nn.Module, settings: LoopSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.task = task.to(self.device)
        self.precision = Precision(settings.precision, self.device)
        # A task may group its parameters (e.g. a backbone at a lower learning rate: "lr_scale").
        groups = task.param_groups(settings.weight_decay) if hasattr(task, "param_groups") else task
        self.optimizer = create_optimizer_v2(
            groups, opt=settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.params = [p for p in task.parameters() if p.requires_grad]
        if not self.params:
            raise BudgetSSLError("nothing to train: every parameter of the task is frozen")

    def lr_at(self, fraction: float) -> float:
        s = self.settings
        end = s.lr * s.final_lr_ratio
        return warmup_cosine(fraction, peak=s.lr, end=end, warmup=s.warmup_fraction, start=end)

    def step(self, batch: dict[str, Any], counter: PassCounter | None, fraction: float):
        count = counter.count if counter is not None else (lambda *a, **k: nullcontext())
        scaler = self.precision.scaler
        scheduled = self.task.on_step_start(fraction) if hasattr(self.task, "on_step_start") else {}
        with count("forward", self.task), self.precision.autocast():
            out = self.task(batch)
        with count("backward"):
            scaler.scale(out.loss).backward()
        with count("optimizer"):
            if self.settings.grad_clip is not None:
                scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
            scaler.step(self.optimizer)
            scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        logs = {**scheduled, **out.logs}
        if hasattr(self.task, "on_step_end"):
            with count("after_step"):
                logs.update(self.task.on_step_end(fraction))
        return out.loss.detach(), logs

    def probe(self, batch: dict[str, Any], first: StepCost) -> PassCounter:
        """Cost of a step at a new input shape, measured on a throwaway copy (forward and backward)."""
        twin = copy.deepcopy(self.task)
        counter = PassCounter()
        with counter.count("forward", twin), self.precision.autocast():
            out = twin(batch)
        with counter.count("backward"):
            out.loss.backward()
        for name in ("optimizer", "after_step"):
            if name in first.breakdown:
                counter.passes[name] = dict(first.breakdown[name])
        return counter


def train(
    task: nn.Module,
    batches: Iterator[dict[str, Any]],
    settings: LoopSettings,
    make_plan: Callable[[int], Plan],
    log: MetricsLog | None = None,
    label: str = "train",
) -> LoopResult:
    """Train until the plan is done or the next step would overspend its budget."""
    trainer = Trainer(task, settings)
    meter = StepMeter()
    progress = Progress(settings.progress, label)
    plan: Plan | None = None
    first: StepCost | None = None
    spent = step = 0
    first_loss = loss_value = math.nan
    logs: dict[str, float] = {}
    lr = settings.lr
    task.train()
    start = time.perf_counter()
    tick = start
    try:
        while plan is None or step < plan.steps:
            batch = to_device(next(batches), trainer.device)
            data_seconds = time.perf_counter() - tick
            fraction = 0.0 if plan is None else step_fraction(step, plan.steps)
            lr = trainer.lr_at(fraction)
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            cost = meter.known(batch)
            if plan is None:
                counter = PassCounter()
                loss, logs = trainer.step(batch, counter, fraction)
                first = cost = meter.record(batch, counter)
                plan = make_plan(cost.total)
                progress.start(plan.steps, plan.budget_flops)
            else:
                if cost is None:
                    cost = meter.record(batch, trainer.probe(batch, first))  # type: ignore[arg-type]
                if spent + cost.total > plan.budget_flops:
                    break
                loss, logs = trainer.step(batch, None, fraction)
            spent += cost.total
            step += 1
            loss_value = float(loss)
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step - 1, loss_value)
            if step == 1:
                first_loss = loss_value
            now = time.perf_counter()
            if log is not None and (step % settings.log_every == 0 or step == 1 or step == plan.steps):
                log.write(
                    {
                        "stage": label,
                        "step": step,
                        "flops": spent,
                        "loss": loss_value,
                        "lr": lr,
                        "step_seconds": now - tick - data_seconds,
                        "data_seconds": data_seconds,
                        **logs,
                    }
                )
            progress.update(step, spent, loss_value)
            tick = now
    finally:
        progress.close()
    assert plan is not None and first is not None
    return LoopResult(
        plan=plan,
        steps=step,
        flops=spent,
        breakdown=first.breakdown,
        first_loss=first_loss,
        final_loss=loss_value,
        wall_seconds=time.perf_counter() - start,
        final_lr=lr,
        last_logs=logs,
    )
