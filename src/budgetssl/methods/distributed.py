"""What losses need across ranks: all samples' embeddings (contrastive losses) or sums of per-rank
statistics (cross-correlations, covariances), with gradients back to each rank.

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


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks, with gradients: the backward pass sums every rank's gradient of the result
    and hands it to each rank's `x`, so under DDP's average over ranks a statistic of the global batch
    (Barlow Twins' cross-correlation, VICReg's covariance, their batch means and variances) trains as it
    would in one process on the whole batch (tests/test_distributed_reduce.py).

    The references reduce across ranks differently: Barlow Twins sums its cross-correlation with a
    plain `torch.distributed.all_reduce(c)` (facebookresearch/barlowtwins main.py, BarlowTwins.forward),
    which carries no gradient to the other ranks' inputs; VICReg gathers the embeddings first with its
    FullGatherLayer, an all_gather whose backward all-reduces (facebookresearch/vicreg main_vicreg.py,
    VICReg.forward), and computes the covariance on the whole batch on every rank. Summing the
    per-rank statistic moves a (d, d) matrix instead of the (N, d) embeddings. torch.distributed.nn's
    all_reduce is the collective with that backward (its FutureWarning silenced as in `gather`).
    """
    _, size = rank_and_size()
    if size == 1:
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dist_fn.all_reduce(x)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average of `x` over ranks (no gradient): DINO's centre must be the same on every rank."""
    _, size = rank_and_size()
    if size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / size
