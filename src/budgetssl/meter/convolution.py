"""The backward pass of a grouped convolution, counted per group.

torch 2.14's rule for `convolution_backward` (torch/utils/flop_counter.py conv_backward_flop) counts the
weight gradient as a convolution of the transposed input with the transposed output gradient; the
transposed shapes lose the division by `groups`, so a grouped convolution's weight gradient is booked
`groups` times over (a depthwise one by its channel count). The forward and the input gradient are right:
the weight's shape (C_out, C_in / groups, k...) carries the division. pytorch/pytorch#183405 fixes it
upstream by dividing the weight-gradient term by groups; this is that rule, for the torch pinned here.
With groups = 1 it is torch's count exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import conv_flop_count, get_shape

aten = torch.ops.aten


def _swap(shape: Any) -> list[int]:
    return [shape[1], shape[0], *shape[2:]]


def convolution_backward_flops(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    groups: int,
    output_mask: Any,
    out_shape: Any,
    **kwargs: Any,
) -> int:
    """torch's conv_backward_flop with the weight gradient counted per group."""
    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight: input (or grad_out) against grad_out (or input), per group
        grad_w = _swap(get_shape(out_shape[1]))
        a, b = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(_swap(a), _swap(b), grad_w, transposed=False) // groups
    return flops


def convolution_rules() -> dict[Any, Callable[..., int]]:
    """`custom_mapping` for FlopCounterMode (shapes in, as torch's own rules)."""
    return {aten.convolution_backward: convolution_backward_flops}
