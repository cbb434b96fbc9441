"""Methods by name (the `method=` config group)."""

from __future__ import annotations

from budgetssl.registry import Registry

METHODS: Registry = Registry("method", "budgetssl.methods.zoo", entry_points="budgetssl.methods")
"""One module per method; each registers itself with METHODS. A user's package adds its own through the
`budgetssl.methods` entry point group (README "Your own method")."""
