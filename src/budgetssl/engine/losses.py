"""The loss on the device until the host needs it: no synchronisation inside the loop.

Reading a loss on the host (`float(loss)`) waits for the device to finish everything queued before it,
which on a GPU empties its queue once per step. The loop instead keeps each step's loss as a tensor and
reads the losses of every step since the last read in one transfer (one collective under torchrun) when
it must: on logged steps (the first, every `log_every`-th, the last), before a checkpoint, at the end,
and at least every `MAX_PENDING` steps. The first non-finite loss among them stops the run, reported with
the step it happened at; since every checkpoint is preceded by a read, and the read also checks the
weights, no checkpoint ever holds the weights a non-finite loss (or update) left behind.
"""

from __future__ import annotations

import math

import torch

from budgetssl.engine.distributed import World
from budgetssl.errors import BudgetSSLError

MAX_PENDING = 1000  # losses kept on the device at most (0-d tensors): a read at least this often


class NonFiniteLoss(BudgetSSLError):
    """A loss (or, found before a checkpoint, a weight) that is not finite; `step` counts the steps done
    before the one whose loss it was."""

    def __init__(self, step: int, loss: float, detail: str = "") -> None:
        what = detail or f"loss is {loss} at step {step}"
        super().__init__(f"{what}; lower the learning rate or check the data")
        self.step = step


class LossReader:
    """Each step's loss kept on the device; read on the host only when asked."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.pending: list[torch.Tensor] = []  # the losses of steps first_pending, first_pending + 1, ...
        self.first_pending = 1
        self.reads = 0  # host reads so far (each one transfer)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """The loss of step `step` (1-based), kept without reading it."""
        if not self.pending:
            self.first_pending = step
        self.pending.append(loss.detach().reshape(()))

    @property
    def full(self) -> bool:
        return len(self.pending) >= MAX_PENDING

    def read(self, done: int, params: list[torch.Tensor] | None = None) -> list[tuple[int, float]]:
        """The pending losses as (step, value) pairs, averaged over ranks (what one process on the global
        batch would see), in one transfer; raises NonFiniteLoss at the first that is not finite. `done`:
        the steps done so far. With `params` (before a checkpoint), the same transfer says whether they
        are all finite too. A collective under torchrun: every rank reads at the same steps."""
        if not self.pending and params is None:
            return []
        device = self.pending[0].device if self.pending else params[0].device  # type: ignore[index]
        parts = [torch.stack(self.pending).double()] if self.pending else []
        if params:
            finite = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()
            parts.append(finite.reshape(1).to(device, torch.float64))
        row = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
        values = self.world.gather_tensor(row).cpu()  # the one host read (and collective)
        self.reads += 1
        n, first = len(self.pending), self.first_pending
        self.pending = []
        losses = (values[:, :n].sum(dim=0) / self.world.size).tolist()
        read = list(zip(range(first, first + n), losses, strict=True))
        for step, value in read:
            if not math.isfinite(value):
                raise NonFiniteLoss(step - 1, value)
        if params and not bool((values[:, n] > 0).all()):
            raise NonFiniteLoss(
                done,
                math.nan,
                f"the weights are not finite after step {done}, whose loss was finite (found before a "
                f"checkpoint, which was not saved)",
            )
        return read
