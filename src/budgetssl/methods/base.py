"""The interface every method implements; the engine and the meter know nothing else about it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.data import Dataset

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.schema import MethodConfig
from budgetssl.data.info import DataInfo
from budgetssl.engine.task import StepOutput, Task
from budgetssl.methods.ema import EmaTeacher
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

View = Callable[[dict[str, Any]], dict[str, Any]]


class Method(Task):
    """A pretraining method: its views of a sample, its modules and its loss; a Task for the engine.

    - `needs`: sample fields the method reads besides the image ("label", "caption").
    - `forward_only`: names of submodules that run forward only (EMA teachers); they get no
      gradients and no optimizer state, and the meter counts their forward passes once.
    - `on_plan(steps)` is told the steps its schedules span once the budget is priced (budget-aware
      EMA); `on_step_start(clock)` sets scheduled values (temperatures, momenta) for the step about
      to run; `forward(batch)` computes its loss; `on_after_backward(clock)` may edit gradients
      before clipping and the optimizer step (DINO's frozen last layer); `on_step_end(clock)`
      runs after the optimizer step (EMA updates). `clock` (engine/schedule.py Clock) says where the
      step stands, 0 on the first step and 1 on the last, so every budget gets a complete schedule:
      warm-ups and freezes read `clock.warm`, annealed values (momenta, decays) `clock.anneal`. They
      are one fraction under train.schedule=cosine; under wsd (a ladder's trunk, whose end is not
      known at its start) `anneal` stays 0 until a rung's cool-down.
    - `monitor_outputs(images)` says what the label-free monitors (budgetssl.monitor) read from a batch
      of plain normalised images: the backbone's pooled `features` at least (the default), and where the
      method has them its `embedding` (the projector's output before any final batch norm) and, for
      prototype methods, `teacher_logits` and `student_logits` as its loss compares them (centred, over
      the current temperatures). The monitor calls it in eval mode under no_grad.
    - `validation_scores(val_set)` scores the pretrained model on held-out data where the method can
      (a classifier's accuracy); `summary_fields()` adds what the record should say of the method.
    - State that a resumed run needs (EMA teachers, centres, the current scheduled values) lives
      in parameters and buffers, so it is part of `state_dict()` and of every checkpoint.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs: ClassVar[frozenset[str]] = frozenset()
    forward_only: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: MethodConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.data = data

    @classmethod
    def check(cls, run: RunConfig) -> None:
        """Refuse invalid combinations (e.g. a ViT-only method on a CNN) with a ConfigError."""

    def views(self) -> View:
        """The per-sample transform (run in data workers) that makes this method's inputs."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        raise NotImplementedError

    def on_plan(self, steps: int) -> dict[str, float]:
        """The plan has `steps` updates: fit every EMA teacher's momentum schedule to it. Returns the
        momentum the current (first) step's update will use, to log in place of the unplanned one."""
        starts = [teacher.plan(steps) for teacher in self.teachers()]
        return {"momentum": starts[0]} if starts else {}

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the monitors read from `images` (B, C, H, W): here the backbone's pooled features, so a
        new method is monitored unchanged; a method adds its embedding and prototype logits."""
        return {"features": self.backbone(images)}

    def validation_scores(self, val_set: Dataset) -> dict[str, float]:
        """Scores on the held-out split after pretraining; none unless the method has a task to score."""
        return {}

    def summary_fields(self) -> dict[str, float]:
        """The EMA teacher's planned start momentum and the initial teacher's weight in the final one."""
        teachers = self.teachers()
        if not teachers:
            return {}
        return {
            "teacher_init_weight": float(teachers[0].init_weight),
            "teacher_base_momentum": float(teachers[0].planned_base),
        }

    def teachers(self) -> list[EmaTeacher]:
        return [m for m in self.modules() if isinstance(m, EmaTeacher)]


def build_method(cfg: MethodConfig, backbone: Backbone, data: DataInfo) -> Method:
    method = METHODS.get(cfg.name)(cfg, backbone, data)
    for name in method.forward_only:
        getattr(method, name).requires_grad_(False)
    return method
