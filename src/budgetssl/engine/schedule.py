"""Schedules as functions of the fraction of the planned budget spent, so any budget gets a full one.

timm's schedulers run on update counts; these run on a fraction in [0, 1] that is 0 on the first step
and exactly 1 on the last planned step, and they serve learning rates, EMA momenta and temperatures.
"""

from __future__ import annotations

import math


def step_fraction(step: int, planned_steps: int) -> float:
    """Fraction of the plan at `step` (0-based): 0 on the first step, 1 on the last."""
    if planned_steps <= 1:
        return 1.0 if step > 0 else 0.0
    return min(step / (planned_steps - 1), 1.0)


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
