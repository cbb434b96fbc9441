"""FLOP rules for fused attention kernels, so attention is counted on every device, the same way.

torch's FlopCounterMode gives the CPU flash kernel (and its backward) no rule, so it counts 0; and its
rule for the CUDA kernels' backward includes the recomputation of the score matrix. Budgets must not
depend on the kernel that happened to run, so every kernel gets the algorithmic count of the unfused
path: forward QK^T and AV; backward the four matmuls of their gradients (2x forward).

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
from torch.utils.flop_counter import bmm_flop, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def attention_forward_flops(query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def attention_backward_flops(grad_out, query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    b, h, s_q, d_q = query
    s_k = key[-2]
    recompute_scores = bmm_flop((b * h, s_q, d_q), (b * h, d_q, s_k))
    return sdpa_backward_flop_count(grad_out, query, key, value) - recompute_scores


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
