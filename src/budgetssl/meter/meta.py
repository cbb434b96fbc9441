"""Counting a step on torch's meta device: shapes without storage, so that a step of any size is priced
without the memory or the time of running it. FLOP rules read shapes only, so a count on meta tensors is
the real step's count, exactly (tests/test_verify.py compares them for every method).

A model is built with its parameters (and every buffer of more than one element) on meta (`build_on_meta`);
the batch is meta tensors of the shapes the model's own views make of a stand-in sample (`stand_in_batch`).
What runs the step on them (the engine's metered first step) and what builds the model (a method from a
run's config) are the caller's: this module knows shapes and devices only.

Scalar buffers (an EMA teacher's momentum, DINO's teacher temperature) stay real, on the CPU: methods read
them on the host (float(...)), and a 0-d CPU tensor mixes with tensors on any device. Moving the model to
the meta device (the Trainer does) takes them along; `OnMeta.put_back` returns them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from torch.utils.data import default_collate
from torchvision import tv_tensors

META = torch.device("meta")
STAND_IN = {
    "label": 0,
    "caption": "a photo of a circle and a square",
}  # the sample's fields besides its image

M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device as it is registered, so that a model's
    own initialisation (timm's trunc_normal_ and the like) runs on shapes only. Buffers stay where they
    are made (`build_on_meta` moves them after). The idea of accelerate's
    init_empty_weights(include_buffers=False); it patches nn.Module for the whole process while it lasts,
    so nothing else may build modules meanwhile."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        made = module._parameters.get(name)
        if made is not None and made.device != META:
            module._parameters[name] = nn.Parameter(made.to(META), requires_grad=made.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


@dataclass
class OnMeta(Generic[M]):
    """A model built on meta, and the scalar buffers it keeps real (module docstring)."""

    module: M
    scalars: list[tuple[nn.Module, str, torch.Tensor]] = field(default_factory=list)

    def put_back(self) -> M:
        """The scalar buffers back in their owners, real, after the model was moved to meta."""
        for owner, name, buffer in self.scalars:
            owner._buffers[name] = buffer
        return self.module


def build_on_meta(build: Callable[[], M]) -> OnMeta[M]:
    """`build()` with its parameters on meta as they are registered, then whatever is left moved there:
    parameters made outside register_parameter, buffers of more than one element. Scalar buffers stay
    real and are remembered, to put back after the model is moved to the meta device."""
    with parameters_on_meta():
        module = build()
    scalars = []
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None and param.device != META:
                owner._parameters[name] = nn.Parameter(param.to(META), requires_grad=param.requires_grad)
        for name, buffer in owner._buffers.items():
            if buffer is None:
                continue
            if buffer.dim() == 0 and buffer.device != META:
                scalars.append((owner, name, buffer))
            elif buffer.device != META:
                owner._buffers[name] = buffer.to(META)
    return OnMeta(module, scalars)


def stand_in_batch(views: Any, image_size: int, batch_size: int) -> dict[str, Any]:
    """The batch the views make, as meta tensors: one stand-in sample (a blank image at the configured
    size, a label, a caption) through the views, collated, its batch dimension widened."""
    sample = {
        "image": tv_tensors.Image(torch.zeros(3, image_size, image_size, dtype=torch.uint8)),
        **STAND_IN,
    }
    one = default_collate([views(dict(sample))])
    return {
        k: torch.empty((batch_size, *v.shape[1:]), dtype=v.dtype, device=META)
        if isinstance(v, torch.Tensor)
        else v * batch_size
        if isinstance(v, list)
        else v
        for k, v in one.items()
    }
