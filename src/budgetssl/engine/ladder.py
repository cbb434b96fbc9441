"""A budget ladder's arithmetic: where each rung branches from the trunk, where it ends, and what the
ladder spends against separate runs at the same budgets.

A rung of budget R at `flops_per_step` F trains floor(R / F) steps in all, as many as a separate run of
budget R: floor(R x (1 - cooldown_fraction) / F) of them on the trunk (its branch point,
engine/schedule.py branch_step) and the rest cooling down on its own branch. The trunk trains to the
largest rung's branch point. The ladder spends the trunk once plus every cool-down; separate runs would
spend every rung in full. For rungs 1, 2, 4, 8, 16 and a 0.2 cool-down: a trunk of 12.8 and cool-downs
of 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.2, 19 units against 31.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budgetssl.engine.schedule import branch_step, steps_within
from budgetssl.errors import BudgetError


@dataclass(frozen=True)
class Rung:
    budget: float  # FLOPs
    branch_step: int  # the trunk's step it branches from (the steps it shares with the trunk)
    steps: int  # its steps in all: a separate run's at its budget

    @property
    def cooldown_steps(self) -> int:
        return self.steps - self.branch_step


@dataclass(frozen=True)
class LadderPlan:
    """The rungs (smallest first) at a measured step cost."""

    rungs: tuple[Rung, ...]
    cooldown_fraction: float
    flops_per_step: int

    @classmethod
    def make(cls, budgets: list[float], cooldown_fraction: float, flops_per_step: int) -> LadderPlan:
        """The plan of the ladder `budgets` (any order) for steps of `flops_per_step` FLOPs. A rung must
        have a step on the trunk: the first step is measured there, before any branch can start."""
        rungs = tuple(
            Rung(r, branch_step(r, cooldown_fraction, flops_per_step), steps_within(r, flops_per_step))
            for r in sorted(budgets)
        )
        if rungs[0].branch_step < 1:
            r = rungs[0].budget
            raise BudgetError(
                f"the smallest rung of budget.ladder ({r:.4g} FLOPs) branches before the trunk's first step "
                f"({flops_per_step:.4g} FLOPs at this batch size and resolution, of which it keeps "
                f"1 - train.cooldown_fraction = {1 - cooldown_fraction:g}): raise it to at least "
                f"{flops_per_step / (1 - cooldown_fraction):.4g} or lower train.batch_size"
            )
        return cls(rungs, cooldown_fraction, flops_per_step)

    @property
    def trunk_steps(self) -> int:
        return self.rungs[-1].branch_step

    @property
    def trunk_flops(self) -> int:
        return self.trunk_steps * self.flops_per_step

    def cooldown_flops(self) -> list[int]:
        return [r.cooldown_steps * self.flops_per_step for r in self.rungs]

    @property
    def total_flops(self) -> int:
        """What the ladder spends: the trunk once and every cool-down."""
        return self.trunk_flops + sum(self.cooldown_flops())

    @property
    def separate_runs_flops(self) -> int:
        """What separate runs at the rungs' budgets spend: each rung's train_flops, summed."""
        return sum(r.steps for r in self.rungs) * self.flops_per_step

    def rung_record(self, i: int, trunk: str) -> dict[str, Any]:
        """The `ladder` field of rung `i`'s record (budgetssl-verify reads these names)."""
        rung = self.rungs[i]
        return {
            "role": "rung",
            "trunk": trunk,
            "rungs": [r.budget for r in self.rungs],
            "cooldown_fraction": self.cooldown_fraction,
            "branch_step": rung.branch_step,
            "shared_flops": rung.branch_step * self.flops_per_step,
            "cooldown_steps": rung.cooldown_steps,
            "cooldown_flops": rung.cooldown_steps * self.flops_per_step,
        }

    def trunk_record(self, rung_folders: list[str]) -> dict[str, Any]:
        """The `ladder` field of the trunk's record: what the ladder spent against separate runs."""
        return {
            "role": "trunk",
            "rungs": [r.budget for r in self.rungs],
            "cooldown_fraction": self.cooldown_fraction,
            "trunk_steps": self.trunk_steps,
            "trunk_flops": self.trunk_flops,
            "cooldown_flops": self.cooldown_flops(),
            "total_flops": self.total_flops,
            "separate_runs_flops": self.separate_runs_flops,
            "rung_folders": rung_folders,
        }
