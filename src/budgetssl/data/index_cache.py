"""File indexes cached on disk, so that a large dataset (ImageNet: 1.3M files, ImageNet-21K: 13M) is
walked once, not on every start.

An entry is one JSON file in the cache folder (`dataset.cache_dir`; default `$XDG_CACHE_HOME/budgetssl/
index`, else `~/.cache/budgetssl/index`), named by a hash of what it indexes and holding a signature of
its source. A folder's signature is the modification time of the folder and of every sub-folder in the
index: adding or removing a file changes its folder's mtime, so a changed copy is walked again, while an
unchanged one costs one `stat` per folder (1,000 for ImageNet) instead of a listing. Entries are written
atomically (temporary file, then rename); an unwritable cache only costs the walk.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetssl.files import atomic_write

VERSION = 1


def cache_folder(option: str | None) -> Path:
    """The folder of cached indexes: `option` if set, else the user's cache folder."""
    if option:
        return Path(option).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "budgetssl" / "index"


def _entry(cache: Path, name: str) -> Path:
    return cache / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.json"


def load_entry(cache: Path, name: str, signature: Any) -> dict[str, Any] | None:
    """The cached payload for `name` if its stored signature equals `signature`, else None."""
    try:
        stored = json.loads(_entry(cache, name).read_text())
    except (OSError, ValueError):
        return None
    if stored.get("version") != VERSION or stored.get("name") != name or stored.get("signature") != signature:
        return None
    return stored["payload"]


def store_entry(cache: Path, name: str, signature: Any, payload: dict[str, Any]) -> None:
    text = json.dumps(
        {"version": VERSION, "name": name, "signature": signature, "payload": payload}, separators=(",", ":")
    )
    try:
        atomic_write(_entry(cache, name), lambda tmp: tmp.write_text(text))
    except OSError as e:
        warnings.warn(
            f"cannot write the file index cache in {cache} ({e}); set dataset.cache_dir", stacklevel=2
        )


def cached(cache: Path, name: str, signature: Any, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The payload for `name`: from the cache while `signature` holds, else built and stored."""
    payload = load_entry(cache, name, signature)
    if payload is None:
        payload = build()
        store_entry(cache, name, signature, payload)
    return payload


@dataclass(frozen=True)
class Listing:
    files: list[str]  # paths relative to the folder, "/"-separated, sorted
    dirs: list[str]  # every sub-folder, relative, sorted
    from_cache: bool


def folder_signature(folder: Path, dirs: Sequence[str]) -> list[int] | None:
    try:
        return [(folder / d).stat().st_mtime_ns for d in ("", *dirs)]
    except OSError:
        return None


def walk(folder: Path, extensions: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files with one of `extensions` (case-insensitive) and sub-folders under `folder`, at any depth."""
    files: list[str] = []
    dirs: list[str] = []
    exts = tuple(e.lower() for e in extensions)
    for parent, subdirs, names in os.walk(folder, followlinks=True):
        rel = os.path.relpath(parent, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        dirs.extend(prefix + d for d in subdirs)
        files.extend(prefix + n for n in names if n.lower().endswith(exts))
    return sorted(files), sorted(dirs)


def list_files(folder: Path, extensions: Sequence[str], cache: Path) -> Listing:
    """The files under `folder` (any depth) with one of `extensions`, from the cache when unchanged."""
    folder = folder.resolve()
    name = f"files:{folder}:{','.join(extensions)}"
    payload = None
    try:
        stored = json.loads(_entry(cache, name).read_text())
        if stored.get("version") == VERSION and stored.get("name") == name:
            dirs = stored["payload"]["dirs"]
            if stored["signature"] == folder_signature(folder, dirs):
                payload = stored["payload"]
    except (OSError, ValueError, KeyError, TypeError):
        payload = None
    if payload is not None:
        return Listing(payload["files"], payload["dirs"], from_cache=True)
    files, dirs = walk(folder, extensions)
    store_entry(cache, name, folder_signature(folder, dirs), {"files": files, "dirs": dirs})
    return Listing(files, dirs, from_cache=False)
