"""FLOP counting: reference counts, attention on CPU, the step of a real method (budgetssl-flops: once
through its console script, once in this process), the fvcore cross-check."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from budgetssl.backbones.backbone import build_backbone
from budgetssl.cli import flops
from budgetssl.meter.counter import PassCounter, count_forward_flops
from conftest import cli, run_config


def forward_flops(name: str, size: int = 224) -> int:
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    return count_forward_flops(lambda: model(torch.zeros(1, 3, size, size)))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224", "resnet18", "resnet50"])
def test_forward_counts_match_reference(name, reference_flops):
    assert forward_flops(name) == pytest.approx(reference_flops[name]["forward_flops"], rel=1e-3)


def test_resnet50_forward_is_8_18_gflops():
    assert forward_flops("resnet50") / 1e9 == pytest.approx(8.18, rel=0.01)


def test_budgetssl_flops_for_vit_base_at_224(reference_flops, capsys):
    flops.main(["backbone=vit_base", "dataset.image_size=224", "train.batch_size=2"])
    result = json.loads(capsys.readouterr().out)
    assert result["convention"] == "fma=2"
    assert result["batch_size"] == 2
    assert result["flops_per_image"] / 1e9 == pytest.approx(35.13, rel=0.01)
    # A step is forward + backward (about 2x forward) of every image: about 3x forward per image.
    assert result["flops_per_step"] / (2 * result["flops_per_image"]) == pytest.approx(3.0, rel=0.02)
    ref = reference_flops["vit_base_patch16_224"]["forward_backward_flops"]
    head = result["breakdown"]["forward"]["head"] * 3  # the classifier's forward, and its 2x backward
    assert result["flops_per_step"] - head == pytest.approx(2 * ref, rel=1e-6)
    assert set(result["breakdown"]) >= {"forward", "backward", "optimizer"}
    parts = result["breakdown"]["forward"]
    assert parts["backbone"] + parts["head"] == parts["total"]


def _unfused(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False


def test_attention_counted_on_cpu_as_on_its_unfused_path():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    x = torch.randn(2, 3, 224, 224)

    def step_flops(m) -> tuple[int, int]:
        counter = PassCounter()
        with counter.count("forward"):
            out = m(x).sum()
        with counter.count("backward"):
            out.backward()
        return counter.passes["forward"]["total"], counter.passes["backward"]["total"]

    fused = step_flops(model)
    with FlopCounterMode(display=False) as plain:  # torch's own rules: the CPU kernel counts 0
        model(x)
    _unfused(model)
    unfused = step_flops(model)
    assert fused == unfused
    attention = 12 * 2 * (2 * 2 * 3 * 197 * 197 * 64)  # 12 blocks, QK^T and AV, 2 images, 3 heads
    assert fused[0] - plain.get_total_flops() == attention


def test_fvcore_cross_check_forward():
    """fvcore counts a multiply-add as 1 and skips fused attention: compare on the unfused path."""
    from fvcore.nn import FlopCountAnalysis

    backbone = build_backbone(run_config().backbone, 32).eval()
    x = torch.randn(1, 3, 32, 32)
    ours = count_forward_flops(lambda: backbone(x))
    _unfused(backbone)
    analysis = FlopCountAnalysis(backbone, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert ours == pytest.approx(2 * analysis.total(), rel=0.01)


def test_supervised_step_counts_every_pass():
    out = cli("budgetssl-flops", "dataset.image_size=16", "train.batch_size=4")
    result = json.loads(out.stdout)
    b = result["breakdown"]
    assert result["flops_per_step"] == sum(p["total"] for p in b.values())
    assert b["backward"]["total"] == pytest.approx(2 * b["forward"]["total"], rel=0.02)
    assert result["planned_steps"] == int(result["budget_flops"] // result["flops_per_step"])


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_a_grouped_convolutions_backward_counts_each_group_once(groups):
    """Forward, input gradient and weight gradient of a convolution each cost 2 x N x H x W x C_out x
    (C_in / groups) x k^2 (fma = 2; stride 1, same padding); torch 2.14's rule books the weight gradient
    `groups` times (meter/convolution.py). With groups = 1 the count is torch's own."""
    n, c, size, k = 2, 8, 6, 3
    conv = torch.nn.Conv2d(c, c, k, padding=1, groups=groups, bias=False)
    x = torch.randn(n, c, size, size, requires_grad=True)
    one = 2 * n * size * size * c * (c // groups) * k * k
    counter = PassCounter()
    with counter.count("forward"):
        out = conv(x)
    with counter.count("backward"):
        out.sum().backward()
    assert counter.passes["forward"]["total"] == one
    assert counter.passes["backward"]["total"] == 2 * one  # input and weight gradients
    with FlopCounterMode(display=False) as torch_rules:
        conv(x).sum().backward()
    assert torch_rules.get_total_flops() == 3 * one + (groups - 1) * one  # the overcount, fixed here


def test_a_remembered_count_is_the_rules_own_count(monkeypatch):
    """meter/counter.py remembers a shape rule's count by what the rule sees and counts a new one on the
    shapes it maps without torch's pytree: on every counted op of a step of a small ViT (addmm, mm,
    attention and their gradients) and a grouped convolution, the count with nothing remembered, the
    count remembered, and the rule's own through torch's shape wrapper agree, and so do the shapes."""
    from torch.utils._pytree import tree_map
    from torch.utils.flop_counter import get_shape

    from budgetssl.meter import counter

    calls = []
    real = counter.count

    def recording(func, rule, args, kwargs, out):
        calls.append((func, rule, args, kwargs, out))
        return real(func, rule, args, kwargs, out)

    monkeypatch.setattr(counter, "count", recording)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)
    with counter.Counting():
        vit(torch.randn(2, 3, 32, 32)).sum().backward()
        conv(torch.randn(2, 8, 6, 6, requires_grad=True)).sum().backward()
    monkeypatch.setattr(counter, "count", real)
    kinds = {func._overloadpacket for func, *_ in calls}
    assert {torch.ops.aten.addmm, torch.ops.aten.mm, torch.ops.aten.convolution_backward} <= kinds
    assert any("attention" in str(kind) for kind in kinds)
    monkeypatch.setattr(counter, "COUNTS", {})
    for func, rule, args, kwargs, out in calls:
        assert counter.shapes((args, kwargs, out)) == tree_map(get_shape, (args, kwargs, out))
        torch_count = rule(*args, **kwargs, out_val=out)
        first = counter.count(func, rule, args, kwargs, out)
        assert counter.count(func, rule, args, kwargs, out) == first == torch_count, func
    assert counter.COUNTS  # remembered
