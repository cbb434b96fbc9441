"""The monitor a pretraining runs: a fixed held-out batch through Method.monitor_outputs, measured.

The stage builds a `Monitor` (the method and its batch) and hands it to the training loop, which calls
it before the first step, on every logged step and at the end, and keeps what it returned in its run
state (so a checkpoint holds it and a resumed run keeps its values at initialisation). A call runs the
method in eval mode under no_grad and restores its mode; it is outside the meter and the budget: its
FLOPs are counted once, on its first call, with the meter's counter (meter/counter.py), and the loop
times it, for the record's `monitor_flops` and `monitor_seconds`.

The batch: the first `train.monitor_images` images of the dataset's held-out split (`val`), never trained
on, each resized on its shorter side and centre-cropped to the training resolution, normalised as the
method's views are, without augmentation. A dataset without a held-out split gives the first images of
its training split instead (they are also trained on), and the record's `monitor_source` says which.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset
from torchvision.transforms import v2

from budgetssl.data.base import build_dataset
from budgetssl.errors import BudgetSSLError
from budgetssl.meter.counter import count_forward_flops
from budgetssl.methods.augment import to_normalized
from budgetssl.monitor.measures import embedding_measures, prototype_measures

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig
    from budgetssl.methods.base import Method

FINAL_SHARE = (
    0.1  # the record's final values: the mean over the last 10% of the monitored steps (at least one)
)


@dataclass(frozen=True)
class HeldOut:
    images: torch.Tensor  # (N, C, H, W), normalised floats
    source: str  # which split they came from


def held_out(run: RunConfig, method: Method, count: int) -> HeldOut:
    """The first `count` images of the held-out split (or, without one, of the training split)."""
    try:
        dataset = build_dataset(run.dataset, "val")
        source = "val"
    except (BudgetSSLError, FileNotFoundError, ValueError) as e:
        dataset = build_dataset(run.dataset, "train")
        source = f"train (no held-out split: {e}); these images are also trained on"
    size = method.data.image_size
    view = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *to_normalized(method.data)])
    images = [view(sample["image"]) for sample in islice(samples(dataset), count)]
    if len(images) < 2:
        raise BudgetSSLError(
            f"the monitors need at least 2 images of dataset '{run.dataset.name}' ({source}), found "
            f"{len(images)}: add images, or set train.monitor_images=0 to run without monitors"
        )
    return HeldOut(torch.stack(images), source)


def samples(dataset: Any) -> Iterator[dict[str, Any]]:
    if isinstance(dataset, IterableDataset):
        return iter(dataset)
    return (dataset[i] for i in range(len(dataset)))


def measure(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """The monitors of one call's outputs: rank and spread of the features and of the embedding (where
    the method gives one), and the prototype statistics where it gives teacher and student logits. Non-finite
    outputs (a diverged run) give none: the loop's loss check ends such a run at its step, with its record."""
    if not all(torch.isfinite(v).all() for v in outputs.values()):
        return {}
    values = embedding_measures(outputs["features"], "features")
    if "embedding" in outputs:
        values |= embedding_measures(outputs["embedding"], "embedding")
    if "teacher_logits" in outputs:
        values |= prototype_measures(outputs["teacher_logits"], outputs["student_logits"])
    return values


class Monitor:
    """Called by the loop with the training device: the monitors of `method` on the held-out batch."""

    def __init__(self, method: Method, batch: HeldOut) -> None:
        self.method, self.batch = method, batch
        self.flops_per_call: int | None = None  # counted on the first call

    @property
    def images(self) -> int:
        return int(self.batch.images.shape[0])

    def __call__(self, device: torch.device) -> dict[str, float]:
        images = self.batch.images.to(device)
        was_training = self.method.training
        self.method.eval()
        try:
            with torch.no_grad():
                if self.flops_per_call is None:
                    self.flops_per_call = count_forward_flops(lambda: self.method.monitor_outputs(images))
                outputs = self.method.monitor_outputs(images)
            return measure(outputs)
        finally:
            self.method.train(was_training)


def final_values(history: list[tuple[int, dict[str, float]]]) -> tuple[dict[str, float], list[int]]:
    """The mean of each monitor over the last FINAL_SHARE of the monitored steps (at least the last
    one), and those steps."""
    if not history:
        return {}, []
    tail = history[-max(1, math.ceil(FINAL_SHARE * len(history))) :]
    keys = [k for k in tail[-1][1] if all(k in values for _, values in tail)]
    return {k: sum(values[k] for _, values in tail) / len(tail) for k in keys}, [s for s, _ in tail]
