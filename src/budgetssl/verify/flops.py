"""flops_per_step re-derived from the run folder's saved config, at full size, without paying for a step.

The method and its backbone are built with their parameters (and every buffer of more than one element)
on torch's meta device: shapes without storage. The batch is meta tensors of the shapes the method's own
views make of a stand-in sample, at the configured global batch. Then the engine's own metered first step
runs on them (engine/metering.py first_step: the Trainer's forward, backward, optimizer and after-step
passes under the meter's counting mode, with the attention rules of meter/attention.py). FLOP rules read
shapes only, so the count is the real step's, exactly, at any size: tests/test_verify.py compares it with
real steps of all six methods and with the published ViT-B/L counts at batch 4096, and a ViT-L/16 step at
224 px and batch 4096 counts in about 2 s on one CPU thread, after the imports.

Scalar buffers (an EMA teacher's momentum, DINO's teacher temperature) stay real, on the CPU: methods read
them on the host (float(...)), and a 0-d CPU tensor mixes with tensors on any device. The step is counted
in fp32 on one process at the global batch: the count reads shapes, not dtypes, and under torchrun the
ranks' shares sum to the global batch's (contrastive losses gather every rank's embeddings, so each rank's
logits are its rows of the global matrix).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate
from torchvision import tv_tensors

from budgetssl.config.check import RunConfig
from budgetssl.data.info import DataInfo
from budgetssl.errors import BudgetSSLError
from budgetssl.record.sections import Record
from budgetssl.verify.accounting import pretrained_here
from budgetssl.verify.folder import RunFolder
from budgetssl.verify.result import Check, fail, ok, skip

META = torch.device("meta")
STAND_IN = {
    "label": 0,
    "caption": "a photo of a circle and a square",
}  # the sample's fields besides its image


@dataclass(frozen=True)
class Derived:
    """The step's cost as the saved config gives it."""

    flops_per_step: int
    breakdown: dict[str, dict[str, int]]
    flops_per_image: int
    batch: dict[str, tuple[int, ...]]  # the stand-in batch's shapes
    seconds: float  # building the model and counting the step
    params: int = 0  # the backbone's parameters


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device as it is registered, so that a model's
    own initialisation (timm's trunc_normal_ and the like) runs on shapes only. Buffers stay where they
    are made (see `to_meta`). The idea of accelerate's init_empty_weights(include_buffers=False)."""
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


def to_meta(module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Move what is left of `module` to meta (parameters made outside register_parameter, buffers of
    more than one element); returns the scalar buffers kept real, to put back after `Trainer` moves the
    task to the meta device."""
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
    return scalars


def data_info(run: RunConfig, record: Record) -> DataInfo:
    """The facts about the data a method's modules depend on (a classifier's width): the record's
    data_classes, else (a record written before it) the dataset's own, where it can be read here."""
    classes = record.pretraining.data_classes if record.pretraining is not None else None
    if classes is None:
        from budgetssl.data.base import build_dataset

        try:
            return build_dataset(run.dataset, "train").info
        except (BudgetSSLError, OSError, ValueError) as e:
            raise BudgetSSLError(
                f"the record has no data_classes (written before budgetssl recorded it) and dataset "
                f"'{run.dataset.name}' cannot be read here to count its classes: {e}"
            ) from None
    return DataInfo(image_size=run.dataset.image_size, class_names=tuple(f"class{i}" for i in range(classes)))


def stand_in_batch(views: Any, image_size: int, batch_size: int) -> dict[str, Any]:
    """The batch the method's views make, as meta tensors: one stand-in sample (a blank image at the
    configured size, a label, a caption) through the views, collated, its batch dimension widened."""
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


def derive(run: RunConfig, record: Record, plan_budget: bool = True) -> Derived:
    """The pretraining step of `run` counted on meta tensors (module docstring); `plan_budget=False`
    prices the step without planning `budget.flops` (which may be smaller than one step)."""
    from budgetssl.backbones.backbone import build_backbone, without_drop_path
    from budgetssl.engine.metering import first_step
    from budgetssl.engine.trainer import Trainer
    from budgetssl.meter.budget import FlopBudget, StepBudget
    from budgetssl.meter.counter import count_forward_flops
    from budgetssl.meter.step_meter import StepMeter
    from budgetssl.methods.base import build_method
    from budgetssl.stages.pretrain import loop_settings

    start = time.perf_counter()
    size = run.dataset.image_size
    info = data_info(run, record)
    with parameters_on_meta():
        backbone = build_backbone(run.backbone, size, drop_path=run.train.drop_path)
        method = build_method(run.method, backbone, info)
    scalars = to_meta(method)
    batch = stand_in_batch(method.views(), size, run.train.batch_size)
    settings = replace(loop_settings(run), device="meta", precision="fp32", compile=False)
    trainer = Trainer(method, settings)  # moves the task to meta, scalars too: put them back
    for owner, name, buffer in scalars:
        owner._buffers[name] = buffer
    method.train()
    budget = FlopBudget(run.budget.flops) if run.budget.flops and plan_budget else StepBudget(1)
    first = first_step(trainer, StepMeter(), budget, batch, 0.0)
    image_backbone = without_drop_path(method.backbone).eval()
    image = torch.empty(1, 3, size, size, device=META)
    per_image = count_forward_flops(lambda: image_backbone(image))
    return Derived(
        flops_per_step=int(first.cost.total),
        breakdown=first.cost.breakdown,
        flops_per_image=per_image,
        batch={k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)},
        seconds=time.perf_counter() - start,
        params=sum(p.numel() for p in method.backbone.parameters()),
    )


