"""metrics.jsonl: one JSON object per logged step, readable without any logger installed.

Only rank 0 writes: under torchrun every rank holds a MetricsLog, and the stage that makes it says
whether this process is the one (`enabled`). A resumed run first drops the rows its interrupted attempt
logged after its last checkpoint, so each step appears once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from budgetssl.files import atomic_write
from budgetssl.record.wandb_log import log_row


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log_row(row)  # to wandb too, when a run is open

    def discard_after(self, stage: str, step: int) -> int:
        """Drop the rows of `stage` past `step` (all of them for step 0); returns how many were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if not _past(line, stage, step)]
        if len(kept) != len(lines):
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
        return len(lines) - len(kept)


def _past(line: str, stage: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return True  # a line cut short by a kill -9
    return isinstance(row, dict) and row.get("stage") == stage and int(row.get("step", 0)) > step
