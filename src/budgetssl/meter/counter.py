"""Counting the FLOPs of one training step, by pass, by the rules of torch's FlopCounterMode.

Convention: a fused multiply-add counts 2 FLOPs. Counted are the ops torch has FLOP rules for
(matmuls, convolutions, attention); element-wise work (norms, activations, the optimizer update)
counts 0, as in the reproduced study and the usual 6ND accounting.

A step's passes are counted by `Counting`, a dispatch mode that applies torch's FlopCounterMode rules
(its registry, our attention rules, the same decompositions) op by op, and splits the forward by the
root's direct children with forward hooks on those children alone. It counts exactly what FlopCounterMode
counts (tests/test_utilisation.py compares them on real steps), at under half its cost: FlopCounterMode
also tracks every module of the model, forward and backward, for a breakdown the meter does not use, and
the metered step was the harness's largest cost on CPU (benchmarks/overhead.py). What the mode costs is
paid on every op, so its Python per op is kept short: what to do with an op is asked once per op
(`PLANS`), a rule's count once per op and shapes (`COUNTS`, `count`), and torch's wrapper that keeps
torch.compile out of a mode's dispatch is left off (`Counting._should_skip_dynamo`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

from budgetssl.meter.attention import attention_rules
from budgetssl.meter.convolution import convolution_rules

aten = torch.ops.aten
# Queries FlopCounterMode leaves to the tensor (NotImplemented): sizes and strides, never counted.
QUERIES = {
    aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default, aten.size.default,
    aten.sym_size.default, aten.stride.default, aten.sym_stride.default, aten.storage_offset.default,
    aten.sym_storage_offset.default, aten.numel.default, aten.sym_numel.default, aten.dim.default,
    torch.ops.prim.layout.default,
}  # fmt: skip


COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
PLANS: dict[Any, tuple[bool, bool, Callable[..., int] | None]] = {}  # by op, filled as ops are first seen
SHAPE_RULE = shape_wrapper(int).__code__  # the code of every rule torch's shape_wrapper wraps
COUNTS: dict[Any, int] = {}  # a shape rule's count by op and what it sees, filled as they are first seen


def custom_rules() -> dict[Any, Callable[..., int]]:
    """Our rules over torch's (FlopCounterMode's `custom_mapping`): attention at its algorithmic cost on
    every kernel (meter/attention.py), a grouped convolution's backward per group (meter/convolution.py)."""
    return {**attention_rules(), **convolution_rules()}


@functools.cache
def rules() -> dict[Any, Callable[..., int]]:
    """FlopCounterMode's registry with our rules, wrapped the way FlopCounterMode wraps them."""
    custom = {k: v if getattr(v, "_get_raw", False) else shape_wrapper(v) for k, v in custom_rules().items()}
    return {**flop_registry, **custom}


