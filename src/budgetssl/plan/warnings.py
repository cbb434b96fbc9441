"""What a user needs to know before spending a job's budget, each said with what the code will do.

- The lr warm-up (train.warmup_fraction of the steps its schedule spans: the run's, a ladder's smallest
  rung's; engine/schedule.py Timeline.reference_steps) lasts under two steps: the lr is at its start on
  the first step and past the warm-up from the second, so the recipe's warm-up is gone. On a ladder that
  is its smallest rung ending before the warm-up has taken a step.
- An EMA teacher (methods/ema.py) planned on fewer updates than the published start needs to leave at
  most 1% of the random initial teacher in the final one (2 ln(100) / (1 - m0): 2303 at m0 = 0.996):
  under `method.momentum_rule=published` the start stays and more of the initial teacher remains (its
  bound said); under `budget_aware` (or `floor`) the budget-aware start takes over and the teacher starts
  lower, at the value said.
- The global batch (train.batch_size, transfer.batch_size) not divisible by the job's GPUs: a
  data-parallel run refuses it at its start (engine/distributed.py World.local_batch).

A budget below one step and a ladder whose smallest rung branches before the trunk's first step are
errors the run itself raises (meter/budget.py, meter/ladder.py): the plan reports them as the job's
error, not as warnings.
"""

from __future__ import annotations

from budgetssl.config.check import RunConfig
from budgetssl.engine.settings import loop_settings
from budgetssl.meter.budget import Plan
from budgetssl.methods.ema import (
    BUDGET_AWARE,
    FLOOR,
    PUBLISHED,
    TeacherConfig,
    budget_aware_momentum,
    budget_aware_updates,
    init_weight_bound,
    planned_base_momentum,
)


def before_spending(run: RunConfig, per_step: int, plan: Plan, gpus: int) -> list[str]:
    """The warnings for `run` at steps of `per_step` FLOPs planned as `plan` on `gpus` GPUs."""
    spanned = loop_settings(run).timeline.reference_steps(plan)
    where = "its smallest rung's" if run.budget.ladder is not None else "the run's"
    return [
        *warm_up(run, spanned, where),
        *teacher(run, spanned, where),
        *divisible(run, gpus),
    ]


def warm_up(run: RunConfig, spanned: int, where: str) -> list[str]:
    w = run.train.warmup_fraction
    if w <= 0 or w * (spanned - 1) > 1:
        return []
    return [
        f"the lr warm-up (train.warmup_fraction={w:g} of {where} {spanned} steps) spans "
        f"{w * max(spanned - 1, 0):.2g} steps: the lr starts at its start value and is past the warm-up "
        f"from the second step on"
    ]


def teacher(run: RunConfig, spanned: int, where: str) -> list[str]:
    m = run.method
    if not isinstance(m, TeacherConfig):
        return []
    needed = budget_aware_updates(m.base_momentum)
    if spanned >= needed:
        return []
    head = (
        f"the EMA teacher's momentum is planned on {where} {spanned} updates, fewer than the {needed} at "
        f"which its published start {m.base_momentum:g} leaves at most 1% of the initial teacher"
    )
    if m.momentum_rule == PUBLISHED:
        aware = budget_aware_momentum(m.base_momentum, spanned)
        return [
            f"{head}: under method.momentum_rule=published the start stays {m.base_momentum:g}, and the "
            f"initial teacher may keep up to {init_weight_bound(m.base_momentum, spanned):.2g} of the final "
            f"one (method.momentum_rule=budget_aware would start at {aware:.4g})"
        ]
    start = planned_base_momentum(m.base_momentum, spanned, m.momentum_rule, m.momentum_floor)
    if m.momentum_rule == FLOOR and start == m.momentum_floor:
        return [
            f"{head}: under method.momentum_rule=floor the budget-aware start takes over, held at the "
            f"floor {start:g} (method.momentum_floor)"
        ]
    assert m.momentum_rule in (BUDGET_AWARE, FLOOR)
    return [
        f"{head}: under method.momentum_rule={m.momentum_rule} the budget-aware start takes over: the "
        f"teacher starts at {start:.4g} instead of {m.base_momentum:g}"
    ]


def divisible(run: RunConfig, gpus: int) -> list[str]:
    found = []
    for option, batch in (
        ("train.batch_size", run.train.batch_size),
        ("transfer.batch_size", run.transfer.batch_size),
    ):
        if batch % gpus:
            found.append(
                f"{option}={batch} is the global batch and is not divisible by the job's {gpus} GPUs: the "
                f"run stops at its start (use a multiple of {gpus}, or set plan.gpus)"
            )
    return found
