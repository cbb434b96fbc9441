"""FLOP rules for fused attention kernels, so attention is counted on every device, the same way.

torch's FlopCounterMode gives the CPU flash kernel (and its backward) no rule, so it counts 0; and its
rule for the CUDA kernels' backward includes the recomputation of the score matrix. Budgets must not
depend on the kernel that happened to run, so every kernel gets the algorithmic count of the unfused
path: forward QK^T and AV; backward the four matmuls of their gradients (2x forward). The matmuls are
written out, each by torch's bmm rule (the counts of torch's sdpa_flop_count, and of its backward less the
recomputation), not through those helpers: they call the bmm rule through its shape wrapper, whose pytree
mapping costs many times the arithmetic on each new shape the meter counts (meter/counter.py).

The kernels, by the SDPA op autograd records: CPU `_scaled_dot_product_flash_attention_for_cpu`; CUDA
`_scaled_dot_product_flash_attention` (fp16/bf16), `_scaled_dot_product_efficient_attention` (any float
dtype), `_scaled_dot_product_cudnn_attention`, and `_scaled_dot_product_fused_attention_overrideable`
(other accelerators); each with its `_backward`. The math fallback runs plain matmuls (counted by torch).
tests/test_gpu_path.py checks the CUDA rules on meta tensors (no GPU needed) and, where CUDA is present,
ViT-B/16 under each kernel against the reference counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten


def matmuls(batch: int, m: int, k: int, n: int) -> int:
    """`batch` products of an (m x k) by a (k x n) matrix: a multiply-add is 2 FLOPs (torch's bmm rule)."""
    return 2 * batch * m * k * n


def attention_forward_flops(query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """QK^T and AV, for every query head (grouped-query attention: a key/value head serves several)."""
    b, h, s_q, d_q = query
    s_k, d_v = key[-2], value[-1]
    return matmuls(b * h, s_q, d_q, s_k) + matmuls(b * h, s_q, s_k, d_v)


def attention_backward_flops(grad_out, query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """The gradients of AV (dA = dO V^T, dV = A^T dO) and of QK^T (dQ = dS K, dK = dS^T Q); the score
    matrix the fused kernels recompute is not counted."""
    b, h, s_q, d_q = query
    s_k, d_v = key[-2], value[-1]
    bh = b * h
    return (
        matmuls(bh, s_q, d_v, s_k)
        + matmuls(bh, s_k, s_q, d_v)
        + matmuls(bh, s_q, s_k, d_q)
        + matmuls(bh, d_q, s_q, s_k)
    )


def _ops(*names: str) -> list:
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def attention_rules() -> dict[Any, Callable[..., int]]:
    """`custom_mapping` for FlopCounterMode (each rule receives shapes, as torch's own rules do)."""
    rules: dict[Any, Callable[..., int]] = {}
    for op in _ops(
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",  # the CUDA forwards torch counts alike; named here so that
        "_scaled_dot_product_efficient_attention",  # every kernel's count is this module's
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    ):
        rules[op] = attention_forward_flops
    for op in _ops(
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward",
    ):
        rules[op] = attention_backward_flops
    return rules
