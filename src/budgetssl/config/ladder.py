"""train.schedule, train.cooldown_fraction and budget.ladder: their defaults that follow the ladder, and
their checks.

`budget.ladder=[...]` alone is a whole command: config.yaml's budget.flops and train.schedule follow it
through the resolvers here (the largest rung; wsd), and a value the user sets against it is refused,
naming both options. The run folder's hash leaves these keys out where they are at the values that
train as before they existed (config/volatile.py AT_DEFAULT), so existing run folders are found again.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from budgetssl.config.schema import BudgetConfig, Schedule, TrainConfig
from budgetssl.errors import ConfigError

TOP = "ladder_top"  # ${ladder_top:${budget.ladder},<default>}: the largest rung, else the default
SCHEDULE = "ladder_schedule"  # ${ladder_schedule:${budget.ladder}}: wsd with a ladder, else cosine


def _rungs(ladder: Any) -> list[float] | None:
    """The ladder's rungs as numbers, or None when it is not a list of numbers (the check says why)."""
    if ladder is None:
        return None
    items = OmegaConf.to_container(ladder) if OmegaConf.is_config(ladder) else ladder
    if not isinstance(items, list | tuple) or not items:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in items):
        return None
    return [float(x) for x in items]


def ladder_top(ladder: Any, default: float) -> float:
    rungs = _rungs(ladder)
    return max(rungs) if rungs else default


def ladder_schedule(ladder: Any) -> str:
    return Schedule.wsd.value if ladder is not None else Schedule.cosine.value


def register() -> None:
    if not OmegaConf.has_resolver(TOP):
        OmegaConf.register_new_resolver(TOP, ladder_top)
    if not OmegaConf.has_resolver(SCHEDULE):
        OmegaConf.register_new_resolver(SCHEDULE, ladder_schedule)


def _g(value: float) -> str:
    return f"{value:g}".replace("e+", "e")


def _fmt(values: list[float]) -> str:
    return "[" + ",".join(_g(v) for v in values) + "]"


def check_schedule(b: BudgetConfig, t: TrainConfig) -> None:
    """The schedule and the ladder fit together: a ladder is wsd, trains to its largest rung, and every
    rung's warm-up ends before the smallest rung's branch point."""
    f = t.cooldown_fraction
    if not 0 < f < 1:
        raise ConfigError(
            f"train.cooldown_fraction must be in (0, 1) (the share of each budget spent cooling down), "
            f"got {f}"
        )
    if b.ladder is not None:
        rungs = list(b.ladder)
        if not rungs:
            raise ConfigError(
                "budget.ladder must list at least one budget (e.g. budget.ladder=[1e12,2e12]) or be null"
            )
        if any(r <= 0 for r in rungs):
            raise ConfigError(f"budget.ladder's budgets must be positive FLOPs, got {_fmt(rungs)}")
        if len(set(rungs)) != len(rungs):
            raise ConfigError(f"budget.ladder lists a budget twice: {_fmt(rungs)}; give each rung once")
        if t.schedule != Schedule.wsd:
            raise ConfigError(
                f"budget.ladder needs train.schedule=wsd (one trunk at a constant lr, a cool-down per rung), "
                f"got train.schedule={t.schedule}; set train.schedule=wsd or leave it out"
            )
        if b.flops != max(rungs):
            raise ConfigError(
                f"budget.flops={_g(b.flops)} disagrees with budget.ladder={_fmt(rungs)}: with a ladder, "
                f"budget.flops is its largest rung ({_g(max(rungs))}); set budget.flops={_g(max(rungs))} "
                f"or leave budget.flops out"
            )
    if t.schedule == Schedule.wsd and t.warmup_fraction >= 1 - f:
        where = "the smallest rung's" if b.ladder is not None else "the"
        raise ConfigError(
            f"train.warmup_fraction={t.warmup_fraction:g} ends the lr's warm-up after {where} branch point "
            f"(1 - train.cooldown_fraction = {1 - f:g} of its budget); lower train.warmup_fraction below "
            f"{1 - f:g} or train.cooldown_fraction below {1 - t.warmup_fraction:g}"
        )
