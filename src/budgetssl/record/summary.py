"""summary.json: the run's record, written once at the end, whether the run completed or failed."""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
from pathlib import Path
from typing import Any

import budgetssl
from budgetssl.files import write_json
from budgetssl.record.sections import Record

SUMMARY = "summary.json"
SECRET = re.compile(r"(^|_)(api_?key|access_?key|secret(_?key)?|token|password|passwd|credentials?)$", re.I)
REDACTED = "<redacted>"


def environment() -> dict[str, Any]:
    # Imported here: the report reads records without paying for torch's start-up.
    import timm
    import torch

    return {
        "budgetssl": budgetssl.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def completed_record(folder: Path) -> dict[str, Any] | None:
    """The record of `folder` if it says the run completed, else None (no record, unreadable, failed,
    interrupted): the test for "this run is done" before running it again."""
    try:
        record = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "completed" else None


def redact(value: Any) -> Any:
    """`value` with anything stored under a credential-like key (api_key, token, password, ...) masked:
    records are shared and published, credentials must never reach them."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def write_summary(folder: Path, record: Record) -> Path:
    """Write the record atomically; a completed record is only ever replaced by another completed one
    (never by a later failure or interruption in the same folder)."""
    path = folder / SUMMARY
    if record.outcome.status != "completed" and completed_record(folder) is not None:
        return path
    write_json(path, redact(record.to_json()))
    return path


def read_record(folder: Path) -> Record:
    """The record of a run folder (this version's or an older one's summary.json), typed."""
    return Record.from_json(json.loads((folder / SUMMARY).read_text()))
