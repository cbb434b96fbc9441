"""Backbone weights as safetensors that a plain `timm.create_model(name, num_classes=0, **kwargs)` loads.

The timm name, kwargs, family and the pretraining's cost travel in the file's own metadata, so the file
alone is enough to transfer from. A bare state dict (e.g. saved from timm by hand) loads into the
configured `backbone=`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from budgetssl.backbones.backbone import Backbone, build_backbone
from budgetssl.backbones.registry import FAMILIES
from budgetssl.config.schema import BackboneConfig
from budgetssl.errors import BudgetSSLError
from budgetssl.files import atomic_write
from budgetssl.record.summary import SUMMARY

WEIGHTS = "backbone.safetensors"
PROVENANCE = "budgetssl_record"


def save_backbone(backbone: Backbone, folder: Path, provenance: dict[str, Any] | None = None) -> str:
    """Write the backbone's state dict; `provenance` (method, cost, ...) goes into the file's metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    meta = {
        "timm_name": backbone.timm_name,
        "timm_kwargs": json.dumps(backbone.timm_kwargs),
        "family": backbone.family,
        PROVENANCE: json.dumps(provenance or {}),
    }
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata=meta))
    return WEIGHTS


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex), read in chunks: the record stores its weights file's digest so
    that anyone can check the file is the one the run wrote (budgetssl-verify)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_file(source: Path) -> Path:
    """The weights file of a run folder (from its summary) or the file itself."""
    if not source.exists():
        raise BudgetSSLError(
            f"transfer.from_run: {source} does not exist; "
            f"give a pretraining run folder or a .safetensors file"
        )
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


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict and metadata of a safetensors file; anything else is a clear error."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise BudgetSSLError(
            f"cannot read backbone weights {path}: {e}; transfer.from_run needs a run folder or a "
            f".safetensors state dict"
        ) from None


def provenance(path: Path) -> dict[str, Any]:
    """What the pretraining that wrote `path` recorded about itself ({} for files from elsewhere)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get(PROVENANCE, "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}


def load_backbone(source: Path, image_size: int, fallback: BackboneConfig | None = None) -> Backbone:
    """Rebuild the backbone saved in `source` (a run folder or a .safetensors file) at `image_size`.

    Files written by budgetssl name their architecture; a bare state dict is loaded into `fallback`.
    """
    path = weights_file(source)
    state, meta = read_weights(path)
    if "timm_name" in meta:
        family = FAMILIES.get(meta.get("family", "vit"))
        kwargs = json.loads(meta.get("timm_kwargs", "{}"))
        if "img_size" in kwargs:
            kwargs["img_size"] = image_size
        model = timm.create_model(meta["timm_name"], pretrained=False, num_classes=0, **kwargs)
        backbone = family(model, meta["timm_name"], kwargs)
        hint = "the file names this architecture in its metadata, so the file itself is damaged"
    elif fallback is not None:
        backbone = build_backbone(fallback, image_size)
        hint = (
            f"the file carries no architecture, so it was loaded into backbone={fallback.name}; "
            f"set backbone=<name> to the architecture the weights were trained with"
        )
    else:
        raise BudgetSSLError(f"{path} names no architecture (no timm_name metadata); set backbone=<name>")
    load_strictly(backbone.model, state, path, f"{backbone.timm_name} {backbone.timm_kwargs}", hint)
    return backbone


def load_strictly(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, architecture: str, hint: str
) -> None:
    """Strict load after the two differences a timm user expects to be bridged: a classifier the
    backbone does not have, and a position embedding at another resolution."""
    own = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(classifier, str):
        state = {k: v for k, v in state.items() if k in own or not k.startswith(f"{classifier}.")}
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.ndim == 3 and pos.shape != own["pos_embed"].shape:
        if pos.shape[-1] == own["pos_embed"].shape[-1]:
            state = {
                **state,
                "pos_embed": resample_abs_pos_embed(
                    pos, new_size=model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens
                ),
            }
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if reshaped:
            k = reshaped[0]
            problems.append(
                f"{len(reshaped)} of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise BudgetSSLError(
            f"weights in {path} do not fit the architecture {architecture}: keys "
            f"{'; '.join(problems)}. {hint}"
        )
    model.load_state_dict(state, strict=True)
