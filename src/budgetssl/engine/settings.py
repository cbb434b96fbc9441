"""The loop's settings: the recipe it optimises with, the timeline its schedules run on, and how it runs
(precision, device, reporting).

No field has a default of its own: the defaults are configs/config.yaml's `train:` section (checked by
config/schema.py `TrainConfig`), and `from_train` is the one way from it to here, so the two cannot
disagree (tests/test_config_defaults.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from budgetssl.config.check import RunConfig
from budgetssl.config.schema import TrainConfig
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.schedule import Timeline


@dataclass(frozen=True)
class LoopSettings:
    recipe: Recipe
    # How steps map to clocks: cosine, or wsd with its cool-down and warm-up reference (a ladder's
    # smallest rung: `loop_settings` sets it).
    timeline: Timeline
    # train.precision ... train.progress, as config/schema.py TrainConfig documents them.
    precision: str
    device: str
    tf32: bool
    fused_optimizer: bool
    compile: bool
    log_every: int
    progress: bool

    @classmethod
    def from_train(cls, t: TrainConfig, recipe: Recipe | None = None) -> LoopSettings:
        """How `train:` says to run, with its own recipe and schedule (train.schedule) or with `recipe`
        on a cosine timeline: the transfer brings its own, since it fine-tunes every backbone on one
        protocol whatever recipe pretrained it."""
        own = recipe is None
        return cls(
            recipe=Recipe.from_train(t) if own else recipe,  # type: ignore[arg-type]
            timeline=Timeline(str(t.schedule), t.cooldown_fraction) if own else Timeline(),
            precision=t.precision,
            device=t.device,
            tf32=t.tf32,
            fused_optimizer=t.fused_optimizer,
            compile=t.compile,
            log_every=t.log_every,
            progress=t.progress,
        )


def loop_settings(run: RunConfig) -> LoopSettings:
    """The pretraining loop's settings: the method's recipe, its schedule and how the loop runs, from
    `train:`; with a ladder, warm-ups span its smallest rung (engine/schedule.py). The pretraining stage
    trains with them and the verifier counts its step with them (verify/flops.py)."""
    settings = LoopSettings.from_train(run.train)
    if run.budget.ladder:
        timeline = replace(settings.timeline, reference_flops=min(run.budget.ladder))
        settings = replace(settings, timeline=timeline)
    return settings
