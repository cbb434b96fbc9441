"""Random numbers: one seed for Python, NumPy and torch, each rank's own stream, and the states saved as
tensors and plain lists, so a checkpoint loads with weights_only=True.

A run is reproducible from its config, and a resumed run draws the same numbers as an uninterrupted one
(MAE's masks, dropout, anything a method draws on the device), which is what makes its final loss equal
on CPU.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch, so a run is reproducible from its config."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (once CUDA is in use) this device's CUDA generator states."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), cached],
        "torch": torch.get_rng_state(),
        # This process's own GPU only: touching the others would open a context on each of them.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
    }


def restore(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rank_seed(seed: int, rank: int) -> None:
    """Give ranks other than 0 their own stream for what the model draws (MAE masks, dropout), after the
    model was built from the shared seed; rank 0 keeps the single-process stream."""
    if rank:
        torch.manual_seed(hash((seed, rank)) & 0xFFFF_FFFF_FFFF)
