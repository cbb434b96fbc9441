"""The order of an indexed dataset, per epoch and per rank, as a pure function of (seed, epoch).

Each epoch is a seeded permutation cut into global batches; rank r of W takes the r-th slice of every
global batch, so the union of the ranks' batches at a step is the batch one process would draw. Every
sample's augmentation is seeded by (seed, epoch, position in the epoch), so what a step sees does not
depend on the number of ranks or data-loader workers, and a resumed run can start in the middle of an
epoch by skipping indices (no image is loaded to skip it) and see exactly what an uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset, Sampler

MASK64 = (1 << 64) - 1
T = TypeVar("T")


def mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): independent seeds from (seed, epoch, position)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 29
    return h


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, augmentation seed) for this rank's share of one epoch's full global batches."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size  # per rank
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.start = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next pass yields epoch `epoch` from its `start_batch`-th batch on."""
        self.epoch = epoch
        self.start = start_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start) * self.batch_size

    def batches(self) -> Iterator[list[tuple[int, int]]]:
        """This rank's batches of the epoch from `start` on, each a list of (index, seed) keys."""
        generator = torch.Generator().manual_seed(mix(self.seed, self.epoch) & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(self.size, generator=generator).tolist()
        for batch in range(self.start, self.batches_per_epoch):
            first = batch * self.global_batch + self.rank * self.batch_size
            positions = range(first, first + self.batch_size)
            yield [(order[position], mix(self.seed, self.epoch, position)) for position in positions]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for batch in self.batches():
            yield from batch


class EpochBatchSampler(EpochSampler):
    """EpochSampler's order a batch at a time: one list of (index, seed) keys per batch, for a DataLoader
    with `batch_size=None` whose dataset fetches a whole batch in one call (data/loader.py BatchFetch);
    its workers, if any, then prefetch whole batches."""

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # type: ignore[override]
        return self.batches()


def seeded(seed: int, make: Callable[[], T]) -> T:
    """`make()` with torch's CPU generator seeded by `seed`; the caller's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also queue a (lazy) reseed of every
        # accelerator's generator per sample, which fork_rng(devices=[]) does not undo, at a cost above
        # a small sample's own (benchmarks/README.md).
        torch.default_generator.manual_seed(seed)
        return make()


class Seeded(Dataset):
    """`dataset[index]` (views made there) with its randomness seeded per sample by the sampler's key
    (index, seed); the caller's global RNG is left as it was. `reseed=False` for a dataset whose samples
    draw nothing (views made later, on the batch): the key's seed is dropped, and with it the reseed,
    whose cost is much of a small sample's own."""

    def __init__(self, dataset: Dataset, reseed: bool = True) -> None:
        self.dataset = dataset
        self.reseed = reseed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if not self.reseed:
            return self.dataset[index]
        return seeded(seed, lambda: self.dataset[index])
