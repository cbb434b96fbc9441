"""A run's identity from its config: one reader for the record of a run that completed and of one whose
config did not even validate."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from budgetssl.record.sections import Identity

# Record field -> where the config holds it.
KEYS = {
    "method": "method.name",
    "dataset": "dataset.name",
    "backbone": "backbone.name",
    "seed": "seed",
    "budget_flops": "budget.flops",
    "batch_size": "train.batch_size",
    "image_size": "dataset.image_size",
    "schedule": "train.schedule",
}


def _get(config: Any, key: str) -> Any:
    if isinstance(config, DictConfig):
        value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    else:
        value = config
        for part in key.split("."):
            value = getattr(value, part, None)
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def identity_of(config: Any) -> Identity:
    """The identity fields of a checked RunConfig or of a raw composed DictConfig (missing -> None)."""
    return Identity(**{name: _get(config, key) for name, key in KEYS.items()})
