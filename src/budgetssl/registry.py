"""A name -> class registry per config group, whose errors list the valid choices."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import types
from typing import Generic, TypeVar

from budgetssl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the `name` field of a config group's options to the class that implements it.

    Modules of `package` are imported on first lookup, so adding an entry is one new file. With
    `entry_points`, a Python entry point group (e.g. `budgetssl.methods`), entries from other installed
    distributions load after the package's own, so a user's package adds one without forking: each entry
    point is named for the entry it provides and names a module that registers it (`@METHODS.register`)
    or the class itself (`mypkg.method:MyMethod`), registered under the entry point's name.
    """

    def __init__(self, group: str, package: str, entry_points: str | None = None) -> None:
        self.group = group
        self.package = package
        self.entry_points = entry_points
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._error: ConfigError | None = None  # a plugin that failed to load: raised at every lookup

    def register(self, name: str):
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' registered twice")
            self._entries[name] = entry
            return entry

        return add

    def _load(self) -> None:
        if self._error is not None:
            raise self._error
        if self._loaded:
            return
        self._loaded = True  # first: the modules imported below register through this registry
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{info.name}")
        if self.entry_points is not None:
            for point in importlib.metadata.entry_points(group=self.entry_points):
                try:
                    self._load_plugin(point)
                except ConfigError as e:
                    self._error = e
                    raise

    def _load_plugin(self, point: importlib.metadata.EntryPoint) -> None:
        """Load one entry point; anything wrong with it is a ConfigError naming it and its distribution,
        since a broken plugin would otherwise surface as a traceback from inside the user's package."""
        dist = point.dist.name if point.dist is not None else "unknown"
        where = f"entry point '{point.name} = {point.value}' ({self.entry_points}) of distribution '{dist}'"
        fix = f"fix that package, or uninstall it (pip uninstall {dist})"
        try:
            loaded = point.load()
        except Exception as e:  # any error of the plugin's own code: say whose it is
            problem = f"{type(e).__name__}: {e}"
            raise ConfigError(f"{self.group} plugin failed to load: {where}: {problem}; {fix}") from e
        if point.name not in self._entries and not isinstance(loaded, types.ModuleType):
            self._entries[point.name] = loaded  # the entry point names the class itself
        if point.name not in self._entries:
            raise ConfigError(
                f"{where} loaded but registered no {self.group} '{point.name}' (registered: "
                f"{', '.join(sorted(self._entries))}); name the entry point for the {self.group} its module "
                f"registers, or point it at the class (module:Class); {fix}"
            )

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
