"""Tar shard lists: brace-expanded like LAION/DataComp/CC12M's `{00000..41407}.tar`, resolved against the
dataset root, put in a fresh order each epoch and dealt out to ranks and data-loader workers so that no
two of them read the same shard; plus the shuffle buffer that mixes samples within a worker."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch.distributed as dist
from braceexpand import braceexpand
from torch.utils.data import get_worker_info

from budgetssl.errors import ConfigError

T = TypeVar("T")
SEPARATOR = "::"  # several patterns in one string, as open_clip writes them


def is_url(name: str) -> bool:
    return "://" in name or name.startswith("pipe:")


def expand_shards(pattern: str, root: Path | None, option: str = "dataset.shards") -> list[str]:
    """Every shard named by `pattern` (brace ranges, `::`-separated patterns); local paths relative to
    `root` where it is set; local shards must exist. URLs and `pipe:` commands pass through as given."""
    shards: list[str] = []
    for part in (p.strip() for p in pattern.split(SEPARATOR)):
        for name in braceexpand(part) if part else ():
            if is_url(name) or root is None or Path(name).expanduser().is_absolute():
                shards.append(name if is_url(name) else str(Path(name).expanduser()))
            else:
                shards.append(str(root / name))
    if not shards:
        raise ConfigError(
            f"{option}='{pattern}' names no shards; e.g. {option}='train-{{000000..000099}}.tar'"
        )
    missing = [s for s in shards if not is_url(s) and not Path(s).is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} of the {len(shards)} shards named by {option}='{pattern}' do not exist, "
            f"e.g. {missing[0]}" + (" (relative names are read under dataset.root)" if root else "")
        )
    return shards


def epoch_order(shards: list[str], seed: int, epoch: int) -> list[str]:
    """The shards in the order of this epoch: the same on every rank and worker."""
    order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in order]


def share(shards: list[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """The shards one worker of one rank reads: every (rank, worker) pair a disjoint share."""
    return shards[rank::world][worker::workers]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under torch.distributed; (0, 1) outside it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def worker_and_count() -> tuple[int, int]:
    """This data-loader worker's id and the number of workers; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def buffer_shuffle(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Items in random order, holding at most `size` at a time (size <= 1: in order)."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]
