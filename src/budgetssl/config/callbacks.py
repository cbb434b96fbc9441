"""Hydra callbacks (registered under hydra.callbacks in configs/config.yaml)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class KeepSweepConfigs(Callback):
    """Every sweep's config, kept: Hydra saves a sweep's config as `<sweep dir>/multirun.yaml`, and every
    sweep into the same sweep dir (budgetssl's is results/runs, so that re-launches find their runs)
    overwrites it. Before Hydra writes it, this saves the same config as
    `multirun_<UTC time, to the microsecond>.yaml` beside it; `multirun.yaml` stays the latest."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S_%fZ")
        path, n = folder / f"multirun_{stamp}.yaml", 1
        while path.exists():
            n += 1
            path = folder / f"multirun_{stamp}_{n}.yaml"
        OmegaConf.save(config, path)
