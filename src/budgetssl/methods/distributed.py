"""What contrastive losses need across ranks: all samples' embeddings, with gradients back to each rank.

Outside torch.distributed (one process) these are identities, so a loss reads the same either way.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed. Read from torch.distributed
    itself, not engine.distributed's World, so a loss works wherever a process group is up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, rank order; gradients flow back to each rank's part.

    torch.distributed.nn's all_gather is the public collective with a backward pass that works on gloo
    as well as NCCL (its deprecation points at a private replacement), so its FutureWarning is silenced.
    """
    _, size = rank_and_size()
    if size == 1:
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(x)
    return torch.cat(parts, dim=0)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average of `x` over ranks (no gradient): DINO's centre must be the same on every rank."""
    _, size = rank_and_size()
    if size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / size