class Counting(TorchDispatchMode):
    """FLOPs of the ops run inside, by FlopCounterMode's rules; `by_child`: the FLOPs run while each
    module `watch`ed (a root's direct child, by name) was in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.rules = rules()
        self.total = 0
        self.active: list[str] = []  # the watched modules in their forward now, outermost first
        self.by_child: dict[str, int] = {}  # those inside which a counted op ran, and its FLOPs
        self.plans = PLANS

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Whether torch wraps `__torch_dispatch__` so that torch.compile never traces it: not here. The
        wrapper is a call on every op, and the meter never compiles under its counter: the metered step
        and the probes run the task itself, eagerly (engine/trainer.py), and the other counts compile
        nothing. A model compiled before it is counted still counts the same (tests/test_gpu_path.py)."""
        return False

    @contextmanager
    def watch(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Attribute what runs in each module's forward to its name, while the block runs."""
        hooks = []
        for name, module in modules.items():
            hooks.append(module.register_forward_pre_hook(lambda *_, n=name: self.active.append(n)))
            hooks.append(module.register_forward_hook(lambda *_, n=name: self.leave(n)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def leave(self, name: str) -> None:
        for i in range(len(self.active) - 1, -1, -1):  # the innermost call of `name`
            if self.active[i] == name:
                del self.active[i]
                return

    def plan(self, func: Any) -> tuple[bool, bool, Callable[..., int] | None]:
        """What FlopCounterMode does with `func` (asked once per op): leave it to the tensor (a query),
        try its decomposition first (only where it has one: the attempt re-enters the mode), count it."""
        decomposes = (
            func not in self.rules
            and func is not torch.ops.prim.device.default
            and (
                COMPOSITE in func.py_kernels
                or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), COMPOSITE)
            )
        )
        found = self.plans[func] = (func in QUERIES, decomposes, self.rules.get(func._overloadpacket))
        return found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        query, decomposes, rule = self.plans.get(func) or self.plan(func)
        kwargs = kwargs if kwargs else {}
        if query:
            return NotImplemented
        if decomposes:
            with self:  # as FlopCounterMode: a composite op counted through what it decomposes into
                out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        out = func(*args, **kwargs)
        if rule is not None:
            flops = count(func, rule, args, kwargs, out)
            self.total += flops
            for name in set(self.active):
                self.by_child[name] = self.by_child.get(name, 0) + flops
        return out


def count(func: Any, rule: Callable[..., int], args: Any, kwargs: Any, out: Any) -> int:
    """`rule`'s count of `func` run on `args` and `kwargs` into `out`: what FlopCounterMode's call gives.

    A rule torch's shape_wrapper wraps sees only the tensors' shapes and the other arguments, so its
    count is remembered by what it sees (`seen`): a step repeats a few shapes, one per kind of layer, and
    the wrapper maps the arguments through torch's pytree at many times the cost of the rule's own
    arithmetic. A new one is counted by the rule itself, on the shapes the wrapper would give it."""
    if getattr(rule, "__code__", None) is not SHAPE_RULE:  # a raw rule (torch's `get_raw`) sees tensors
        return rule(*args, **kwargs, out_val=out)
    key = (func, seen(args), seen(kwargs), seen(out))
    try:
        flops = COUNTS.get(key)
    except TypeError:  # something unhashable (a symbolic size): counted, not remembered
        return rule(*args, **kwargs, out_val=out)
    if flops is None:
        flops = COUNTS[key] = rule.__wrapped__(*shapes(args), out_shape=shapes(out), **shapes(kwargs))
    return flops


def shapes(x: Any) -> Any:
    """`x` as torch's shape_wrapper gives it to a rule: every tensor replaced by its shape. What the
    dispatcher passes an op holds tensors directly, in lists and in tuples (and kwargs is a dict)."""
    if isinstance(x, torch.Tensor):
        return x.shape
    if type(x) in (list, tuple):
        return type(x)(map(shapes, x))
    if type(x) is dict:
        return {k: shapes(v) for k, v in x.items()}
    return x


def seen(x: Any) -> Any:
    """What a shape rule sees of `x`, as a key: a tensor's shape; a container's entries (and its type);
    any other value with its type (1, 1.0 and True are equal keys otherwise)."""
    if isinstance(x, torch.Tensor):
        return x.shape
    if isinstance(x, (list, tuple)):
        return type(x), *map(seen, x)
    if isinstance(x, dict):
        return dict, *((k, seen(v)) for k, v in x.items())
    return type(x), x


CONVENTION = "fma=2"
CONVENTION_DETAIL = (
    "one multiply-add = 2 FLOPs; matmuls, convolutions and attention counted by the rules of torch's "
    "FlopCounterMode (attention at its unfused algorithmic cost on every device; a grouped convolution's "
    "weight gradient once per group); element-wise ops count 0"
)


@dataclass
class PassCounter:
    """FLOPs of one step, split into passes (forward, backward, optimizer, ...)."""

    passes: dict[str, dict[str, int]] = field(default_factory=dict)

    @contextmanager
    def count(self, name: str, root: nn.Module | None = None) -> Iterator[None]:
        """Count what runs inside; with `root`, also split the pass by `root`'s direct children (those
        that ran: a child that ran no op is left out, as FlopCounterMode leaves it)."""
        counting = Counting()
        with counting.watch(dict(root.named_children()) if root is not None else {}), counting:
            yield
        self.passes[name] = {"total": int(counting.total), **counting.by_child}

    @property
    def total(self) -> int:
        return sum(p["total"] for p in self.passes.values())


def count_forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running `fn` once (no gradients)."""
    counting = Counting()
    with torch.no_grad(), counting:
        fn()
    return int(counting.total)


def flops_per_image(backbone: nn.Module, image_size: int) -> int:
    """The record's `flops_per_image`: one forward pass of the backbone on one image at the configured
    resolution, on the backbone's device (the meta device too), in eval mode (a single image must not
    touch batch-norm statistics; stochastic depth is off)."""
    device = next(backbone.parameters()).device
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    was_training = backbone.training
    backbone.eval()
    try:
        return count_forward_flops(lambda: backbone(image))
    finally:
        backbone.train(was_training)
