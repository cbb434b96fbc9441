"""Counting the FLOPs of one training step, by pass, with torch's dispatch-based FlopCounterMode.

Convention: a fused multiply-add counts 2 FLOPs. Counted are the ops torch has FLOP rules for
(matmuls, convolutions, attention); element-wise work (norms, activations, the optimizer update)
counts 0, as in the reproduced study and the usual 6ND accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from budgetssl.meter.attention import attention_rules

CONVENTION = "fma=2"
CONVENTION_DETAIL = (
    "one multiply-add = 2 FLOPs; matmuls, convolutions and attention counted by torch FlopCounterMode "
    "(attention at its unfused algorithmic cost on every device); element-wise ops count 0"
)


@dataclass
class PassCounter:
    """FLOPs of one step, split into passes (forward, backward, optimizer, ...)."""

    passes: dict[str, dict[str, int]] = field(default_factory=dict)

    @contextmanager
    def count(self, name: str, root: nn.Module | None = None) -> Iterator[None]:
        """Count what runs inside; with `root`, also split the pass by `root`'s direct children."""
        with FlopCounterMode(display=False, custom_mapping=attention_rules()) as fc:
            yield
        entry = {"total": int(fc.get_total_flops())}
        if root is not None:
            prefix = type(root).__name__ + "."
            for key, ops in fc.get_flop_counts().items():
                if key.startswith(prefix) and "." not in key[len(prefix) :]:
                    entry[key[len(prefix) :]] = int(sum(ops.values()))
        self.passes[name] = entry

    @property
    def total(self) -> int:
        return sum(p["total"] for p in self.passes.values())


def count_forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running `fn` once (no gradients)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=attention_rules()) as fc:
        fn()
    return int(fc.get_total_flops())
