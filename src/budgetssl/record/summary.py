"""summary.json: the run's record, written once at the end, whether the run completed or failed."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import timm
import torch

import budgetssl
from budgetssl.record.files import write_json

SUMMARY = "summary.json"


def environment() -> dict[str, Any]:
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


def write_summary(folder: Path, record: dict[str, Any]) -> Path:
    """Write the record atomically; a completed record is never replaced by a later failure."""
    path = folder / SUMMARY
    if record.get("status") == "failed" and path.exists():
        try:
            if json.loads(path.read_text()).get("status") == "completed":
                return path
        except (OSError, ValueError):
            pass
    write_json(path, record)
    return path
