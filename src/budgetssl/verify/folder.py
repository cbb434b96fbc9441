"""A run folder as budgetssl-verify reads it: the record, the config saved beside it, Hydra's own record
of where the run was launched, and metrics.jsonl. Nothing outside the folder is read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from budgetssl.config.volatile import AT_DEFAULT
from budgetssl.errors import BudgetSSLError
from budgetssl.plugins import check_config
from budgetssl.record.sections import Record
from budgetssl.record.summary import SUMMARY

CONFIG = Path(".hydra") / "config.yaml"  # the composed config, as Hydra saves it for every run
HYDRA = Path(".hydra") / "hydra.yaml"  # Hydra's own settings: the run's folder pattern and launch folder
METRICS = "metrics.jsonl"
DEFAULT_COMMAND = "budgetssl-run"  # a record too old to name its command


class NotARunFolder(BudgetSSLError):
    """The path is not a run folder written by budgetssl-run, -pretrain or -transfer."""


@dataclass
class RunFolder:
    path: Path
    flat: dict[str, Any]  # summary.json as written
    record: Record
    config: DictConfig  # .hydra/config.yaml, interpolations as saved (resolved where read)
    hydra: DictConfig | None  # .hydra/hydra.yaml's `hydra` node; None where the file is absent
    rows: list[dict[str, Any]] | None  # metrics.jsonl's rows; None where the file is absent
    unreadable_rows: list[int] = field(default_factory=list)  # line numbers that are not JSON objects

    @property
    def command(self) -> str:
        return self.record.outcome.command or DEFAULT_COMMAND

    def run_config(self) -> Any:
        """The saved config, typed and checked (a RunConfig); keys added since it was written read as the
        value that trains as before them (config/volatile.py AT_DEFAULT), as a checkpoint's do."""
        config = self.config.copy()
        absent = object()
        for key, value in AT_DEFAULT.items():
            if OmegaConf.select(config, key, default=absent) is absent:
                OmegaConf.update(config, key, value, force_add=True)
        return check_config(config)

    def stage_rows(self, stage: str) -> list[dict[str, Any]]:
        return [r for r in self.rows or [] if r.get("stage") == stage]


def _require(path: Path, name: Path | str, why: str) -> Path:
    file = path / name
    if not file.is_file():
        raise NotARunFolder(
            f"{path} is not a run folder: it has no {name} ({why}); give a folder that budgetssl-run, "
            f"-pretrain or -transfer wrote"
        )
    return file


def read_rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """metrics.jsonl's rows, and the numbers of lines that are not JSON objects (a cut-short line)."""
    rows, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad


def open_run(path: Path) -> RunFolder:
    """The run folder at `path`; NotARunFolder naming the missing or unreadable file otherwise."""
    if not path.is_dir():
        raise NotARunFolder(f"{path} is not a folder; give a run folder (it holds {SUMMARY})")
    summary = _require(path, SUMMARY, "every run writes its record there when it ends")
    try:
        flat = json.loads(summary.read_text())
    except (OSError, ValueError) as e:
        raise NotARunFolder(f"{summary} is not readable JSON ({e}); the record is damaged") from None
    if not isinstance(flat, dict):
        raise NotARunFolder(f"{summary} is not a JSON object; the record is damaged")
    config_file = _require(path, CONFIG, "Hydra saves the run's config there")
    config = OmegaConf.load(config_file)
    if not isinstance(config, DictConfig):
        raise NotARunFolder(f"{config_file} is not a mapping; the saved config is damaged")
    hydra = None
    if (path / HYDRA).is_file():
        node = OmegaConf.load(path / HYDRA)
        hydra = node.get("hydra") if isinstance(node, DictConfig) else None
    rows: list[dict[str, Any]] | None = None
    bad: list[int] = []
    if (path / METRICS).is_file():
        rows, bad = read_rows(path / METRICS)
    return RunFolder(path, flat, Record.from_json(flat), config, hydra, rows, bad)
