"""Pretraining datasets by name (the `dataset=` config group)."""

from __future__ import annotations

from budgetssl.registry import Registry

DATASETS: Registry = Registry("dataset", "budgetssl.data.sets")
