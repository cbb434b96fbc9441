"""Backbones from timm by name, behind one interface: pooled features and a spatial feature map."""

from __future__ import annotations

import pytest
import torch

from budgetssl.backbones.backbone import build_backbone
from conftest import run_config


@pytest.mark.parametrize(
    "name, size, features, stride",
    [("vit_nano", 32, 96, 4), ("vit_tiny", 32, 192, 16), ("resnet18", 64, 512, 32)],
)
def test_pooled_features_and_feature_map(name, size, features, stride):
    backbone = build_backbone(run_config(f"backbone={name}", f"dataset.image_size={size}").backbone, size)
    x = torch.randn(2, 3, size, size)
    assert backbone(x).shape == (2, features)
    assert backbone(x, readout="map").shape == (2, features, size // stride, size // stride)


def test_every_contract_backbone_composes():
    expected = {
        "vit_nano": "vit_tiny_patch16_224",
        "vit_tiny": "vit_tiny_patch16_224",
        "vit_small": "vit_small_patch16_224",
        "vit_base": "vit_base_patch16_224",
        "vit_large": "vit_large_patch16_224",
        "resnet18": "resnet18",
        "resnet50": "resnet50",
    }
    for name, timm_name in expected.items():
        size = 32 if name in ("vit_nano",) else 64
        run = run_config(f"backbone={name}", f"dataset.image_size={size}")
        assert run.backbone.timm_name == timm_name


def test_patch_size_override_changes_the_token_grid():
    run = run_config("backbone=vit_nano", "backbone.patch_size=8")
    backbone = build_backbone(run.backbone, 32)
    assert backbone(torch.randn(1, 3, 32, 32), readout="map").shape[-2:] == (4, 4)
    assert backbone.timm_spec()["kwargs"]["patch_size"] == 8
