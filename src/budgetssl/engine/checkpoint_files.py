"""Checkpoints: one file per save under <run>/checkpoints/, written atomically, read with weights_only=True.

A checkpoint holds only tensors and plain containers (the training state is assembled by the loop), so
torch's restricted unpickler loads it and a file carrying any other Python object (a pickle payload that
would run code) is refused, never executed. The newest two are kept while training and the newest one
when training completes; an unreadable newest file falls back to the one before it, with a warning.

Saving does not stall training for the write (`background`, the default): the state is copied to host
memory (the only part training waits for) and a background thread writes the copy, atomically as
ever; one write at a time (the next save, and the end of training, wait for the one under way), and an
error writing it (a full disk) is raised there.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from budgetssl.config.volatile import VOLATILE, covered, without_defaults
from budgetssl.errors import BudgetSSLError, ConfigError
from budgetssl.files import megabytes, no_space

FOLDER = "checkpoints"
FORMAT = 1
NAME = re.compile(r"^step_(\d+)\.pt$")
REQUIRED = ("format", "step", "spent", "plan", "model", "optimizer")
# Settings that may differ between an interrupted run and its resumption: the keys that cannot change a
# result (config/volatile.py, the list the run folder's name also leaves out), extended by what the
# pretraining state in a checkpoint does not depend on: the device (a checkpoint is read onto the CPU and
# moved) and how the device runs the same arithmetic (TF32, the optimizer's kernels, torch.compile), the
# energy section (how energy is metered, the CO2 estimate's hardware model and grid), the transfer
# section (it runs after pretraining, from the finished backbone) and the readout section (read-outs of
# the frozen backbone, computed again whenever they run).
HOW_IT_RUNS: tuple[str, ...] = ("train.device", "train.tf32", "train.fused_optimizer", "train.compile")
MAY_CHANGE: tuple[str, ...] = (*VOLATILE, *HOW_IT_RUNS, "energy", "transfer", "readout")
# A transfer's checkpoint depends on the transfer section too.
TRANSFER_MAY_CHANGE: tuple[str, ...] = (*VOLATILE, *HOW_IT_RUNS, "energy", "readout")


class CheckpointError(BudgetSSLError):
    """No checkpoint in the run folder can be used (every file is corrupted or refused)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}.pt"


def tensor_bytes(tree: Any) -> int:
    """The bytes of the tensors in `tree` (dicts, lists, tuples): about what torch.save writes."""
    if isinstance(tree, torch.Tensor):
        return tree.nbytes
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def host_copy(tree: Any) -> Any:
    """`tree` (dicts, lists, tuples) with every tensor copied to host memory: what a write in the
    background may read while training goes on changing the originals in place."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: host_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(host_copy(v) for v in tree)
    return tree


class Writing:
    """One checkpoint written by a background thread; `join` waits for it and raises what it raised."""

    def __init__(self, write: Any, *args: Any) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, args=(write, *args), name="budgetssl-checkpoint")
        self.thread.start()

    def run(self, write: Any, *args: Any) -> None:
        try:
            write(*args)
        except BaseException as e:  # handed to the training thread by join
            self.error = e

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def write_atomically(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, flushed to disk, then renamed over it: a reader (or
    a resumed run after kill -9) sees the old file or the whole new one, never half of one. A full disk
    (or quota) is a DiskFull naming the filesystem, the checkpoint's size and the free space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):
            parts = {k: tensor_bytes(v) for k, v in state.items()}
            largest = sorted((n, k) for k, n in parts.items() if n >= 50_000)[::-1][:4]
            what = ", ".join(f"{k} {megabytes(n)}" for n, k in largest)
            full = no_space(e, path, needed=sum(parts.values()), what=what)
            if full is not None:
                raise full from e
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state in `path`, loaded with weights_only=True; anything else is a CheckpointError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refused checkpoint {path}: it holds Python objects other than tensors and plain containers "
            f"(loading it could run code), so budgetssl did not write it or it was altered"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in REQUIRED):
        raise CheckpointError(f"{path} is not a budgetssl checkpoint (format {FORMAT})")
    return state


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_same_config(
    saved: dict[str, Any], current: dict[str, Any], path: Path, may_change: tuple[str, ...] = MAY_CHANGE
) -> None:
    """A checkpoint resumes only the run it came from: same method, data, budget, batch, seed... (a key
    added since it was written reads as the value that trains as before it: volatile.py AT_DEFAULT)."""
    a, b = flatten(without_defaults(saved)), flatten(without_defaults(current))
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not covered(k, may_change))
    if differ:
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        run = next((p.parent for p in path.parents if p.name == FOLDER), path.parent)
        raise ConfigError(
            f"the run folder {run} holds a checkpoint of another config ({shown}{more}); "
            f"run the same command to resume it, or pick a new hydra.run.dir"
        )


@dataclass
class Checkpoints:
    """The checkpoints of one run folder. Only the process with `write` set (rank 0) writes or deletes."""

    folder: Path
    every: int | None = None  # steps between periodic saves; None or 0: only on signals and at the end
    config: dict[str, Any] = field(default_factory=dict)  # the run's config, checked on resume
    write: bool = True
    keep: int = 2
    may_change: tuple[str, ...] = MAY_CHANGE  # config keys a resumption may change (TRANSFER_MAY_CHANGE)
    background: bool = True  # write in a background thread (training waits only for a host copy)
    writing: Writing | None = field(default=None, init=False, repr=False, compare=False)

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0  # type: ignore[operator]

    def existing(self) -> list[Path]:
        """Checkpoint files, newest (highest step) first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` as the checkpoint of its step (in the background: `wait` for it to be on disk)."""
        path = self.folder / checkpoint_name(state["step"])
        if self.write:
            self.wait()  # one write at a time, and the previous one's error raised before the next
            full = {**state, "format": FORMAT, "config": self.config}
            if self.background:
                self.writing = Writing(self.write_and_prune, path, host_copy(full))
            else:
                self.write_and_prune(path, full)
        return path

    def write_and_prune(self, path: Path, state: dict[str, Any]) -> None:
        write_atomically(path, state)
        self.prune(self.keep)

    def wait(self) -> None:
        """Until the checkpoint being written (if any) is on disk; raises what writing it raised."""
        if self.writing is not None:
            writing, self.writing = self.writing, None
            writing.join()

    def prune(self, keep: int) -> None:
        if not self.write:
            return
        for old in self.existing()[keep:]:
            old.unlink(missing_ok=True)
        for tmp in self.folder.glob(".step_*.tmp"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest usable checkpoint; unusable newer ones are warned about and skipped."""
        problems: list[str] = []
        for path in self.existing():
            try:
                state = read_checkpoint(path)
            except CheckpointError as e:
                problems.append(str(e))
                continue
            check_same_config(state.get("config", {}), self.config, path, self.may_change)
            if problems:
                warnings.warn(f"{'; '.join(problems)}; resuming from the older {path}", stacklevel=2)
            return path, state
        if problems:
            raise CheckpointError(
                f"{'; '.join(problems)}; no older usable checkpoint in {self.folder}: remove the file(s) "
                f"named to start this run over"
            )
        return None
