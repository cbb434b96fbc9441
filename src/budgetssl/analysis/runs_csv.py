"""runs.csv: one flat row per completed record, for pandas or a spreadsheet.

Columns: the report table's fields first, then every other field of the record (nested ones such as the
recipe flattened as `recipe.lr`; FLOP breakdowns and the hardware model kept whole, as JSON), the derived
totals, and the run folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from budgetssl.analysis.collect import Run
from budgetssl.analysis.table import COLUMNS, sort_key
from budgetssl.files import atomic_write
from budgetssl.record.sections import DERIVED

KEPT_WHOLE = ("flops_breakdown", "transfer_flops_breakdown", "hardware_model", "backbone_timm")


def flat_row(run: Run) -> dict[str, Any]:
    row: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, dict) and key not in KEPT_WHOLE:
            for k, v in value.items():
                put(f"{key}.{k}", v)
        elif isinstance(value, dict | list | tuple):
            row[key] = json.dumps(value, sort_keys=True)
        else:
            row[key] = value

    for key, value in run.record.to_json().items():
        put(key, value)
    for key in DERIVED:
        row[key] = run.record.value(key)
    row["path"] = str(run.folder)
    return row


def write_runs_csv(runs: list[Run], path: Path) -> Path:
    rows = [flat_row(r) for r in sorted(runs, key=lambda r: sort_key(r.record))]
    first = [key for key, _ in COLUMNS]
    seen = dict.fromkeys(k for row in rows for k in row)  # the record's own order: section by section
    rest = [k for k in seen if k not in first and k != "path"]
    columns = [*first, *rest, "path"]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
    return path
