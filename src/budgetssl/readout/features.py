"""A frozen backbone's features, computed once: eval mode (no drop-path, batch-norm statistics left
alone), no gradients, in batches; the module's mode is restored afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from budgetssl.meter.counter import Counting


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """`module` in eval mode without gradients for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def compute_features(
    module: nn.Module,
    read: Callable[[torch.Tensor], torch.Tensor],
    images: Iterable[torch.Tensor],
    device: torch.device,
    count: bool = False,
) -> tuple[torch.Tensor, int | None]:
    """`read(batch)` for every batch of `images` (moved to `device`), concatenated, in fp32 on `device`;
    and with `count` the FLOPs of the pass (the project's counter, fma=2), else None."""
    counting = Counting() if count else None
    parts = []
    with frozen(module):
        for batch in images:
            x = batch.to(device)
            if counting is not None:
                with counting:
                    out = read(x)
            else:
                out = read(x)
            parts.append(out.float())
    if not parts:
        raise ValueError("no images to compute features of")
    return torch.cat(parts), (int(counting.total) if counting is not None else None)
