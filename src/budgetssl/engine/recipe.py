"""A method's training recipe made concrete: the lr after batch scaling, the optimizer and its groups.

The recipe's values live in the configs (configs/config.yaml, overridden by each method's `train:`
section, cited there); this module only turns them into an optimizer and says what it resolved to,
so that the record states exactly what ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_weight_decay
from torch import nn

from budgetssl.config.schema import TrainConfig
from budgetssl.errors import ConfigError

LR_SCALINGS = ("linear", "sqrt", "none")
NO_WEIGHT_DECAY = ("biases_norms", "tokens")
CLIP_MODES = ("global", "per_param")


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
    raise ConfigError(f"train.lr_scaling must be one of {LR_SCALINGS}, got '{rule}'")


def peak_lr(t: TrainConfig) -> float:
    """`train.lr` when set (it wins, unscaled), else `train.base_lr` scaled to the batch."""
    if t.lr is not None:
        return t.lr
    return scaled_lr(t.base_lr, t.lr_scaling, t.batch_size, t.lr_reference_batch)


def optimizer_kwargs(betas: Any, eps: float | None, momentum: float | None) -> dict[str, Any]:
    """Only the options the recipe states: an Adam-family optimizer takes betas, SGD/LARS momentum."""
    out: dict[str, Any] = {}
    if betas is not None:
        out["betas"] = tuple(float(b) for b in betas)
    if eps is not None:
        out["eps"] = float(eps)
    if momentum is not None:
        out["momentum"] = float(momentum)
    return out


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
        "grad_clip": t.grad_clip,
        "grad_clip_mode": t.grad_clip_mode if t.grad_clip is not None else "none",
        "drop_path": t.drop_path,
    }


def check_recipe(t: TrainConfig) -> None:
    """Refuse a recipe the optimizer factory would crash on, at config time, naming the option."""
    known = list_optimizers()
    if t.optimizer not in known:
        close = [n for n in known if n.startswith(t.optimizer[:3])][:8]
        raise ConfigError(
            f"train.optimizer '{t.optimizer}' is not an optimizer timm knows"
            + (f"; close names: {', '.join(close)}" if close else "")
            + " (the full list: timm.optim.list_optimizers())"
        )
    if t.lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"train.lr_scaling must be one of {LR_SCALINGS}, got '{t.lr_scaling}'")
    bad = sorted(set(t.no_weight_decay) - set(NO_WEIGHT_DECAY))
    if bad:
        raise ConfigError(f"train.no_weight_decay may list {NO_WEIGHT_DECAY}, got unknown {bad}")
    if t.grad_clip_mode not in CLIP_MODES:
        raise ConfigError(f"train.grad_clip_mode must be one of {CLIP_MODES}, got '{t.grad_clip_mode}'")
    if t.betas is not None and (len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas)):
        raise ConfigError(f"train.betas must be [beta1, beta2] in [0, 1) or null, got {list(t.betas)}")
    if t.base_lr <= 0 or t.lr_reference_batch < 1:
        raise ConfigError("train.base_lr must be > 0 and train.lr_reference_batch >= 1")
    if t.weight_decay < 0 or (t.weight_decay_end is not None and t.weight_decay_end < 0):
        raise ConfigError("train.weight_decay and train.weight_decay_end must be >= 0")
    if not 0 <= t.drop_path < 1:
        raise ConfigError(f"train.drop_path must be in [0, 1), got {t.drop_path}")
    try:  # the options reach the optimizer's constructor: try them on one parameter now
        probe = nn.Parameter(torch.zeros(2, 2))
        kwargs = optimizer_kwargs(t.betas, t.eps, t.momentum)
        create_optimizer_v2([probe], opt=t.optimizer, lr=peak_lr(t), weight_decay=t.weight_decay, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"train.optimizer={t.optimizer} refuses the recipe's options ({e}); set train.betas=null for "
            "SGD/LARS or train.momentum=null for the Adam family"
        ) from None


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
