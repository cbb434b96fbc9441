"""A training recipe made concrete: the lr after batch scaling, its schedules, the optimizer and its groups.

A method's recipe values live in the configs (configs/config.yaml, overridden by each method's `train:`
section, cited there); the transfer has its own, one for every backbone. This module turns either into a
`Recipe` the loop follows and says what it resolved to, so that the record states exactly what ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from budgetssl.config.recipe import optimizer_kwargs
from budgetssl.config.schema import LrScaling, TrainConfig
from budgetssl.engine.schedule import COSINE, Clock, cosine, warmup_cosine, warmup_wsd
from budgetssl.errors import ConfigError

NO_WEIGHT_DECAY = ("biases_norms", "tokens")


def scaled_lr(base_lr: float, rule: str, batch_size: int, reference_batch: int) -> float:
    """The peak lr for `batch_size`: `linear` (Goyal et al. 2017, "Accurate, Large Minibatch SGD"),
    `sqrt` (Krizhevsky 2014; SimCLR's LARS alternative, Chen et al. 2020 appendix B.1) or `none`."""
    ratio = batch_size / reference_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ConfigError(f"train.lr_scaling must be one of {', '.join(LrScaling)}, got '{rule}'")


def peak_lr(t: TrainConfig) -> float:
    """`train.lr` when set (it wins, unscaled), else `train.base_lr` scaled to the batch."""
    if t.lr is not None:
        return t.lr
    return scaled_lr(t.base_lr, t.lr_scaling, t.batch_size, t.lr_reference_batch)


@dataclass(frozen=True)
class Recipe:
    """What the optimizer does over the plan: peak lr with warm-up and cosine decay (or, under
    `schedule` wsd, warm-up, the peak, and a cool-down), weight decay (constant or cosine to
    `weight_decay_end`) and which parameters skip it, the optimizer and its options, gradient clipping.
    Schedules run on a step's Clock (engine/schedule.py): warm-ups on its `warm`, decays on `anneal`."""

    lr: float  # the peak lr, after batch scaling
    final_lr_ratio: float
    warmup_fraction: float
    weight_decay: float
    weight_decay_end: float | None = None  # null: constant; else cosine weight_decay -> this
    no_weight_decay: tuple[str, ...] = NO_WEIGHT_DECAY
    optimizer: str = "adamw"
    betas: tuple[float, float] | None = None  # null: the optimizer's default
    eps: float | None = None
    momentum: float | None = None
    grad_clip: float | None = None
    grad_clip_mode: str = "global"  # global | per_param
    schedule: str = COSINE  # cosine | wsd (train.schedule)

    @classmethod
    def from_train(cls, t: TrainConfig) -> Recipe:
        """A method's recipe, as its `train:` section resolves for this batch."""
        return cls(
            lr=peak_lr(t),
            final_lr_ratio=t.final_lr_ratio,
            warmup_fraction=t.warmup_fraction,
            weight_decay=t.weight_decay,
            weight_decay_end=t.weight_decay_end,
            no_weight_decay=tuple(t.no_weight_decay),
            optimizer=t.optimizer,
            betas=tuple(t.betas) if t.betas is not None else None,  # type: ignore[arg-type]
            eps=t.eps,
            momentum=t.momentum,
            grad_clip=t.grad_clip,
            grad_clip_mode=t.grad_clip_mode,
            schedule=str(t.schedule),
        )

    def lr_at(self, clock: Clock | float) -> float:
        """Linear warm-up from the final lr to the peak, then cosine back to the final lr; under wsd the
        peak until the cool-down, then 1 - sqrt to the final lr (engine/schedule.py warmup_wsd)."""
        end = self.lr * self.final_lr_ratio
        if self.schedule == COSINE:  # one position: today's fraction, bit for bit
            return warmup_cosine(clock, peak=self.lr, end=end, warmup=self.warmup_fraction, start=end)
        return warmup_wsd(Clock.of(clock), peak=self.lr, end=end, warmup=self.warmup_fraction, start=end)

    def weight_decay_at(self, clock: Clock | float) -> float:
        """Constant, or DINO's cosine from weight_decay to weight_decay_end over the budget (an annealed
        value: under wsd at its start on the trunk, on its cosine over the cool-down)."""
        if self.weight_decay_end is None:
            return self.weight_decay
        return cosine(Clock.of(clock).anneal, self.weight_decay, self.weight_decay_end)

    def optimizer_kwargs(self) -> dict[str, Any]:
        return optimizer_kwargs(self.betas, self.eps, self.momentum)


def resolve_recipe(t: TrainConfig) -> dict[str, Any]:
    """What the recipe resolves to for this batch: the record's `recipe` (less the parameter counts)."""
    return {
        "optimizer": t.optimizer,
        "lr": peak_lr(t),
        "base_lr": t.base_lr,
        "lr_scaling": "explicit train.lr" if t.lr is not None else t.lr_scaling,
        "lr_reference_batch": t.lr_reference_batch,
        "batch_size": t.batch_size,
        "betas": list(t.betas) if t.betas is not None else None,
        "momentum": t.momentum,
        "eps": t.eps,
        "weight_decay": t.weight_decay,
        "weight_decay_end": t.weight_decay if t.weight_decay_end is None else t.weight_decay_end,
        "no_weight_decay": list(t.no_weight_decay),
        "warmup_fraction": t.warmup_fraction,
        "final_lr_ratio": t.final_lr_ratio,
        "schedule": str(t.schedule),
        "cooldown_fraction": t.cooldown_fraction if t.schedule != COSINE else None,
        "grad_clip": t.grad_clip,
        "grad_clip_mode": t.grad_clip_mode if t.grad_clip is not None else "none",
        "drop_path": t.drop_path,
    }


def decay_exempt_names(model: nn.Module) -> set[str]:
    """Parameter names that timm models exempt from weight decay (`no_weight_decay()`: position
    embeddings, class tokens), found at any depth and prefixed with the submodule's path."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook) and not isinstance(module, nn.Parameter):
            try:
                found = hook()
            except TypeError:
                continue
            names |= {f"{prefix}.{n}" if prefix else n for n in found}
    return names


def param_groups(model: nn.Module, weight_decay: float, rules: list[str] | tuple[str, ...]) -> list[dict]:
    """Two groups (decayed, not decayed) by the recipe's rules, through timm's grouping. Each group
    says whether it decays (`decay`), so a weight-decay schedule changes only the decayed one."""
    exempt = decay_exempt_names(model) if "tokens" in rules else set()
    groups = param_groups_weight_decay(  # grouped at a unit decay: which group decays is by rule alone
        model, 1.0, weight_decay_exclude_1d="biases_norms" in rules, no_weight_decay_list=sorted(exempt)
    )
    return [
        {**g, "decay": g["weight_decay"] > 0, "weight_decay": weight_decay if g["weight_decay"] > 0 else 0.0}
        for g in groups
        if g["params"]
    ]


def decays(group: dict) -> bool:
    """Whether a parameter group takes weight decay: as grouped by `param_groups`, else (a task's own
    groups) whether it was given any."""
    return bool(group.get("decay", group.get("weight_decay", 0) > 0))


@dataclass(frozen=True)
class ParamCounts:
    decayed: int
    not_decayed: int


def count_params(groups: list[dict]) -> ParamCounts:
    decayed = sum(p.numel() for g in groups if decays(g) for p in g["params"])
    total = sum(p.numel() for g in groups for p in g["params"])
    return ParamCounts(decayed=decayed, not_decayed=total - decayed)


@torch.no_grad()
def clip_per_parameter(params: list[torch.Tensor], max_norm: float) -> None:
    """DINO's clip_gradients (facebookresearch/dino utils.py): each parameter's gradient scaled down to
    norm `max_norm` on its own, instead of one norm over all of them."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)
