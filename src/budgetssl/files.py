"""Writing files so that a reader never sees half of one: write a temporary file, then rename."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from budgetssl.errors import BudgetSSLError

NO_SPACE = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


class DiskFull(BudgetSSLError):
    """A write into the run folder ran out of space (or quota) on its filesystem."""


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def filesystem_of(path: Path) -> str:
    """`the <type> filesystem at <mount point>` holding `path` (as /proc/mounts names it, on Linux)."""
    where = Path(os.path.abspath(path))
    while not where.exists() and where != where.parent:
        where = where.parent
    mount = where
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    kind = ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(mount):
                kind = f"{fields[2]} "  # the last matching line is the mount in effect
    except OSError:
        pass
    return f"the {kind}filesystem at {mount}"


def free_bytes(path: Path) -> int | None:
    where = Path(os.path.abspath(path))
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free
    except OSError:
        return None


def no_space(error: BaseException, path: Path, needed: int | None = None, what: str = "") -> DiskFull | None:
    """A DiskFull naming the filesystem and the sizes if `error` (from writing `path`) came from a full disk
    or quota: an OSError with ENOSPC/EDQUOT, or a library's error around one (torch.save reports a short
    write as a RuntimeError, 'unexpected pos ...', and says nothing of why). None for any other error."""
    free = free_bytes(path.parent)
    reason = NO_SPACE.get(getattr(error, "errno", None) or -1)
    if reason is None:
        text = str(error)
        reason = next((r for r in NO_SPACE.values() if r in text.lower()), None)
        short_write = isinstance(error, RuntimeError) and ("unexpected pos" in text or "write failed" in text)
        if reason is None and short_write and needed is not None and free is not None and free < needed:
            reason = "no space left"
    if reason is None:
        return None
    need = f": it needs about {megabytes(needed)}{f' ({what})' if what else ''}" if needed else ""
    have = f", {megabytes(free)} free" if free is not None else ""
    return DiskFull(
        f"{reason} on {filesystem_of(path.parent)} writing {path}{need}{have}; free space there, or write "
        f"to a filesystem with room (for a run folder: hydra.run.dir=...)"
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary path beside `path`, then move it into place in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and (full := no_space(e, path)) is not None:
            raise full from e
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))
