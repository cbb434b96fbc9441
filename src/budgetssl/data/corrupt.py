"""What an unreadable file does: an error naming it, or, where the user chose to skip, the next readable
sample, with the number of skipped reads attached (`data_skipped`); the loader moves that number into a
counter in shared memory, so counts made in data-loader workers reach the run record."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import get_worker_info

from budgetssl.data.decode import UnreadableImage
from budgetssl.errors import DataError

SKIPPED = "data_skipped"
MAX_IN_A_ROW = 64  # more unreadable files than this in a row is a broken copy, not a few bad files


class SkipCounter:
    """Unreadable samples skipped so far, counted in shared memory: one slot for the main process and one
    per data-loader worker, each written by its own process only, read by the training loop."""

    def __init__(self, workers: int = 0) -> None:
        self.counts = torch.zeros(workers + 1, dtype=torch.int64).share_memory_()

    def add(self, n: int = 1) -> None:
        if n:
            info = get_worker_info()
            self.counts[0 if info is None else info.id + 1] += n

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def load_or_skip(
    load: Callable[[int], dict[str, Any]], index: int, size: int, skip: bool, option: str
) -> dict[str, Any]:
    """`load(index)`; if its file is unreadable, raise (skip=False) or try index+1, index+2, ... (skip=True).

    `option` is the config key that turns skipping on (e.g. "dataset.skip_corrupt"), for the message.
    """
    if not skip:
        try:
            return load(index)
        except UnreadableImage as e:
            raise UnreadableImage(
                f"{e}; fix or remove the file, or set {option}=true to skip such files"
            ) from None
    tries = min(size, MAX_IN_A_ROW)
    for attempt in range(tries):
        try:
            sample = load((index + attempt) % size)
        except UnreadableImage as e:
            warnings.warn(f"skipped: {e}", stacklevel=2)
            continue
        sample[SKIPPED] = attempt
        return sample
    raise DataError(
        f"{tries} unreadable files in a row from sample {index} on ({option}=true skips single files, "
        f"not a broken copy); check the dataset"
    )
