"""The loop's settings: the recipe it optimises with, and how it runs (precision, device, reporting)."""

from __future__ import annotations

from dataclasses import dataclass

from budgetssl.config.schema import TrainConfig
from budgetssl.engine.recipe import Recipe


@dataclass(frozen=True)
class LoopSettings:
    recipe: Recipe
    precision: str = "fp32"
    device: str = "auto"
    tf32: bool = True  # CUDA only (engine/precision.py)
    fused_optimizer: bool = True  # CUDA only (engine/trainer.py)
    compile: bool = False  # torch.compile the task's forward; the metered steps run eager
    log_every: int = 10
    progress: bool = True

    @classmethod
    def from_train(cls, t: TrainConfig, recipe: Recipe | None = None) -> LoopSettings:
        """How `train:` says to run, with its own recipe or with `recipe`: the transfer brings its own,
        since it fine-tunes every backbone on one protocol whatever recipe pretrained it."""
        return cls(
            recipe=recipe if recipe is not None else Recipe.from_train(t),
            precision=t.precision,
            device=t.device,
            tf32=t.tf32,
            fused_optimizer=t.fused_optimizer,
            compile=t.compile,
            log_every=t.log_every,
            progress=t.progress,
        )
