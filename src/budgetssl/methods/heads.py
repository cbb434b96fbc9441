"""Projection and prediction heads shared by the joint-embedding methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(
    in_dim: int,
    hidden: int,
    out: int,
    layers: int = 2,
    norm: bool = True,
    act: type[nn.Module] = nn.ReLU,
    last_bn: bool = False,
    last_bias: bool = True,
) -> nn.Sequential:
    """Linear-(BN)-activation blocks then a final linear: SimCLR's, BYOL's, MoCo v3's and DINO's heads.

    A linear layer followed by batch norm carries no bias (the norm's shift replaces it), as in MoCo v3's
    `_build_mlp` (moco/builder.py) and SimCLR's `LinearLayer` (tf2/model.py). `last_bn` ends the head
    with a batch norm without affine parameters, MoCo v3's simplification of SimCLR's output BN, which
    the MoCo v3 ViT study uses for its projectors (3 layers) and predictors (2 layers). `last_bias=False`
    drops the final layer's bias, as SimCLR's, BYOL's (byol/utils/networks.py MLP) and MoCo v3's heads do;
    DINO's MLP keeps it.
    """
    if layers < 1:
        raise ValueError(f"an MLP head needs at least one layer, got {layers}")
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(dim, hidden, bias=not norm), *([nn.BatchNorm1d(hidden)] if norm else []), act()]
        dim = hidden
    modules.append(nn.Linear(dim, out, bias=last_bias and not last_bn))
    if last_bn:
        modules.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*modules)


def before_last_norm(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The head's output before its final batch norm (`mlp(..., last_bn=True)`), or its output where it
    ends without one: what the monitors read, since a final batch norm standardises every dimension
    and hides a collapse of what feeds it (MoCo v3's projectors end in one)."""
    last = len(head) - 1 if isinstance(head[-1], nn.BatchNorm1d) else len(head)
    return head[:last](x)


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight w = g * v / ||v|| per output row (Salimans & Kingma 2016).

    DINO builds it with `nn.utils.weight_norm` and fills the gain g with 1; the gain is learnt unless
    `fixed_gain` (DINO's norm_last_layer=True), where it stays 1 and has no gradient. The gain has
    weight_norm's shape (out, 1), so DINO's grouping (utils.get_params_groups: only biases and 1-d
    parameters skip weight decay) decays it, as the reference does.
    """

    def __init__(self, in_dim: int, out_dim: int, fixed_gain: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.gain = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_gain)
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.gain * F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """DINO's head (vision_transformer.py DINOHead): an MLP to a bottleneck, L2-normalised, then a
    weight-normalised linear layer, whose gain is fixed at 1 with `norm_last_layer` and learnt without."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int,
        bottleneck: int,
        layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, layers=layers, norm=False, act=nn.GELU)
        self.last = WeightNormLinear(bottleneck, out_dim, fixed_gain=norm_last_layer)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))
