"""Batches for the training loop: views made in workers, an endless reshuffled stream, seeded.

Indexed datasets are reshuffled each epoch by a seeded sampler; streaming datasets (tar shards) reshuffle
their shard order by (seed, epoch) and mix samples in a buffer, each rank and worker reading its own
shards. Samples are decoded and viewed once, in the worker; unreadable files skipped on the way are
counted in shared memory (SkipCounter), so the count made in worker processes reaches the run record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from budgetssl.data.base import StreamingDataset
from budgetssl.data.corrupt import SKIPPED, SkipCounter
from budgetssl.data.sampler import EpochSampler, Seeded
from budgetssl.errors import ConfigError, DataError

View = Callable[[dict[str, Any]], dict[str, Any]]


def viewed(sample: dict[str, Any], view: View, counter: SkipCounter | None) -> dict[str, Any]:
    """The view of `sample`; the files skipped to reach it (if any) go to `counter`."""
    skipped = sample.pop(SKIPPED, 0)
    if counter is not None:
        counter.add(skipped)
    return view(sample)


class Viewed(Dataset):
    """`dataset` with a per-sample transform applied (in the worker, so decoding happens once)."""

    def __init__(self, dataset: Dataset, view: View, counter: SkipCounter | None = None) -> None:
        self.dataset = dataset
        self.view = view
        self.counter = counter

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return viewed(self.dataset[index], self.view, self.counter)


class ViewedStream(IterableDataset):
    """A streaming dataset with a per-sample transform; each pass (each `iter`) is a new epoch.

    With persistent workers every worker keeps its copy and counts epochs in step with the others, so
    all of them agree on the epoch's shard order and read disjoint shares of it.
    """

    def __init__(self, dataset: StreamingDataset, view: View, seed: int, counter: SkipCounter) -> None:
        self.dataset = dataset
        self.view = view
        self.seed = seed
        self.counter = counter
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for sample in self.dataset.stream(self.seed, epoch, self.counter.add):
            yield viewed(sample, self.view, self.counter)


@dataclass
class Position:
    """Where a batch stream is: the epoch and the batches handed out in it."""

    epoch: int = 0
    in_epoch: int = 0


def endless(
    loader: DataLoader, position: Position, batch_size: int, counter: SkipCounter
) -> Iterator[dict[str, Any]]:
    """Full batches from `loader`, pass after pass, advancing `position`.

    A plain function, not a method: a generator that held its Batches would make a reference cycle, and
    a loader freed by the cycle collector instead of at once waits seconds for each of its workers.
    """
    while True:
        resumed = position.in_epoch > 0
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(position.epoch, position.in_epoch)
        empty = True
        for batch in loader:
            empty = False
            position.in_epoch += 1
            yield batch
        if empty and not resumed:
            raise DataError(
                f"a full pass over the data gave no full batch of {batch_size} samples "
                f"({counter.total} unreadable samples skipped so far); lower the batch size or check "
                f"the data"
            )
        position.epoch, position.in_epoch = position.epoch + 1, 0


class Batches(Iterator[dict[str, Any]]):
    """Full batches forever from `loader`; `skipped` is the number of unreadable samples skipped so far.

    The position (epoch, batches handed out in it) is what a checkpoint stores; `restore` puts a fresh
    stream there before its first batch. An indexed dataset's sampler seeks to it without loading a
    sample; a stream cannot seek, so a partly read pass resumes as the next pass (a new shard order).
    """

    def __init__(self, loader: DataLoader, batch_size: int, counter: SkipCounter) -> None:
        self.loader = loader
        self.batch_size = batch_size
        self.counter = counter
        self.position = Position()
        self._batches = self._forever()

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.position.epoch = value

    @property
    def in_epoch(self) -> int:
        return self.position.in_epoch

    @in_epoch.setter
    def in_epoch(self, value: int) -> None:
        self.position.in_epoch = value

    @property
    def skipped(self) -> int:
        return self.counter.total

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.in_epoch}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        stream = self.loader.dataset
        if isinstance(stream, ViewedStream):
            if self.in_epoch:
                self.epoch, self.in_epoch = self.epoch + 1, 0
            stream.epoch = self.epoch
        self._batches = self._forever()

    def _forever(self) -> Iterator[dict[str, Any]]:
        return endless(self.loader, self.position, self.batch_size, self.counter)

    def __next__(self) -> dict[str, Any]:
        return next(self._batches)


def endless_batches(
    dataset: Dataset,
    view: View,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> Batches:
    """Full batches forever, a fresh shuffle each epoch, all determined by `seed`.

    `batch_size` is this process's share; under data parallelism (`world` ranks) an indexed dataset is
    split by EpochSampler, and a stream splits its shards by rank itself.
    """
    generator = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
    counter = SkipCounter(num_workers)
    if isinstance(dataset, StreamingDataset):
        return Batches(DataLoader(ViewedStream(dataset, view, seed, counter), **common), batch_size, counter)
    size = len(dataset)  # type: ignore[arg-type]
    if size < batch_size * world:
        raise ConfigError(
            f"the dataset has {size} samples, fewer than one batch of {batch_size * world}; "
            f"lower the batch size or use more data"
        )
    sampler = EpochSampler(size, batch_size, seed, rank, world)
    viewed_set = Seeded(Viewed(dataset, view, counter))
    return Batches(DataLoader(viewed_set, sampler=sampler, **common), batch_size, counter)
