"""Segmentation datasets for transfer by name (the `transfer=` config group)."""

from __future__ import annotations

from budgetssl.registry import Registry

TRANSFERS: Registry = Registry("transfer", "budgetssl.transfer.sets")
