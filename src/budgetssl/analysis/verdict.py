"""One run's collapse verdict as its record holds it (`collapse`: null, or the rule that fired with its
values and thresholds), read and checked once: what aggregate.py counts per point and collapse.py marks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from budgetssl.record.sections import Record

FIELD = "collapse"
FORMAT = (
    "null, or an object {'rule': <name>, 'values': {<name>: number}, 'thresholds': {<name>: number}, "
    "'rules': [<name>, ...]}"
)


@dataclass(frozen=True)
class Collapse:
    """One run's verdict: the first rule that fired, every rule that fired, and the monitors' values and
    thresholds the rules compared."""

    rule: str
    values: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    rules: tuple[str, ...] = ()

    def describe(self) -> str:
        """`kl_teacher_student: kl_teacher_student 0.043 (threshold 0.1); also fired: rank_ratio`."""
        shown = [f"{k} {_g(v)}" + (f" (threshold {_g(self.thresholds[k])})" if k in self.thresholds else "")
                 for k, v in self.values.items()]  # fmt: skip
        shown += [f"threshold {k} {_g(v)}" for k, v in self.thresholds.items() if k not in self.values]
        others = [r for r in self.rules if r != self.rule]
        return (
            f"`{self.rule}`"
            + (": " + ", ".join(shown) if shown else "")
            + (f"; also fired: {', '.join(others)}" if others else "")
        )


def _g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def collapse_of(record: Record) -> Collapse | None:
    """The record's verdict; None when it is null or absent (a record written before the verdict existed
    reads as not collapsed). A malformed one is a ValueError naming the expected form."""
    raw = record.value(FIELD)
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("rule"), str) or not raw["rule"]:
        raise ValueError(f"'{FIELD}' is {raw!r}; expected {FORMAT}")
    parts = {}
    for name in ("values", "thresholds"):
        part = raw.get(name) or {}
        if not isinstance(part, dict):
            raise ValueError(f"'{FIELD}.{name}' is {part!r}; expected {FORMAT}")
        parts[name] = dict(part)
    rules = raw.get("rules") or [raw["rule"]]
    if not isinstance(rules, list | tuple) or not all(isinstance(r, str) for r in rules):
        raise ValueError(f"'{FIELD}.rules' is {rules!r}; expected {FORMAT}")
    return Collapse(raw["rule"], parts["values"], parts["thresholds"], tuple(rules))
