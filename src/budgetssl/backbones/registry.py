"""Backbone families: how a timm model of each kind is created and read out."""

from __future__ import annotations

from budgetssl.registry import Registry

FAMILIES: Registry = Registry("backbone.family", "budgetssl.backbones.families")
