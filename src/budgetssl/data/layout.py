"""Checks that a dataset root has the layout a loader reads, with messages that name the option, the
path, what was expected and what is there instead."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from budgetssl.errors import ConfigError


def contents(folder: Path, limit: int = 6) -> str:
    """A short description of what `folder` holds, for error messages."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "nothing readable"
    if not names:
        return "nothing (it is empty)"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def require_root(value: str | None, option: str, expected: str) -> Path:
    """The dataset root `option` points at, which must be an existing folder."""
    if value is None:
        raise ConfigError(f"{option} is not set; point it at {expected} ({option}=<folder>)")
    root = Path(value).expanduser()
    if not root.exists():
        raise ConfigError(f"{option}={root} does not exist; point it at {expected}")
    if not root.is_dir():
        raise ConfigError(f"{option}={root} is not a folder; point it at {expected}")
    return root


def require_dir(root: Path, relative: str, option: str, expected: str) -> Path:
    """root/relative, which must be a folder; the message says which one was expected and what is there."""
    path = root / relative
    if not path.is_dir():
        raise ConfigError(
            f"{option}={root} has no folder {relative}/ (expected {expected}); "
            f"the root holds {contents(root)}"
        )
    return path


def require_file(root: Path, relative: str, option: str, expected: str) -> Path:
    """root/relative, which must be a file."""
    path = root / relative
    if not path.is_file():
        parent = path.parent
        there = contents(parent) if parent.is_dir() else f"no folder {parent.relative_to(root)}/"
        raise ConfigError(f"{option}={root} has no file {relative} (expected {expected}); found {there}")
    return path


def require_files(paths: Sequence[Path], kind: str, of: str, option: str, root: Path, expected: str) -> None:
    """Every one of `paths` (the `kind` file of each of `of`) exists: a file missing mid-run would stop a
    run late, so it is named now, with how many more are missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} of the {len(paths)} {of} have no {kind}, e.g. {missing[0]} is missing "
            f"({option}={root}; expected {expected}); restore the missing files or point {option} at a "
            "complete copy"
        )
