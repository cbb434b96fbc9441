"""The training recipe's values checked at config time, so a typo in `train.optimizer` or an option the
optimizer refuses exits before any data is read (a ConfigError, exit 2), like every other bad option.

The closed lists (lr_scaling, grad_clip_mode, no_weight_decay) are Enums in the schema and refused when the
section is typed; what is left needs the optimizer factory itself: whether timm knows the name, and whether
its constructor takes the recipe's betas, eps and momentum. Turning the recipe into an optimizer is the
engine's (engine/recipe.py); this module only asks timm, as the engine will.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from torch import nn

from budgetssl.config.schema import TrainConfig
from budgetssl.errors import ConfigError


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


def check_optimizer_name(name: str) -> None:
    """timm's optimizer factory knows `name`; else the close names, since the list is long."""
    known = list_optimizers()
    if name not in known:
        close = [n for n in known if n.startswith(name[:3])][:8]
        raise ConfigError(
            f"train.optimizer '{name}' is not an optimizer timm knows"
            + (f"; close names: {', '.join(close)}" if close else "")
            + " (the full list: timm.optim.list_optimizers())"
        )


def check_recipe(t: TrainConfig) -> None:
    """Refuse a recipe the optimizer factory would crash on, at config time, naming the option."""
    check_optimizer_name(t.optimizer)
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
        # Any positive lr tells whether the constructor takes these options; the peak lr is the engine's.
        lr = t.lr if t.lr is not None else t.base_lr
        create_optimizer_v2([probe], opt=t.optimizer, lr=lr, weight_decay=t.weight_decay, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"train.optimizer={t.optimizer} refuses the recipe's options ({e}); set train.betas=null for "
            "SGD/LARS or train.momentum=null for the Adam family"
        ) from None
