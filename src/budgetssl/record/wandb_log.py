"""Weights & Biases beside metrics.jsonl: offline by default (files in the run folder, no network),
online when configured. Credentials stay with wandb's own login (`wandb login` / WANDB_API_KEY in the
environment); nothing of them is written into the run folder or the config.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from budgetssl.config.schema import WandbConfig
from budgetssl.errors import ConfigError
from budgetssl.record.sections import Record

_active: list[Any] = []  # the open wandb run of this process, if any


def log_row(row: dict[str, Any]) -> None:
    """Send one metrics.jsonl row to the open run, keys prefixed by their stage (pretrain/, transfer/)."""
    if not _active:
        return
    stage = row.get("stage", "train")
    _active[-1].log(
        {f"{stage}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "stage"}
    )


@contextmanager
def wandb_run(cfg: WandbConfig, folder: Path, name: str, config: dict[str, Any]) -> Iterator[Any]:
    """One wandb run for the run folder (its files under `folder/wandb/`); a no-op when disabled."""
    if cfg.mode == "disabled":
        yield None
        return
    # Deferred: importing wandb takes seconds; a run with wandb disabled never pays it.
    import wandb

    try:
        run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            name=name,
            dir=str(folder),
            config=config,
            mode=cfg.mode,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", disable_git=True, x_disable_stats=True),
        )
    except (wandb.errors.UsageError, wandb.errors.AuthenticationError, wandb.errors.CommError) as e:
        raise ConfigError(
            f"wandb could not start in mode '{cfg.mode}': {e}; for online logging run `wandb login` "
            f"(or set WANDB_API_KEY in the environment, never in a config), or set logger.wandb.mode=offline"
        ) from None
    _active.append(run)
    try:
        yield run
    finally:
        _active.remove(run)
        run.finish()


def headline(record: Record) -> dict[str, Any]:
    """The record's fields worth seeing in wandb's run table, read from its sections."""
    p, t, e = record.pretraining, record.transfer, record.energy
    fields = {
        "status": record.outcome.status,
        "steps": p and p.steps,
        "train_flops": p and p.train_flops,
        "flops_per_step": p and p.flops_per_step,
        "final_loss": p and p.final_loss,
        "transfer_flops": t and t.transfer_flops,
        "total_flops": record.total_flops,
        "miou": t and t.miou,
        "pixel_accuracy": t and t.pixel_accuracy,
        "probe_miou": record.probe and record.probe.probe_miou,
        "knn_accuracy": record.readout and record.readout.knn_accuracy,
        "linear_accuracy": record.readout and record.readout.linear_accuracy,
        "energy_kwh": e and e.energy_kwh,
        "co2_kg": e and e.co2_kg,
        "co2_kg_estimated": e and e.co2_kg_estimated,
    }
    return {k: v for k, v in fields.items() if v is not None}


def summarize(run: Any, record: Record) -> None:
    if run is not None:
        run.summary.update(headline(record))