def passes_differing(recorded: Any, derived: dict[str, dict[str, int]]) -> str:
    """Which passes of the breakdown differ (`forward 10 vs 12`), to say where a mismatch lies."""
    if not isinstance(recorded, dict):
        return ""
    diffs = [
        f"{name} {derived.get(name, {}).get('total')} vs {recorded.get(name, {}).get('total')}"
        for name in sorted(set(recorded) | set(derived))
        if (derived.get(name) or {}).get("total") != (recorded.get(name) or {}).get("total")
    ]
    return f" (by pass, derived vs recorded: {'; '.join(diffs)})" if diffs else ""


def check_flops(folder: RunFolder) -> list[Check]:
    """flops_per_step and flops_per_image of the record against the counts the saved config gives."""
    record = folder.record
    names = ("flops_per_step", "flops_per_image")
    if (why := pretrained_here(folder)) is not None:
        return [skip(n, why) for n in names]
    assert record.pretraining is not None
    recorded = record.pretraining.flops_per_step
    if recorded is None:
        return [fail(n, f"{n} in the record", "none") for n in names]
    try:
        run = folder.run_config()
        derived = derive(run, record)
    except BudgetSSLError as e:
        return [fail(n, "a step built from the saved config", f"none: {e}") for n in names]
    except (RuntimeError, NotImplementedError) as e:  # e.g. a plug-in that reads a tensor on the host
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [
            fail(n, "a step counted on meta tensors", f"none: {type(e).__name__}: {first}") for n in names
        ]
    shapes = ", ".join(f"{k} {list(v)}" for k, v in derived.batch.items())
    how = f"counted on meta tensors in {derived.seconds:.1f} s, batch {shapes}"
    if derived.flops_per_step == recorded:
        step = ok("flops_per_step", f"{recorded} = the saved config's step ({how})")
    else:
        where = passes_differing(record.pretraining.flops_breakdown, derived.breakdown)
        step = fail(
            "flops_per_step", f"{derived.flops_per_step} (the saved config's step)", f"{recorded}{where}"
        )
    per_image = record.pretraining.flops_per_image
    if per_image == derived.flops_per_image:
        image = ok("flops_per_image", f"{per_image} = one forward pass of the backbone on one image")
    else:
        image = fail(
            "flops_per_image", f"{derived.flops_per_image} (one forward pass, one image)", str(per_image)
        )
    return [step, image]
