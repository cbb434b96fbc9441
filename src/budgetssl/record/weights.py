"""Backbone weights as safetensors that a plain `timm.create_model(name, num_classes=0, **kwargs)` loads.

The timm name, kwargs and family travel in the file's own metadata, so the file alone is enough.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from budgetssl.backbones.backbone import Backbone
from budgetssl.errors import BudgetSSLError
from budgetssl.record.files import atomic_write
from budgetssl.record.summary import SUMMARY

WEIGHTS = "backbone.safetensors"


def save_backbone(backbone: Backbone, folder: Path) -> str:
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    meta = {
        "timm_name": backbone.timm_name,
        "timm_kwargs": json.dumps(backbone.timm_kwargs),
        "family": backbone.family,
    }
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata=meta))
    return WEIGHTS


def weights_file(source: Path) -> Path:
    """The weights file of a run folder (from its summary) or the file itself."""
    if not source.exists():
        raise BudgetSSLError(f"transfer.from_run: {source} does not exist; give a pretraining run folder")
    if source.is_file():
        return source
    summary = source / SUMMARY
    name = WEIGHTS
    if summary.is_file():
        try:
            name = json.loads(summary.read_text()).get("backbone_weights") or WEIGHTS
        except ValueError:
            pass
    path = source / name
    if not path.is_file():
        raise BudgetSSLError(
            f"run folder {source} has no backbone weights (expected {path}); "
            f"point transfer.from_run at a folder written by budgetssl-pretrain or budgetssl-run"
        )
    return path


def load_backbone(source: Path, image_size: int) -> Backbone:
    """Rebuild the backbone saved in `source` (a run folder or a .safetensors file) at `image_size`."""
    from budgetssl.backbones.registry import FAMILIES

    path = weights_file(source)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BudgetSSLError(f"cannot read backbone weights {path}: {e}") from None
    if "timm_name" not in meta:
        raise BudgetSSLError(f"{path} has no timm_name metadata; it was not written by budgetssl")
    family = FAMILIES.get(meta.get("family", "vit"))
    kwargs = json.loads(meta.get("timm_kwargs", "{}"))
    if "img_size" in kwargs:
        kwargs["img_size"] = image_size
    model = timm.create_model(meta["timm_name"], pretrained=False, num_classes=0, **kwargs)
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=model.patch_embed.grid_size,
            num_prefix_tokens=model.num_prefix_tokens,
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BudgetSSLError(
            f"weights in {path} do not fit {meta['timm_name']} with {kwargs}: {str(e).splitlines()[0]}"
        ) from None
    return family(model, meta["timm_name"], kwargs)
