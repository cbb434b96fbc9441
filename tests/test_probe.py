"""A new input shape is priced by the step the loop runs (engine/metering.py probe: Trainer.step on a
throwaway copy), so its price is the real step's count at that shape: with the task's schedules set for
the step (on_step_start: an EMA teacher's momentum, DINO's teacher temperature) and, on a CNN, the batch in
channels-last as the real step takes it; and the run itself is left as it was."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from budgetssl.engine.metering import first_step, price
from budgetssl.engine.schedule import Clock
from budgetssl.engine.settings import loop_settings
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.budget import StepBudget
from budgetssl.meter.counter import PassCounter
from budgetssl.meter.step_meter import StepMeter
from budgetssl.stages.pretrain import build
from conftest import TINY, run_config, small

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The batch's first `n` samples: a batch of another shape."""
    return {k: v[:n] if isinstance(v, torch.Tensor | list) else v for k, v in batch.items()}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def seen_by_forward(task: torch.nn.Module) -> list[dict[str, Any]]:
    """What each forward of `task` (and of its copies: a deep copy keeps the hook) starts with: the
    scheduled scalars its on_step_start sets, and whether its batch's images (4-d: what Trainer.step
    puts in channels-last) are channels-last (None: it has none)."""
    seen: list[dict[str, Any]] = []

    def look(module: torch.nn.Module, args: tuple) -> None:
        images = [v for v in args[0].values() if isinstance(v, torch.Tensor) and v.dim() == 4]
        scalars = {n: float(b) for n, b in module.named_buffers() if b.dim() == 0 and b.is_floating_point()}
        last = [x.is_contiguous(memory_format=torch.channels_last) for x in images]
        seen.append({"scalars": scalars, "channels_last": all(last) if last else None})

    task.register_forward_pre_hook(look)
    return seen


@pytest.mark.parametrize(
    "overrides, scheduled, channels_last",
    [
        (small("dino"), True, None),
        ([*small("byol"), "backbone=resnet18", "dataset.image_size=32"], True, None),
        ([*small("supervised"), "backbone=resnet18", "dataset.image_size=32"], False, True),
    ],
    ids=["dino", "byol-resnet18", "supervised-resnet18"],
)
def test_a_new_shape_is_priced_by_the_step_that_spends_it(overrides, scheduled, channels_last):
    run = run_config(*TINY, "train.batch_size=4", "train.num_workers=0", *overrides)
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    cnn = run.backbone.name.startswith("resnet")
    if cnn:  # the CUDA path's memory format (engine/trainer.py), taken on this CPU
        assert not trainer.channels_last
        trainer.channels_last = True
        trainer.task.to(memory_format=torch.channels_last)
    seen = seen_by_forward(method)
    meter = StepMeter()
    method.train()
    first_step(trainer, meter, StepBudget(10), to_device(next(batches), trainer.device), Clock.of(0.0))
    batch, clock = rows(to_device(next(batches), trainer.device), 3), Clock.of(0.5)
    weights = copy.deepcopy(method.state_dict())
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())

    priced = price(trainer, meter, batch, clock)

    assert priced.seconds > 0 and meter.known(batch) == priced.cost  # measured, and now known
    # The run is as it was: the probe stepped a copy (its weights, its optimizer's state).
    assert same(method.state_dict(), weights) and same(trainer.optimizer.state_dict(), optimizer)
    counter = PassCounter()
    trainer.step(batch, counter, clock)  # the real step at this shape, metered
    assert priced.cost.breakdown == counter.passes and priced.cost.total == counter.total > 0
    # The probe's forward began as the real step's did (the step's schedules set, the same memory
    # format), not as the run's last step left the task.
    first, probed, real = seen
    assert probed == real and real["channels_last"] is channels_last
    assert (probed["scalars"] != first["scalars"]) is scheduled
