"""Batch norm over the global batch on any device: what SyncBatchNorm does, where torch's needs a GPU.

torch's SyncBatchNorm runs on CUDA only; under gloo (data parallelism on CPU) each rank would normalise
over its own share of the batch, so N processes would not compute what one process computes on the
global batch (and the transfer's scores would depend on N). `GlobalBatchNorm` sums each channel's
count, sum and sum of squares over the ranks (one all-reduce per layer and step, whose backward sums the
statistics' gradients back to every rank), normalises with the global mean and variance, and updates
its running statistics from them as one process would. Outside training, or on one process, it is
torch's batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) whose gradient is the all-reduce of the gradients: each rank's loss depends on
    every rank's statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm(_BatchNorm):
    """Batch norm of any input of 2 or more dimensions (N, C, ...) with statistics over every rank."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions (N, C, ...), got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.double()  # sums of squares over a global batch, in double: no cancellation in E[x^2]-E[x]^2
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([input.numel() // channels])])
        total = _SumOverRanks.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp(min=0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                if self.momentum is None:  # a cumulative average, as torch's batch norm
                    factor = 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                else:
                    factor = self.momentum
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        out = (input - mean.to(input.dtype).view(shape)) * scale.to(input.dtype).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def global_batch_norm(module: nn.Module) -> nn.Module:
    """`module` with every batch norm (not already synchronised) replaced by a GlobalBatchNorm sharing
    its parameters and running statistics, as torch's SyncBatchNorm.convert_sync_batchnorm does."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, global_batch_norm(child))
    return out
