"""Statistics of the global batch summed across ranks with gradients (methods/distributed.sum_over_ranks),
under torchrun (2 processes, gloo on CPU) against one process holding the whole batch: Barlow Twins'
cross-correlation and VICReg's covariance, standardised or centred by the global batch's statistics.

The two-process run starts this file under torchrun; each rank computes the losses on its half of the
batch and saves them with its gradients, and the test compares them with this process's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from budgetssl.methods.distributed import mean_over_ranks, rank_and_size, sum_over_ranks

TORCHRUN = Path(sys.executable).parent / "torchrun"
WORLD, PER_RANK, DIM = 2, 4, 6
N = WORLD * PER_RANK

Reduce = Callable[[torch.Tensor], torch.Tensor]


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, DIM, generator=g), torch.randn(N, DIM, generator=g) + 0.5


def standardised(z: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """Batch norm without affine parameters over the global batch (Barlow Twins' self.bn, made a
    SyncBatchNorm under DDP)."""
    mean = reduce(z.sum(0)) / N
    var = reduce(((z - mean) ** 2).sum(0)) / N
    return (z - mean) / torch.sqrt(var + 1e-5)


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    return c - torch.diag(torch.diagonal(c))


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    c = reduce(standardised(z1, reduce).T @ standardised(z2, reduce)) / N  # the (DIM, DIM) cross-correlation
    return (torch.diagonal(c) - 1).pow(2).sum() + 0.005 * off_diagonal(c).pow(2).sum()


def vicreg_covariance(z1: torch.Tensor, z2: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    loss = z1.new_zeros(())
    for z in (z1, z2):
        centred = z - reduce(z.sum(0)) / N
        cov = reduce(centred.T @ centred) / (N - 1)
        loss = loss + off_diagonal(cov).pow(2).sum() / DIM
    return loss


def plain_sum(x: torch.Tensor) -> torch.Tensor:
    """A sum over ranks without gradients to the other ranks (Barlow Twins' own dist.all_reduce(c))."""
    return mean_over_ranks(x) * rank_and_size()[1]


LOSSES = {"barlow_twins": barlow_twins, "vicreg_covariance": vicreg_covariance}
REDUCES: dict[str, Reduce] = {"with_grad": sum_over_ranks, "plain": plain_sum}


def losses_and_gradients(z1: torch.Tensor, z2: torch.Tensor, reduce: Reduce) -> dict[str, tuple]:
    out = {}
    for name, loss_fn in LOSSES.items():
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        loss = loss_fn(a, b, reduce)
        loss.backward()
        out[name] = (loss.detach(), a.grad, b.grad)
    return out


def rank_main(folder: str) -> None:
    """One rank under torchrun: its half of the batch, every loss under both reductions."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        z1, z2 = (x[rank * PER_RANK : (rank + 1) * PER_RANK] for x in inputs())
        out = {reduce: losses_and_gradients(z1, z2, fn) for reduce, fn in REDUCES.items()}
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("reduce")
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", f"--nproc_per_node={WORLD}", __file__, str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_one_process_sums_nothing():
    x = torch.randn(3, 3, requires_grad=True)
    assert sum_over_ranks(x) is x


@pytest.mark.parametrize("name", LOSSES)
def test_a_statistic_summed_across_ranks_gives_the_single_process_loss_and_gradients(ranks, name):
    whole = losses_and_gradients(*inputs(), sum_over_ranks)[name]
    # Every rank computes the same loss, on the whole batch's statistic.
    for r in ranks:
        assert float(r["with_grad"][name][0]) == pytest.approx(float(whole[0]), rel=1e-5)
    # DDP averages gradients over ranks: the ranks' gradients of their own inputs, averaged, are the
    # one-process gradients of those rows.
    for i in (1, 2):
        averaged = torch.cat([r["with_grad"][name][i] for r in ranks]) / WORLD
        assert torch.allclose(averaged, whole[i], atol=1e-5), (name, i)
    # A sum that carries no gradient across ranks gives the same loss but not the same gradients.
    assert float(ranks[0]["plain"][name][0]) == pytest.approx(float(whole[0]), rel=1e-5)
    plain = torch.cat([r["plain"][name][1] for r in ranks]) / WORLD
    assert not torch.allclose(plain, whole[1], atol=1e-3)


if __name__ == "__main__":
    rank_main(sys.argv[1])
