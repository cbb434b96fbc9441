"""Projection and prediction heads shared by the joint-embedding methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, norm: bool = True, act=nn.ReLU) -> nn.Sequential:
    """Linear-(BN)-activation blocks then a final linear: SimCLR's and BYOL's projector/predictor."""
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(dim, hidden), *([nn.BatchNorm1d(hidden)] if norm else []), act()]
        dim = hidden
    modules.append(nn.Linear(dim, out))
    return nn.Sequential(*modules)


class DINOHead(nn.Module):
    """DINO's head: an MLP to a bottleneck, L2-normalised, then a weight-normalised linear layer.

    `norm_last_layer` fixes the weight norm's gain to 1 (the reference's default), written as a
    linear layer on row-normalised weights.
    """

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
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        self.norm_last_layer = norm_last_layer
        nn.init.trunc_normal_(self.last.weight, std=0.02)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        weight = F.normalize(self.last.weight, dim=1) if self.norm_last_layer else self.last.weight
        return F.linear(x, weight)
