"""Gather the summary.json of every run below a folder, counting the ones that cannot be used."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetssl.record.summary import SUMMARY


@dataclass
class Collection:
    runs: list[dict[str, Any]] = field(default_factory=list)  # completed records, each with its "path"
    failed: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{len(self.runs)} completed run(s); ignored {len(self.failed)} failed or unfinished "
            f"and {len(self.unreadable)} unreadable summary file(s)"
        )


def collect(root: Path) -> Collection:
    found = Collection()
    for path in sorted(root.rglob(SUMMARY)):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            found.unreadable.append(path)
            continue
        if record.get("status") != "completed":
            found.failed.append(path)
            continue
        found.runs.append({**record, "path": str(path.parent)})
    return found
