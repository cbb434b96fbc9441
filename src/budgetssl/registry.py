"""A name -> class registry per config group, whose errors list the valid choices."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from budgetssl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the `name` field of a config group's options to the class that implements it.

    Modules of `package` are imported on first lookup, so adding an entry is one new file.
    """

    def __init__(self, group: str, package: str) -> None:
        self.group = group
        self.package = package
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str):
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' registered twice")
            self._entries[name] = entry
            return entry

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.group} '{name}'; valid choices: {', '.join(self.names())} "
                f"(set {self.group}=<name>)"
            )
        return self._entries[name]
