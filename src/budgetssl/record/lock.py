"""One writer per run folder: a lock file, `<run>/.lock.json`, held while a command trains into the folder.

Two launches of one config at once (a sweep re-launched while its first launch still runs, a requeued job
racing a manual resubmit) would both train into the same folder, both write checkpoints and the record, and
log every step twice. The first launch takes the lock; a second one finds it held, says which host and
process hold the folder, and exits with EXIT_BUSY (73) without writing anything there; in a sweep that job
is skipped, like a completed one.

Made for a cluster's shared filesystem (NFS v3+, Lustre, GPFS), where flock/fcntl locks are not honoured
everywhere: the lock is a file whose existence is the lock. It is written in full beside its final name and
hard-linked into place (link(2) is atomic and fails when the name exists, on NFS too; where a filesystem
has no hard links, O_CREAT|O_EXCL), so a reader never sees half of one. It holds JSON:
`host`, `pid`, `command`, `started_at`, `heartbeat_at` (ISO times, UTC), `heartbeat` (epoch seconds),
`boot_id`, `pid_start` and `pid_namespace` (which boot of the host, which process of that pid, seen from
which container), `slurm_job_id` and `slurm_restart_count` where SLURM set them, and a random `token`.

A thread rewrites the file every HEARTBEAT_SECONDS (30 s) with a fresh heartbeat. The lock is stale, and
the next launch takes it over (saying why on stderr), when
- its heartbeat is older than STALE_SECONDS (10 minutes: the holder was killed, hung, or its node is gone);
- it was taken on this host by a process that no longer runs (its pid, in the same pid namespace, is gone
  or is another process now, or the host has rebooted since);
- it was taken by an earlier run of this same SLURM job (same SLURM_JOB_ID, lower SLURM_RESTART_COUNT:
  SLURM starts a requeued job only after its previous run ended).
Hosts' clocks are assumed to agree within a minute or so (NTP). The lock is released (the file removed)
when the command ends: completed, failed, crashed or stopped by a signal; only kill -9 or a lost node
leaves it behind, for the rules above. Under torchrun only rank 0 takes it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from budgetssl.errors import BudgetSSLError

LOCK = ".lock.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
EXIT_BUSY = 73  # EX_CANTCREAT (sysexits.h): the run folder is another live process's


class FolderBusy(BudgetSSLError):
    """Another live process holds the run folder's lock."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder or {}
        h = self.holder
        who = (
            f"host {h.get('host')} pid {h.get('pid')} since {h.get('started_at')}"
            f" (last heartbeat {h.get('heartbeat_at')}, command {h.get('command')})"
            if h
            else "another process (its lock file is being written or is unreadable)"
        )
        super().__init__(
            f"{path.parent} is being trained by {who} (lock file {path}); wait for it to finish, or, if "
            f"that process is gone, remove the lock file (a lock whose heartbeat is {STALE_SECONDS / 60:g} "
            f"minutes old is taken over by itself)"
        )


