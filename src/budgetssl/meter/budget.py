"""Budgets: what a run may spend, turned into a plan of steps once a step is priced, so schedules span it.

The loop takes a budget object, not a number: pretraining spends FLOPs (`FlopBudget`), a transfer may
run a fixed number of steps (`StepBudget`); both are metered the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import floor
from typing import Protocol

from budgetssl.errors import BudgetError


def steps_within(flops: float | Fraction, flops_per_step: int) -> int:
    """Whole steps of `flops_per_step` that `flops` pays for (exact: no float rounding)."""
    return floor(Fraction(flops) / flops_per_step)


@dataclass(frozen=True)
class Plan:
    """`steps` steps of `flops_per_step` each; training stops before spending more than `budget_flops`."""

    budget_flops: float
    flops_per_step: int
    steps: int


class Budget(Protocol):
    def plan(self, flops_per_step: int) -> Plan:
        """The plan for steps of `flops_per_step` FLOPs (the measured first step)."""
        ...


@dataclass(frozen=True)
class FlopBudget:
    """floor(flops / flops_per_step) steps, exact (no float rounding) and never zero. `option` and
    `batch_option` name the settings to change in the error for a budget below one step."""

    flops: float
    option: str = "budget.flops"
    batch_option: str = "train.batch_size"

    def plan(self, flops_per_step: int) -> Plan:
        if flops_per_step <= 0:
            raise BudgetError(f"a training step measured {flops_per_step} FLOPs; nothing to meter")
        steps = steps_within(self.flops, flops_per_step)
        if steps < 1:
            raise BudgetError(
                f"{self.option}={self.flops:.4g} is smaller than one training step "
                f"({flops_per_step:.4g} FLOPs at this batch size and resolution); raise {self.option} to "
                f"at least {flops_per_step:.4g} or lower {self.batch_option}"
            )
        return Plan(budget_flops=self.flops, flops_per_step=flops_per_step, steps=steps)


@dataclass(frozen=True)
class StepBudget:
    """A fixed number of steps (a transfer's `transfer.steps`); the FLOPs it buys are `steps` first steps."""

    steps: int

    def plan(self, flops_per_step: int) -> Plan:
        return Plan(budget_flops=self.steps * flops_per_step, flops_per_step=flops_per_step, steps=self.steps)
