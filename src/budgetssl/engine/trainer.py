"""One optimizer step of a task: schedules, mixed precision, the task's hooks, clipping, and DDP.

Trainable parameters are the ones with requires_grad; a task may group them itself (`param_groups`),
otherwise the recipe's rule says which skip weight decay.

The GPU path: bf16/fp16 autocast and TF32 (engine/precision.py), the optimizer's fused kernels on CUDA
(`train.fused_optimizer`), channels-last tensors where the task slides convolutions over images (a CNN
backbone, a convolutional head) on CUDA, and `train.compile` (torch.compile of the task's forward, under
DDP's wrapper when distributed). The metered first step and the shape probes always run the task eagerly:
FLOPs are counted on the uncompiled ops, whatever runs the other steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from timm.optim import create_optimizer_v2, get_optimizer_info
from torch import nn

from budgetssl.engine.distributed import World, all_reduce_gradients, wrap
from budgetssl.engine.precision import Precision, resolve_device
from budgetssl.engine.recipe import clip_per_parameter, count_params, decays, param_groups
from budgetssl.engine.schedule import Clock
from budgetssl.engine.settings import LoopSettings
from budgetssl.engine.task import Task
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.counter import PassCounter

# torch.compile's options for `train.compile=true` (inductor, torch's default); tests choose a backend
# that needs no C++ compiler here.
COMPILE_OPTIONS: dict[str, Any] = {}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def optimizer_impl(name: str, device: torch.device, fused: bool) -> tuple[str, dict[str, Any]]:
    """Which kernels the optimizer `name` (timm's name) runs on `device`, and the options that pick them:
    `fused` (one kernel updates every parameter: torch's AdamW, Adam and SGD, on CUDA and, since torch
    2.4, on CPU) when asked for and the optimizer has it; else `foreach` (batched over parameters: what
    torch's optimizers and timm's LARS and LAMB choose themselves on CUDA where they have it); else
    `for-loop` (one parameter at a time: torch's choice on CPU). The fused kernel replaces an op per
    parameter and operation with one, which on CPU at small sizes is much of a step's time and of the
    metered step's extra (the meter's cost is per op); the measured steps: benchmarks/README.md."""
    try:
        accepts = inspect.signature(get_optimizer_info(name.lower().split("_")[-1]).opt_class).parameters
    except (ValueError, KeyError, TypeError):  # an unknown name: create_optimizer_v2 says so
        return "for-loop", {}
    if device.type in ("cuda", "cpu") and fused and "fused" in accepts:
        return "fused", {"fused": True}
    if device.type == "cuda" and "foreach" in accepts:
        return "foreach", {}  # the optimizer's own default there
    return "for-loop", {}


def slides_convolutions(module: nn.Module) -> bool:
    """Whether `module` slides 2-d convolutions over images (kernel above 1, stride below the kernel: a
    CNN, a convolutional head), which run faster on channels-last tensors on CUDA; a ViT's patch
    embedding (stride = kernel) and 1x1 convolutions do not count."""
    return any(
        isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and tuple(m.stride) != tuple(m.kernel_size)
        for m in module.modules()
    )


def channels_last(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's images (4-d floating tensors) in channels-last memory format; the rest as it is."""
    return {
        k: v.contiguous(memory_format=torch.channels_last)
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point()
        else v
        for k, v in batch.items()
    }


class Trainer:
    """The task on its device with its optimizer and gradient scaler; `step` runs one update."""

    def __init__(self, task: Task, settings: LoopSettings, world: World | None = None) -> None:
        self.settings = settings
        self.recipe = recipe = settings.recipe
        self.world = world or World()
        self.device = self.world.device if self.world.distributed else resolve_device(settings.device)
        self.task = task.to(self.device)
        self.precision = Precision(settings.precision, self.device, settings.tf32)
        self.channels_last = self.device.type == "cuda" and slides_convolutions(task)
        if self.channels_last:
            self.task.to(memory_format=torch.channels_last)
        self.optimizer_impl, impl_options = optimizer_impl(
            recipe.optimizer, self.device, settings.fused_optimizer
        )
        groups = task.param_groups(recipe.weight_decay)
        if groups is None:
            groups = param_groups(task, recipe.weight_decay, recipe.no_weight_decay)
        self.param_counts = count_params(groups)
        self.optimizer = create_optimizer_v2(
            groups,
            opt=recipe.optimizer,
            lr=recipe.lr,
            weight_decay=recipe.weight_decay,
            **recipe.optimizer_kwargs(),
            **impl_options,
        )
        self.params = [p for p in task.parameters() if p.requires_grad]
        if not self.params:
            raise BudgetSSLError("nothing to train: every parameter of the task is frozen")
        self.runner: nn.Module | None = None  # what runs the unmetered steps (DDP, compiled), made once
        self.find_unused = False  # set by the metered first step (or a checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the task's own state_dict."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "find_unused": self.find_unused,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        _, impl_options = optimizer_impl(self.recipe.optimizer, self.device, self.settings.fused_optimizer)
        for group in self.optimizer.param_groups:  # this run's kernels, not those of the saving run
            for key in ("fused", "foreach"):
                if key in group:
                    group[key] = impl_options.get(key)
        if state.get("scaler"):  # empty when the scaler is off (anything but fp16)
            self.precision.scaler.load_state_dict(state["scaler"])
        self.find_unused = bool(state.get("find_unused", False))

    def model(self, metered: bool) -> nn.Module:
        """What runs the forward: the task itself for the metered step (so that the FLOP breakdown names
        its parts as on one process, counted on eager ops; its gradients are averaged by hand), else the
        task under its DDP wrapper (distributed) and torch.compile (`train.compile`), made once."""
        if metered:
            return self.task
        if self.runner is None:
            runner = wrap(self.task, self.world, self.find_unused) if self.world.distributed else self.task
            self.runner = torch.compile(runner, **COMPILE_OPTIONS) if self.settings.compile else runner
        return self.runner

    def runtime(self) -> dict[str, Any]:
        """How the steps ran, for the record."""
        return {
            "precision": str(self.precision.precision),
            "tf32": self.precision.tf32,
            "compiled": self.settings.compile,
            "optimizer_impl": self.optimizer_impl,
            "channels_last": self.channels_last,
        }

    def schedule(self, clock: Clock | float) -> float:
        """Set this step's lr (times each group's lr_scale) and weight decay (decayed groups only) from
        its clock (engine/schedule.py; a bare fraction is both of its positions)."""
        clock = Clock.of(clock)
        lr, wd = self.recipe.lr_at(clock), self.recipe.weight_decay_at(clock)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if decays(group):
                group["weight_decay"] = wd
        return lr

    def step(
        self,
        batch: dict[str, Any],
        counter: PassCounter | None,
        clock: Clock,
        before_step_end: Callable[[], dict[str, float]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One update at `clock` (engine/schedule.py: where the step stands), counted by pass into
        `counter` when given (the metered step). `before_step_end` runs after the optimizer step and
        before the task's on_step_end (the metered first step plans the budget there, so EMA teachers
        know it)."""
        clock = Clock.of(clock)  # a bare fraction (tests, scripts) reads as both positions
        metered = counter is not None
        count = counter.count if counter is not None else (lambda *a, **k: nullcontext())
        scaler = self.precision.scaler
        model = self.model(metered)
        if self.channels_last:
            batch = channels_last(batch)
        scheduled = self.task.on_step_start(clock)
        with count("forward", self.task), self.precision.autocast():
            out = model(batch)
        with count("backward"):
            scaler.scale(out.loss).backward()
        if metered and self.world.distributed:
            self.find_unused = self.world.any(any(p.grad is None for p in self.params))
            all_reduce_gradients(self.params, self.world)
        self.task.on_after_backward(clock)  # e.g. DINO's frozen last layer drops its gradients
        with count("optimizer"):
            self.clip()
            scaler.step(self.optimizer)
            scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if before_step_end is not None:
            scheduled = {**scheduled, **before_step_end()}
        logs = {**scheduled, **out.logs}
        with count("after_step"):
            logs.update(self.task.on_step_end(clock))
        return out.loss.detach(), logs

    def clip(self) -> None:
        """The recipe's gradient clipping (on unscaled gradients): one global norm, or each parameter's."""
        max_norm = self.recipe.grad_clip
        if max_norm is None:
            return
        self.precision.scaler.unscale_(self.optimizer)
        if self.recipe.grad_clip_mode == "per_param":
            clip_per_parameter(self.params, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, max_norm)
