"""Composing the config outside @hydra.main (for commands that write no run folder)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from budgetssl.config.paths import config_dir
from budgetssl.errors import ConfigError


def compose_config(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("config", overrides=overrides)
    except HydraException as e:
        raise ConfigError(str(e)) from None
