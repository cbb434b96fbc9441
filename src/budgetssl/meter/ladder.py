"""A budget ladder's arithmetic and its record: where each rung branches from the trunk, where it ends,
what the ladder spends against separate runs at the same budgets, and the `ladder` section a trunk's and a
rung's record carry (budgetssl-verify re-derives it).

A rung of budget R at `flops_per_step` F trains floor(R / F) steps in all, as many as a separate run of
budget R: floor(R x (1 - cooldown_fraction) / F) of them on the trunk (its branch point,
`branch_step`) and the rest cooling down on its own branch. The trunk trains to the
largest rung's branch point. The ladder spends the trunk once plus every cool-down; separate runs would
spend every rung in full. For rungs 1, 2, 4, 8, 16 and a 0.2 cool-down: a trunk of 12.8 and cool-downs
of 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.2, 19 units against 31.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

from budgetssl.errors import BudgetError
from budgetssl.meter.budget import steps_within

ROLES = ("trunk", "rung")


def branch_step(budget: float, cooldown_fraction: float, flops_per_step: int) -> int:
    """The steps a wsd run of `budget` trains at its peak lr before its cool-down (a ladder's rung: the
    trunk's step it branches from): floor(budget x (1 - cooldown_fraction) / flops_per_step), exact,
    with the fraction as written (0.2 is 1/5, not the binary float just above it)."""
    return steps_within(Fraction(budget) * (1 - Fraction(repr(float(cooldown_fraction)))), flops_per_step)


@dataclass
class Ladder:
    """The `ladder` section of a trunk's or a rung's record (a JSON object under the record's `ladder` key).

    Both: `role` (trunk | rung), `rungs` (the budgets, FLOPs), `cooldown_fraction`. A rung: `trunk` (its
    trunk's folder, relative to its own), `branch_step`, `shared_flops` (its steps on the trunk),
    `cooldown_steps` and `cooldown_flops` (its own branch). A trunk: `trunk_steps`, `trunk_flops`, every
    rung's `cooldown_flops` (a list, smallest rung first), `ladder_flops` (what the ladder spent: the trunk
    once plus every cool-down; records before this field called it `total_flops`, read here as
    `ladder_flops`), `separate_runs_flops` and `rung_folders`.
    """

    role: str | None = None
    rungs: list[float] | None = None
    cooldown_fraction: float | None = None
    trunk: str | None = None
    branch_step: int | None = None
    shared_flops: int | None = None
    cooldown_steps: int | None = None
    cooldown_flops: int | list[int] | None = None
    trunk_steps: int | None = None
    trunk_flops: int | None = None
    ladder_flops: int | None = None
    separate_runs_flops: int | None = None
    rung_folders: list[str] | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Ladder:
        """The section from its JSON object (an older writer's `total_flops` is `ladder_flops`); keys it
        does not know are dropped."""
        raw = dict(raw)
        if "ladder_flops" not in raw and "total_flops" in raw:
            raw["ladder_flops"] = raw.pop("total_flops")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Its JSON object: the fields its role has (the others are None and left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


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
    def ladder_flops(self) -> int:
        """What the ladder spends: the trunk once and every cool-down."""
        return self.trunk_flops + sum(self.cooldown_flops())

    @property
    def separate_runs_flops(self) -> int:
        """What separate runs at the rungs' budgets spend: each rung's train_flops, summed."""
        return sum(r.steps for r in self.rungs) * self.flops_per_step

    def rung_section(self, i: int, trunk: str) -> Ladder:
        """The `ladder` section of rung `i`'s record (budgetssl-verify reads it)."""
        rung = self.rungs[i]
        return Ladder(
            role="rung",
            trunk=trunk,
            rungs=[r.budget for r in self.rungs],
            cooldown_fraction=self.cooldown_fraction,
            branch_step=rung.branch_step,
            shared_flops=rung.branch_step * self.flops_per_step,
            cooldown_steps=rung.cooldown_steps,
            cooldown_flops=rung.cooldown_steps * self.flops_per_step,
        )

    def trunk_section(self, rung_folders: list[str]) -> Ladder:
        """The `ladder` section of the trunk's record: what the ladder spent against separate runs."""
        return Ladder(
            role="trunk",
            rungs=[r.budget for r in self.rungs],
            cooldown_fraction=self.cooldown_fraction,
            trunk_steps=self.trunk_steps,
            trunk_flops=self.trunk_flops,
            cooldown_flops=self.cooldown_flops(),
            ladder_flops=self.ladder_flops,
            separate_runs_flops=self.separate_runs_flops,
            rung_folders=rung_folders,
        )
