"""Turning a FLOP budget into a plan of steps, before training, so schedules can span it exactly."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import floor

from budgetssl.errors import BudgetError


@dataclass(frozen=True)
class Plan:
    """`steps` steps of `flops_per_step` each; training stops before spending more than `budget_flops`."""

    budget_flops: float
    flops_per_step: int
    steps: int

    @property
    def planned_flops(self) -> int:
        return self.steps * self.flops_per_step


def plan_for_budget(
    budget_flops: float,
    flops_per_step: int,
    option: str = "budget.flops",
    batch_option: str = "train.batch_size",
) -> Plan:
    """floor(budget / flops_per_step) steps; exact (no float rounding), and never zero."""
    if flops_per_step <= 0:
        raise BudgetError(f"a training step measured {flops_per_step} FLOPs; nothing to meter")
    steps = floor(Fraction(budget_flops) / flops_per_step)
    if steps < 1:
        raise BudgetError(
            f"{option}={budget_flops:.4g} is smaller than one training step "
            f"({flops_per_step:.4g} FLOPs at this batch size and resolution); raise {option} to at "
            f"least {flops_per_step:.4g} or lower {batch_option}"
        )
    return Plan(budget_flops=budget_flops, flops_per_step=flops_per_step, steps=steps)


def plan_for_steps(steps: int, flops_per_step: int) -> Plan:
    """A fixed number of steps (the transfer stage), metered the same way."""
    return Plan(budget_flops=steps * flops_per_step, flops_per_step=flops_per_step, steps=steps)
