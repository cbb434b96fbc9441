"""A markdown table of runs: what was trained, what it cost, what it scored."""

from __future__ import annotations

from typing import Any

COLUMNS = [
    ("method", "method"),
    ("dataset", "dataset"),
    ("backbone", "backbone"),
    ("budget_flops", "budget (FLOPs)"),
    ("train_flops", "train FLOPs"),
    ("transfer_flops", "transfer FLOPs"),
    ("energy_kwh", "kWh (measured)"),
    ("co2_kg", "CO2 kg (measured)"),
    ("co2_kg_estimated", "CO2 kg (estimated)"),
    ("miou", "mIoU %"),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1e5:
        return f"{value:.3g}"
    if isinstance(value, float) and value != 0 and abs(value) < 1e-2:
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def sort_key(run: dict[str, Any]) -> tuple:
    return (str(run.get("method")), str(run.get("backbone")), float(run.get("budget_flops") or 0))


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in sorted(runs, key=sort_key)]
    return "\n".join([head, rule, *rows])
