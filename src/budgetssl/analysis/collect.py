"""Gather the record of every run below a folder, counting the ones that cannot be used."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from budgetssl.record.sections import Record
from budgetssl.record.summary import SUMMARY


@dataclass
class Run:
    """A completed run's record and the folder it was read from."""

    record: Record
    folder: Path


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    trunks: list[Path] = field(default_factory=list)  # budget ladders' own records: their rungs are the runs

    @property
    def records(self) -> list[Record]:
        return [r.record for r in self.runs]

    def describe(self) -> str:
        return (
            f"{len(self.runs)} completed run(s); ignored {len(self.failed)} failed or unfinished "
            f"and {len(self.unreadable)} unreadable summary file(s)"
        )


def collect(root: Path) -> Collection:
    """Every summary.json below `root` (this version's records and older ones), typed."""
    found = Collection()
    for path in sorted(root.rglob(SUMMARY)):
        try:
            flat = json.loads(path.read_text())
            if not isinstance(flat, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            found.unreadable.append(path)
            continue
        record = Record.from_json(flat)
        if record.outcome.status != "completed":
            found.failed.append(path)
            continue
        if record.value("ladder.role") == "trunk":  # a ladder's trunk is no run (stages/ladder.py)
            found.trunks.append(path)
            continue
        found.runs.append(Run(record, path.parent))
    return found
