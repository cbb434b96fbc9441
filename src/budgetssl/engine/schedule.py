"""Schedules on a clock of two positions, so that a run at any budget gets a complete schedule, and so
does a ladder's trunk, whose end is not known at its start (`train.schedule=wsd`, `budget.ladder`).

timm's schedulers run on update counts; these run on positions in [0, 1], 0 on the first step and
exactly 1 on the last step of what they span, and they serve learning rates, weight decay, EMA momenta,
temperatures and freezes. A step's `Clock` carries two positions, and every scheduled value reads one:

- `warm`: warm-ups and freezes (the lr's warm-up, DINO's teacher-temperature warm-up, DINO's frozen
  last layer): the share of the reference run done. The reference is the run itself under cosine; under
  wsd it is a separate run at the ladder's smallest rung (the run's own budget without a ladder), so every
  rung has finished its warm-ups at the step where a separate run of the smallest rung would have, before
  the smallest rung's branch point (config/ladder.py checks the lr's warm-up ends there).
- `anneal`: annealed values (the lr's decay to `final_lr_ratio` x peak, the weight-decay schedule, e.g.
  DINO's 0.04 -> 0.4, the EMA momentum's rise to 1 in BYOL and DINO). Under cosine it is the share of the
  plan done, exactly the one fraction every schedule ran on before the clock had two positions (a cosine
  run is bit-identical to one from before). Under wsd it is 0 on the trunk (lr at its peak, weight decay
  at its start, momentum at its base) and rises 0 -> 1 over each rung's cool-down, the last
  `cooldown_fraction` of the rung's budget, (k + 1) / C on the k-th of its C cool-down steps (every
  cool-down step decays, the last reaches 1); each annealed value then goes from its start to its end on
  its own curve (cosine for weight decay and momentum), and the lr decays as 1 - sqrt (`wsd_decay`).

The clock is a float whose value is `anneal` (with `warm` beside it), so a task written for a bare
fraction keeps working: under cosine both positions are that fraction; under wsd such a task anneals on
its cool-down and never warms up on the trunk (a warm-up must read `clock.warm`). The EMA teacher's
budget-aware start (methods/ema.py) is planned on `Timeline.reference_steps`, under wsd the smallest
rung's plan (the reason is given there).

Step arithmetic is exact (fractions.Fraction of the budgets, and of the cool-down fraction as written,
so that 0.2 is 1/5): a rung of budget R at
`flops_per_step` F ends after floor(R / F) steps, as many as a separate run of budget R, and branches
from the trunk after floor(R x (1 - cooldown_fraction) / F) steps (`branch_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetssl.meter.budget import Plan, steps_within
from budgetssl.meter.ladder import branch_step

COSINE, WSD = "cosine", "wsd"


class Clock(float):
    """Where a step stands on its schedules: the float value is `anneal`, `warm` is the other position
    (module docstring). Frozen: both positions are set once, when it is made."""

    __slots__ = ("warm",)
    warm: float

    def __new__(cls, anneal: float, warm: float | None = None) -> Clock:
        clock = super().__new__(cls, anneal)
        object.__setattr__(clock, "warm", float(anneal) if warm is None else float(warm))
        return clock

    @classmethod
    def of(cls, value: float) -> Clock:
        """`value` as a clock: itself if it is one, else a bare fraction at both positions (a caller
        from before the clock, e.g. `trainer.step(batch, None, 0.3)`)."""
        return value if isinstance(value, Clock) else cls(value)

    @property
    def anneal(self) -> float:
        return float(self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a Clock is frozen; make a new one instead of setting {name}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Clock, (float(self), self.warm))

    def __repr__(self) -> str:
        return f"Clock(anneal={float(self)!r}, warm={self.warm!r})"


def step_fraction(step: int, planned_steps: int) -> float:
    """Fraction of the plan at `step` (0-based): 0 on the first step, 1 on the last."""
    if planned_steps <= 1:
        return 1.0 if step > 0 else 0.0
    return min(step / (planned_steps - 1), 1.0)


@dataclass(frozen=True)
class Timeline:
    """How a run's steps map to clocks: `kind` cosine (one fraction, as before) or wsd (warm-up,
    stable, decay); under wsd the cool-down is the last `cooldown_fraction` of the plan's budget and
    warm-ups span a separate run of `reference_flops` (a ladder's smallest rung; None: the plan's own
    budget)."""

    kind: str = COSINE
    cooldown_fraction: float = 0.2
    reference_flops: float | None = None

    def reference_steps(self, plan: Plan) -> int:
        """The steps the warm-ups (and the EMA teacher's planned start) span: the plan's under cosine;
        under wsd those of a separate run at `reference_flops`."""
        if self.kind == COSINE or self.reference_flops is None:
            return plan.steps
        return min(plan.steps, steps_within(self.reference_flops, plan.flops_per_step))

    def cooldown_start(self, plan: Plan) -> int:
        """The first step of the cool-down (0-based): under cosine the first step (no stable phase); under
        wsd the branch point of the plan's budget."""
        if self.kind == COSINE:
            return 0
        return min(plan.steps, branch_step(plan.budget_flops, self.cooldown_fraction, plan.flops_per_step))

    def clock(self, step: int, plan: Plan | None) -> Clock:
        """The clock of step `step` (0-based; the first step, before the plan is known, is at 0)."""
        if plan is None:
            return Clock(0.0)
        if self.kind == COSINE:
            return Clock(step_fraction(step, plan.steps))
        warm = step_fraction(step, self.reference_steps(plan))
        start = self.cooldown_start(plan)
        # Each of the cool-down's steps anneals, the last to 1: the final lr on the plan's last step.
        anneal = 0.0 if step < start else min(1.0, (step - start + 1) / (plan.steps - start))
        return Clock(anneal, warm=warm)


def cosine(fraction: float, start: float, end: float) -> float:
    """Half-cosine from `start` (fraction 0) to `end` (fraction 1)."""
    f = min(max(fraction, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * f))


def warmup_cosine(fraction: float, peak: float, end: float, warmup: float, start: float) -> float:
    """Linear warm-up from `start` to `peak` over the first `warmup` of the plan, then cosine to `end`."""
    f = min(max(fraction, 0.0), 1.0)
    if f < warmup:
        return start + (peak - start) * f / warmup
    if warmup >= 1:
        return peak
    return cosine((f - warmup) / (1 - warmup), peak, end)


def wsd_decay(anneal: float, peak: float, end: float) -> float:
    """The cool-down of a wsd schedule: 1 - sqrt from `peak` (anneal 0) to `end` (anneal 1). Hägele et
    al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", Sec. 3: the
    (1 - sqrt) cool-down does better than a linear one, and a cool-down over about 20% of training
    matches a cosine schedule of the same length (the default train.cooldown_fraction=0.2)."""
    f = min(max(anneal, 0.0), 1.0)
    return peak - (peak - end) * math.sqrt(f)  # exactly the peak at 0


def warmup_wsd(clock: Clock, peak: float, end: float, warmup: float, start: float) -> float:
    """Linear warm-up from `start` to `peak` over the first `warmup` of the reference run (`clock.warm`),
    then the peak until the cool-down, which decays it to `end` (`clock.anneal`, `wsd_decay`)."""
    w = min(max(clock.warm, 0.0), 1.0)
    if w < warmup:
        return start + (peak - start) * w / warmup
    return wsd_decay(clock.anneal, peak, end)
