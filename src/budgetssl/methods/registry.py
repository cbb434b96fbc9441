"""Methods by name (the `method=` config group)."""

from __future__ import annotations

from budgetssl.registry import Registry

METHODS: Registry = Registry("method", "budgetssl.methods.zoo")
