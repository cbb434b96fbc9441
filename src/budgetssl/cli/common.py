"""What every Hydra command shares: our config tree, validation, and a record on success or failure."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from budgetssl.config.check import RunConfig, check_config
from budgetssl.config.paths import config_dir
from budgetssl.errors import BudgetSSLError
from budgetssl.record.summary import SUMMARY, environment, now, write_summary

Stage = Callable[[RunConfig, Path], dict[str, Any]]


def _identity(cfg: DictConfig) -> dict[str, Any]:
    """What a failed record can still say about the run, even when the config did not validate."""

    def get(key: str) -> Any:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)

    return {
        "method": get("method.name"),
        "dataset": get("dataset.name"),
        "backbone": get("backbone.name"),
        "seed": get("seed"),
        "budget_flops": get("budget.flops"),
    }


def execute(cfg: DictConfig, folder: Path, stage: Stage, command: str) -> int:
    """Run `stage`, write summary.json either way, and return the exit code."""
    start = time.perf_counter()
    record: dict[str, Any] = {"command": command, "status": "running", **_identity(cfg), "started_at": now()}
    code = 0
    try:
        record.update(stage(check_config(cfg), folder))
        record["status"] = "completed"
    except BudgetSSLError as e:
        record.update(
            status="failed", error=str(e), error_type=type(e).__name__, failed_step=getattr(e, "step", None)
        )
        print(f"{command}: error: {e}", file=sys.stderr)
        code = 2
    except BaseException as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__)
        write_summary(folder, _finish(record, start))
        raise
    path = write_summary(folder, _finish(record, start))
    print(f"{command}: {record['status']}; record: {path}", file=sys.stderr if code else sys.stdout)
    return code


def _finish(record: dict[str, Any], start: float) -> dict[str, Any]:
    return {
        **record,
        "wall_seconds": time.perf_counter() - start,
        "finished_at": now(),
        "environment": environment(),
    }


def hydra_command(stage: Stage, command: str) -> Callable[[], None]:
    """A console-script entry point running `stage` under Hydra with budgetssl's config tree."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def main(cfg: DictConfig) -> None:
        folder = Path(HydraConfig.get().runtime.output_dir)
        code = execute(cfg, folder, stage, command)
        if code:
            raise SystemExit(code)

    return main


__all__ = ["SUMMARY", "hydra_command", "execute"]
