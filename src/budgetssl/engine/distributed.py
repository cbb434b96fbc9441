"""Data parallelism under torchrun: one process per device, NCCL on GPUs and gloo on CPU.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (under submitit they are derived from
SLURM's); without them (or with WORLD_SIZE=1) everything here is a no-op and the run is one process.
`train.batch_size` is the global batch: each rank takes batch_size / world_size of it, and the FLOPs of a
step are the sum of every rank's measured share, so a budget buys the same steps on 1 process or on 64.

Collectives of host values (flags, counts, Python objects) go over a CPU (gloo) group beside NCCL's, so
agreeing on a flag never waits for the GPU's queue to drain; only tensors the device made (losses,
gradients) travel over the device's group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from budgetssl.engine.sync_norm import global_batch_norm
from budgetssl.errors import BudgetSSLError, ConfigError


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the one process that writes records, metrics, weights, checkpoints.

    Read from the environment, so it is known before (and whether or not) the process group starts.
    """
    return env_int("RANK", 0) == 0


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")
    host_group: Any = None  # the CPU (gloo) group for host values; None: the default group (gloo on CPU)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    def local_batch(self, global_batch: int, option: str = "train.batch_size") -> int:
        """This rank's share of the global batch; a remainder would change the budget's meaning."""
        if global_batch % self.size:
            raise ConfigError(
                f"{option}={global_batch} is the global batch and must be divisible by the "
                f"{self.size} processes (world size); use a multiple of {self.size}"
            )
        return global_batch // self.size

    # Collectives: each is an identity on one process.

    def sum_ints(self, values: list[int]) -> list[int]:
        if not self.distributed or not values:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, group=self.host_group)
        return [int(v) for v in t.tolist()]

    def any(self, flag: bool) -> bool:
        return self.any_of(flag)[0]

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag, whether it is set on any rank: one host collective, however many flags."""
        if not self.distributed:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return tuple(bool(v) for v in t.tolist())

    def gather_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` (same shape on each, on this rank's device), stacked in rank order."""
        if not self.distributed:
            return t.unsqueeze(0)
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t.contiguous())
        return torch.stack(out)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.host_group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.host_group)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


_WORLD = World()


def current() -> World:
    """The world set up by `start` (a single process when nothing was started)."""
    return _WORLD


def adopt_submitit_environment() -> None:
    """submitit (Hydra's submitit launcher with tasks_per_node > 1) starts one task per GPU without
    torchrun's variables; derive RANK, WORLD_SIZE, LOCAL_RANK and the master address from SLURM's."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    try:
        # Deferred: submitit only matters inside a SLURM job; every other start skips its import.
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment()
    except Exception:  # not inside a submitit job after all
        return
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False)


def start(device: str = "auto", timeout_minutes: float = 30.0) -> World:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    global _WORLD
    size = env_int("WORLD_SIZE", 1)
    if size <= 1:
        _WORLD = World()
        return _WORLD
    rank, local_rank = env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if cuda:
        torch.cuda.set_device(local_rank)
    where = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            rank=rank,
            world_size=size,
            timeout=timedelta(minutes=timeout_minutes),
            **({"device_id": where} if cuda else {}),
        )
    host_group = dist.new_group(backend="gloo") if cuda else None  # every rank creates it, in order
    _WORLD = World(rank, size, local_rank, env_int("LOCAL_WORLD_SIZE", size), where, host_group)
    return _WORLD


def stop() -> None:
    """Leave the process group (after the last collective)."""
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def local_device(name: str) -> torch.device | None:
    """The device torchrun's LOCAL_RANK picks when running several processes with CUDA, else None."""
    if env_int("WORLD_SIZE", 1) > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", env_int("LOCAL_RANK", 0))
    return None


def all_reduce_gradients(params: list[nn.Parameter], world: World) -> None:
    """Average gradients over ranks by hand (the one step that runs outside DDP: the metered first)."""
    if not world.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def check_in_sync(module: nn.Module, world: World) -> None:
    """Every rank must end with the same parameters (students and EMA teachers alike); a method whose
    update differed by rank would otherwise leave rank 0's weights silently unlike the others'."""
    if not world.distributed:
        return
    digest = [float(p.detach().double().sum()) for p in module.parameters()]
    differing = [r for r, d in enumerate(world.gather(digest)) if d != digest]
    if differing:
        raise BudgetSSLError(f"parameters of rank {world.rank} differ from those of rank(s) {differing}")


def wrap(task: nn.Module, world: World, find_unused: bool) -> nn.Module:
    """`task` under DistributedDataParallel: gradients averaged over ranks, overlapped with backward.

    The whole task is wrapped (methods run several modules per step); forward-only teachers have no
    gradients and are ignored by DDP. `find_unused` is set when the measured first step left some
    trainable parameter without a gradient.
    """
    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(task, device_ids=ids, find_unused_parameters=find_unused)


def sync_batch_norm(module: nn.Module, world: World) -> nn.Module:
    """Batch statistics over the global batch, as on one process: torch's SyncBatchNorm on CUDA; on CPU
    (gloo), where torch's needs a GPU, engine/sync_norm.py's GlobalBatchNorm."""
    if not world.distributed:
        return module
    if world.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return global_batch_norm(module)
