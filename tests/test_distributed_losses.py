"""Contrastive losses across ranks (gloo, 2 processes on CPU): the same loss and gradients as one
process holding the whole batch, so negatives really come from every rank."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from budgetssl.methods.zoo.barlowtwins import barlow_twins_loss
from budgetssl.methods.zoo.clip import clip_loss
from budgetssl.methods.zoo.dinov2 import sinkhorn_knopp
from budgetssl.methods.zoo.mocov3 import contrastive_loss
from budgetssl.methods.zoo.siglip import siglip_loss
from budgetssl.methods.zoo.simclr import nt_xent
from budgetssl.methods.zoo.vicreg import vicreg_loss

WORLD, PER_RANK, DIM = 2, 3, 8


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * PER_RANK, DIM, generator=g), torch.randn(WORLD * PER_RANK, DIM, generator=g)


# Each loss that reads the global batch, on two (N, d) inputs (two views' embeddings, or images' and
# captions'). A method whose loss needs statistics across ranks adds its entry here.
LOSSES = {
    "nt_xent": lambda a, b: nt_xent(a, b, 0.2),
    "clip": lambda a, b: clip_loss(a, b, torch.tensor(math.log(1 / 0.07))),
    # variance and covariance of the global batch (sum_over_ranks), the invariance of each rank's pairs
    "vicreg": lambda a, b: vicreg_loss(a, b, 25.0, 25.0, 1.0),
    # DINOv2's Sinkhorn-Knopp targets normalise over the global batch (its sums over every rank), each
    # view the other's student (two crops), so both inputs get gradients
    "dinov2_sinkhorn": lambda a, b: (sinkhorn_ce(a, b) + sinkhorn_ce(b, a)) / 2,
    "mocov3": lambda q, k: contrastive_loss(q, k, 0.2),  # this rank's queries against every rank's keys
    "barlowtwins": lambda a, b: barlow_twins_loss(a, b, 0.0051),
    # images, texts; t' = log 10, b = -10 (the paper's start): each rank's images against all texts
    "siglip": lambda a, b: siglip_loss(a, b, torch.tensor(math.log(10)), torch.tensor(-10.0)),
}
# Losses of statistics summed over ranks (a cross-correlation): every rank computes the global batch's loss.
GLOBAL = {"barlowtwins"}


def sinkhorn_ce(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    targets = sinkhorn_knopp(teacher, 0.1, 3)
    return -(targets * torch.log_softmax(student / 0.1, dim=-1)).sum(dim=-1).mean()


def worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        a, b = (x[rank * PER_RANK : (rank + 1) * PER_RANK] for x in inputs())
        out = {}
        for name, loss_of in LOSSES.items():
            la, lb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
            loss = loss_of(la, lb)
            loss.backward()
            out[name] = (loss.detach(), la.grad, lb.grad)
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_across_ranks_equals_the_single_process_loss_and_gradients(ranks, name):
    a, b = (x.clone().requires_grad_(True) for x in inputs())
    whole = LOSSES[name](a, b)
    whole.backward()
    # DDP averages gradients over ranks: the mean of the ranks' losses and gradients is what counts.
    assert float(sum(r[name][0] for r in ranks) / WORLD) == pytest.approx(float(whole.detach()), rel=1e-5)
    grad_a = torch.cat([r[name][1] for r in ranks]) / WORLD
    grad_b = torch.cat([r[name][2] for r in ranks]) / WORLD
    assert torch.allclose(grad_a, a.grad, atol=1e-6) and torch.allclose(grad_b, b.grad, atol=1e-6)
    if name in GLOBAL:  # each rank holds the whole batch's loss, not its half's
        assert all(float(r[name][0]) == pytest.approx(float(whole.detach()), rel=1e-5) for r in ranks)
        alone = LOSSES[name](*(x[:PER_RANK] for x in inputs()))
        assert not math.isclose(float(alone), float(whole.detach()), rel_tol=1e-4)
    else:  # each rank's own loss differs from the whole: its anchors differ, its negatives are global
        assert not math.isclose(float(ranks[0][name][0]), float(ranks[1][name][0]), rel_tol=1e-4)
