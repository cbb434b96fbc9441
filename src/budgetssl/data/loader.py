"""Batches for the training loop: views made in workers, an endless reshuffled stream, seeded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from budgetssl.errors import ConfigError


class Viewed(Dataset):
    """`dataset` with a per-sample transform applied (in the worker, so decoding happens once)."""

    def __init__(self, dataset: Dataset, view: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.dataset = dataset
        self.view = view

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.view(self.dataset[index])


def endless_batches(
    dataset: Dataset,
    view: Callable[[dict[str, Any]], dict[str, Any]],
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[dict[str, Any]]:
    """Full batches forever, a fresh shuffle each epoch, all determined by `seed`."""
    size = len(dataset)  # type: ignore[arg-type]
    if size < batch_size:
        raise ConfigError(
            f"the dataset has {size} samples, fewer than one batch of {batch_size}; "
            f"lower the batch size or use more data"
        )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        Viewed(dataset, view),
        batch_size=batch_size,
        sampler=RandomSampler(dataset, generator=generator),  # type: ignore[arg-type]
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
    while True:
        yield from loader