class LockError(BudgetSSLError):
    """The lock file could not be written (a read-only or full filesystem)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's pid namespace (containers on one host may each have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux), telling a pid reused apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's content; None if there is none or it is not a lock's JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_reason(holder: dict[str, Any] | None, path: Path, now: float | None = None) -> str | None:
    """Why the lock `holder` (read from `path`) no longer holds the folder, or None while it does."""
    now = time.time() if now is None else now
    if holder is None:  # unreadable: only its age can tell
        try:
            age = now - path.stat().st_mtime
        except OSError:
            return "it is gone"
        return f"it is unreadable and {age:.0f} s old" if age > STALE_SECONDS else None
    beat = holder.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat > STALE_SECONDS:
        return f"its last heartbeat ({holder.get('heartbeat_at')}) is over {STALE_SECONDS:.0f} s old"
    job, restart = holder.get("slurm_job_id"), holder.get("slurm_restart_count") or 0
    if (
        job is not None
        and job == _env_int("SLURM_JOB_ID")
        and restart < (_env_int("SLURM_RESTART_COUNT") or 0)
    ):
        return f"it was taken by an earlier run of this SLURM job {job} (restart {restart})"
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "this host has rebooted since it was taken"
    pid = holder.get("pid")
    if isinstance(pid, int) and holder.get("pid_namespace") in (None, _pid_namespace()):
        if pid == os.getpid() and holder.get("token") not in _held:
            return f"it was left by an earlier process with this pid ({pid})"
        if not _alive(pid):
            return f"process {pid} on this host is gone"
        start = _pid_start(pid)
        if holder.get("pid_start") is not None and start is not None and start != holder["pid_start"]:
            return f"process {pid} on this host is gone (the pid is another process's now)"
    return None


_held: set[str] = set()  # tokens of the locks this process holds


class FolderLock:
    """The lock of one run folder: `acquire()` or FolderBusy, a heartbeat while held, `release()`."""

    def __init__(
        self,
        folder: Path,
        command: str,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.path = Path(folder) / LOCK
        self.command = command
        self.heartbeat_seconds = heartbeat_seconds
        self.token = secrets.token_hex(8)
        self.started_at = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def content(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": self.command,
            "started_at": self.started_at,
            "heartbeat_at": _now(),
            "heartbeat": time.time(),
            "heartbeat_seconds": self.heartbeat_seconds,
            "stale_after_seconds": STALE_SECONDS,
            "boot_id": _boot_id(),
            "pid_start": _pid_start(os.getpid()),
            "pid_namespace": _pid_namespace(),
            "slurm_job_id": _env_int("SLURM_JOB_ID"),
            "slurm_restart_count": _env_int("SLURM_RESTART_COUNT"),
            "token": self.token,
        }

    def _tmp(self) -> Path:
        return self.path.with_name(f"{LOCK}.{self.token}.tmp")

    def _write_tmp(self) -> Path:
        tmp = self._tmp()
        with open(tmp, "w") as f:
            f.write(json.dumps(self.content(), indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _create(self) -> bool:
        """Put our lock file in place if there is none; False if there is one."""
        try:
            tmp = self._write_tmp()
        except OSError as e:
            self._tmp().unlink(missing_ok=True)
            raise LockError(f"cannot write the run folder's lock file {self.path}: {e}") from None
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: exclusive create instead
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(tmp.read_text())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale(self, holder: dict[str, Any] | None) -> dict[str, Any] | None:
        """Move the stale lock aside and delete it. Returns None when done (or it was gone already), or
        the lock that turned out to be in place instead (a racing launch took over first)."""
        aside = self.path.with_name(f"{LOCK}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        moved = _read(aside)
        if (moved or {}).get("token") == (holder or {}).get("token"):
            aside.unlink(missing_ok=True)
            return None
        try:  # a fresh lock taken meanwhile: put it back
            os.link(aside, self.path)
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        return moved

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder: dict[str, Any] | None = None
        for _ in range(5):
            if self._create():
                break
            holder = _read(self.path)
            if holder is None and not self.path.exists():
                continue  # released meanwhile
            reason = stale_reason(holder, self.path)
            if reason is None:
                raise FolderBusy(self.path, holder)
            other = self._remove_stale(holder)
            if other is not None:
                raise FolderBusy(self.path, other)
            h = holder or {}
            print(
                f"{self.command}: taking over the stale lock of {self.path.parent} (host {h.get('host')} "
                f"pid {h.get('pid')}, since {h.get('started_at')}): {reason}",
                file=sys.stderr,
            )
        else:
            raise FolderBusy(self.path, holder)
        _held.add(self.token)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="budgetssl-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            if (_read(self.path) or {}).get("token") != self.token:
                print(
                    f"{self.command}: warning: the lock of {self.path.parent} is no longer this process's",
                    file=sys.stderr,
                )
                return
            try:
                os.replace(self._write_tmp(), self.path)
            except OSError:  # a full disk or a filesystem hiccup: try again at the next beat
                self._tmp().unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.token in _held:
            _held.discard(self.token)
            if (_read(self.path) or {}).get("token") == self.token:
                self.path.unlink(missing_ok=True)


@contextmanager
def hold(folder: Path, command: str, world: Any = None) -> Iterator[FolderLock | None]:
    """The run folder's lock for the block: rank 0 takes it, every rank learns whether it got it (under
    torchrun a busy folder stops them all). Raises FolderBusy; released at the end of the block."""
    main = world is None or world.is_main
    lock = FolderLock(folder, command) if main else None
    outcome: tuple[str, Any, Any] | None = None  # None: taken; else why not, for every rank
    if lock is not None:
        try:
            lock.acquire()
        except FolderBusy as e:
            outcome = ("busy", str(e.path), e.holder)
        except LockError as e:
            outcome = ("error", str(e), None)
    if world is not None:
        outcome = world.broadcast(outcome)
    if outcome is not None:
        kind, what, holder = outcome
        raise FolderBusy(Path(what), holder) if kind == "busy" else LockError(what)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


__all__ = ["EXIT_BUSY", "FolderBusy", "FolderLock", "HEARTBEAT_SECONDS", "LOCK", "STALE_SECONDS", "hold"]
