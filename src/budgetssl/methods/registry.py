"""Methods by name (the `method=` config group), and `${methods:...}`: every one of them in a sweep."""

from __future__ import annotations

from omegaconf import OmegaConf

from budgetssl.registry import Registry

METHODS: Registry = Registry("method", "budgetssl.methods.zoo", entry_points="budgetssl.methods")
"""One module per method; each registers itself with METHODS. A user's package adds its own through the
`budgetssl.methods` entry point group (README "Your own method")."""

RESOLVER = "methods"


def every_method(folder: str = "") -> str:
    """`${methods:cpu}` in a sweep's params (configs/experiment/zoo.yaml): every registered method as a
    comma-separated sweep over `method=`, each under the config folder `folder` (`cpu/simclr`), so a
    method added to the zoo or by a user's package joins the sweep with no edit of the sweep."""
    return ",".join(f"{folder}/{name}" if folder else name for name in METHODS.names())


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, every_method)
