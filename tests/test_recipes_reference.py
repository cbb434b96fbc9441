"""Each method's recipe, at its reference size, against the values its authors published (cited in
configs/method/*.yaml), and the fidelity details of each method: DINO's frozen last layer and its
weight-normalised gain, MAE's fixed sin-cos position embedding and xavier init, CLIP's projection init,
the MoCo v3 study's heads, LARS keeping biases and norms out of the adaptation, the crops' resampling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torchvision.transforms import v2

from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.schedule import Clock
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.methods.augment import Augment
from budgetssl.methods.heads import WeightNormLinear
from budgetssl.methods.zoo.mae import sincos_pos_embed
from budgetssl.stages.pretrain import build, loop_settings
from conftest import TINY, run_config, small

VIT_B = ["backbone=vit_base", "dataset.image_size=224"]
# SimCLR and BYOL on ViT-B, as the MoCo v3 study ran both (moco-v3 CONFIG.md, moco_v3_tpu): AdamW, wd 0.1
# on every parameter, 40 of 300 epochs of warm-up, cosine to 0, no clipping, no drop path.
MOCO_V3_VIT = {
    "optimizer": "adamw",
    "betas": [0.9, 0.999],
    "weight_decay": 0.1,
    "no_weight_decay": [],
    "warmup_fraction": 40 / 300,
    "final_lr_ratio": 0.0,
    "grad_clip": None,
    "drop_path": 0.0,
}
RESNET50 = ["backbone=resnet50", "dataset.image_size=224"]

# method config -> (its reference's global batch, the reference's own peak lr at that batch, the rest of
# the resolved recipe as the reference states it). Sources are cited next to each value in the configs.
REFERENCE: dict[str, tuple[list[str], int, float, dict[str, Any]]] = {
    "dino": (  # dino_vitbase16_pretrain/args.txt: 32 GPUs x 32, lr 0.00075 per 256 (main_dino.py)
        VIT_B,
        1024,
        0.00075 * 1024 / 256,
        {
            "optimizer": "adamw",
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": 0.04,
            "weight_decay_end": 0.4,
            "no_weight_decay": ["biases_norms"],
            "warmup_fraction": 10 / 400,
            "grad_clip": 0.3,
            "grad_clip_mode": "per_param",
            "drop_path": 0.1,
        },
    ),
    "mae": (  # PRETRAIN.md: blr 1.5e-4, batch 4096, 800 epochs, 40 of warm-up; main_pretrain.py
        VIT_B,
        4096,
        1.5e-4 * 4096 / 256,
        {
            "optimizer": "adamw",
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.05,
            "weight_decay_end": 0.05,
            "no_weight_decay": ["biases_norms"],
            "warmup_fraction": 40 / 800,
            "final_lr_ratio": 0.0,
            "grad_clip": None,
            "grad_clip_mode": "none",
            "drop_path": 0.0,
        },
    ),
    "clip": (  # open_clip get_default_params (ViT): lr 5e-4, betas 0.9/0.98, eps 1e-6; --wd 0.2
        VIT_B,
        32768,
        5e-4,
        {
            "optimizer": "adamw",
            "betas": [0.9, 0.98],
            "eps": 1e-6,
            "weight_decay": 0.2,
            "no_weight_decay": ["biases_norms", "tokens"],
            "warmup_fraction": 2000 / (32 * 400e6 / 32768),
            "final_lr_ratio": 0.0,
            "grad_clip": None,
            "drop_path": 0.0,
        },
    ),
    "simclr": (  # moco_v3_tpu: batch_size=4096 lr=3.2e-3 ("already scaled") weight_decay=0.1, 40/300
        VIT_B,
        4096,
        3.2e-3,
        MOCO_V3_VIT,
    ),
    "byol": (  # MoCo v3 CONFIG.md ViT-Base: --lr=1.5e-4 (x 4096 / 256) --weight-decay=.1, 40 of 300
        VIT_B,
        4096,
        1.5e-4 * 4096 / 256,
        MOCO_V3_VIT,
    ),
    "resnet/simclr": (  # SimCLR tf2/run.py: LARS, 0.3 x B / 256 (= 4.8 at 4096), wd 1e-6, 10 of 100
        RESNET50,
        4096,
        4.8,
        {
            "optimizer": "lars",
            "betas": None,
            "momentum": 0.9,
            "weight_decay": 1e-6,
            "no_weight_decay": ["biases_norms"],
            "warmup_fraction": 10 / 100,
            "final_lr_ratio": 0.0,
            "grad_clip": None,
        },
    ),
    "resnet/byol": (  # BYOL configs/byol.py, 1000 epochs: LARS, 0.2 x B / 256, wd 1.5e-6, 10 of 1000
        RESNET50,
        4096,
        0.2 * 4096 / 256,
        {
            "optimizer": "lars",
            "betas": None,
            "momentum": 0.9,
            "weight_decay": 1.5e-6,
            "no_weight_decay": ["biases_norms"],
            "warmup_fraction": 10 / 1000,
            "final_lr_ratio": 0.0,
            "grad_clip": None,
        },
    ),
}


@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_the_resolved_recipe_at_the_reference_batch_is_the_references(method):
    backbone, batch, lr, expected = REFERENCE[method]
    run = run_config(f"method={method}", *backbone, f"train.batch_size={batch}")
    recipe = resolve_recipe(run.train)
    assert recipe["lr"] == pytest.approx(lr, rel=1e-9)
    for key, value in expected.items():
        got = recipe[key]
        assert got == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), key


def test_dino_ends_at_the_references_min_lr_and_mae_tiny_trains_on_maes_recipe():
    dino = run_config("method=dino", *VIT_B, "train.batch_size=1024").train
    assert resolve_recipe(dino)["lr"] * dino.final_lr_ratio == pytest.approx(2e-6, rel=1e-4)  # args min_lr
    mae = resolve_recipe(run_config("method=mae", *VIT_B, "train.batch_size=4096").train)
    tiny = resolve_recipe(run_config("method=mae_tiny", *VIT_B, "train.batch_size=4096").train)
    assert tiny == mae


def test_simclrs_sqrt_rule_gives_the_same_lr_at_4096_as_its_linear_rule():
    """SimCLR's README: lr 0.3 with linear scaling equals 0.075 with sqrt scaling (0.075 x sqrt(B))."""
    run = run_config(
        "method=resnet/simclr",
        *RESNET50,
        "train.batch_size=4096",
        "train.lr_scaling=sqrt",
        "train.base_lr=0.075",
        "train.lr_reference_batch=1",
    )
    assert resolve_recipe(run.train)["lr"] == pytest.approx(0.075 * math.sqrt(4096)) == pytest.approx(4.8)


def test_method_sections_hold_the_references_values():
    dino = run_config("method=dino", *VIT_B).method  # dino_vitbase16_pretrain/args.txt
    assert (dino.local_crops, list(dino.global_crop_scale), list(dino.local_crop_scale)) == (
        10,
        [0.25, 1.0],
        [0.05, 0.25],
    )
    assert (dino.teacher_temp, dino.warmup_teacher_temp, dino.norm_last_layer) == (0.07, 0.04, True)
    assert dino.warmup_teacher_temp_fraction == pytest.approx(50 / 400)
    assert dino.freeze_last_layer_fraction == pytest.approx(3 / 400)
    simclr = run_config("method=simclr", *VIT_B).method  # the MoCo v3 study's SimCLR on ViT
    assert (simclr.proj_layers, simclr.proj_hidden_dim, simclr.proj_dim, simclr.proj_last_bn) == (
        3,
        4096,
        256,
        True,
    )
    byol = run_config("method=byol", *VIT_B).method
    assert (byol.proj_layers, byol.pred_layers, byol.proj_dim, byol.last_bn) == (3, 2, 256, True)
    # The published momentum schedules at any plan length (methods/ema.py; the sweep in cpu/*.yaml).
    assert (dino.base_momentum, dino.momentum_rule) == (0.996, "published")
    assert (byol.base_momentum, byol.momentum_rule) == (0.99, "published")
    for option in ("cpu/dino", "cpu/byol", "resnet/byol"):
        assert run_config(f"method={option}").method.momentum_rule == "published"


# ----- models: tiny backbones (vit_nano at 16 px) and heads -----


def tiny(method: str, *extra: str):
    torch.manual_seed(0)
    run = run_config(*TINY, *small(method), *extra)
    model, batches = build(run)
    trainer = Trainer(model, loop_settings(run))
    model.train()
    return model, batches, trainer


def step(trainer: Trainer, batches, fraction: float) -> None:
    trainer.schedule(fraction)
    trainer.step(to_device(next(batches), trainer.device), None, Clock.of(fraction))


def optimized(trainer: Trainer) -> dict[int, float]:
    """id(parameter) -> the weight decay of its optimizer group."""
    return {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}


def test_dino_freezes_its_last_layer_for_the_first_part_of_the_budget_then_trains_it():
    model, batches, trainer = tiny("dino")
    last, frozen_until = model.head.last.weight, model.cfg.freeze_last_layer_fraction
    assert frozen_until == pytest.approx(0.0075)
    # Inside the frozen part: the gradient is dropped after backward, the rest keeps its gradients.
    model(to_device(next(batches), trainer.device)).loss.backward()
    model.on_after_backward(0.0)
    assert last.grad is None and model.head.mlp[0].weight.grad is not None
    trainer.optimizer.zero_grad(set_to_none=True)
    before, mlp_before = last.detach().clone(), model.head.mlp[0].weight.detach().clone()
    step(trainer, batches, 0.0)
    assert torch.equal(last, before)  # neither updated nor decayed
    assert not torch.equal(model.head.mlp[0].weight, mlp_before)
    # From the fraction on it trains.
    step(trainer, batches, frozen_until)
    assert not torch.equal(last, before)


def test_dino_weight_norm_gain_is_fixed_with_norm_last_layer_and_learnt_without():
    fixed, _, fixed_trainer = tiny("dino")
    assert not fixed.head.last.gain.requires_grad and id(fixed.head.last.gain) not in optimized(fixed_trainer)
    model, batches, trainer = tiny("dino", "method.norm_last_layer=false")
    gain = model.head.last.gain
    assert gain.requires_grad and torch.equal(gain, torch.ones_like(gain))  # weight_g.fill_(1)
    assert optimized(trainer)[id(gain)] > 0  # (out, 1) like weight_g: DINO's grouping decays it
    step(trainer, batches, 0.5)
    assert not torch.equal(gain, torch.ones_like(gain))
    state = model.state_dict()
    assert "head.last.gain" in state and "teacher.parts.head.last.gain" in state
    fresh, _ = build(run_config(*TINY, *small("dino"), "method.norm_last_layer=false"))
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.head.last.gain, gain)


def test_weight_norm_linear_is_torchs_weight_norm_with_the_gain():
    torch.manual_seed(0)
    ours = WeightNormLinear(8, 5, fixed_gain=False)
    with torch.no_grad():
        ours.gain.uniform_(0.5, 2.0)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(8, 5, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(ours.gain)
        reference.parametrizations.weight.original1.copy_(ours.weight)
    x = torch.randn(4, 8)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)


def test_dino_teacher_runs_without_the_students_drop_path():
    model, _, _ = tiny("dino")
    rates = lambda module: [m.drop_prob for m in module.modules() if type(m).__name__ == "DropPath"]  # noqa: E731
    assert max(rates(model.backbone)) > 0  # the recipe's 0.1, spread over depth by timm
    assert set(rates(model.teacher.parts["backbone"])) == {0.0}


def mae_reference_pos_embed(dim: int, grid: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed(dim, grid, cls_token=True), in numpy."""
    grid_h, grid_w = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid, grid])

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_mae_encoder_position_embedding_is_the_fixed_sincos_one_and_stays_so():
    model, batches, trainer = tiny("mae")
    pos = model.backbone.model.pos_embed
    expected = torch.from_numpy(mae_reference_pos_embed(96, 4)).float().unsqueeze(0)
    assert torch.allclose(pos, expected, atol=1e-6) and not pos.requires_grad
    assert id(pos) not in optimized(trainer)  # not trained, so not decayed either
    assert torch.allclose(
        model.decoder.pos,
        torch.from_numpy(mae_reference_pos_embed(model.decoder.pos.shape[-1], 4)).float(),
        atol=1e-6,
    )
    for fraction in (0.0, 0.5, 1.0):
        step(trainer, batches, fraction)
    assert torch.allclose(pos, expected, atol=1e-6)
    assert torch.allclose(sincos_pos_embed(4, 96, 1), expected[0], atol=1e-6)


def test_mae_linears_start_xavier_uniform_with_zero_bias():
    model, _, _ = tiny("mae")
    vit = model.backbone.model
    for linear in (vit.blocks[0].attn.qkv, vit.blocks[-1].mlp.fc2, model.decoder.embed, model.decoder.pred):
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert vit.cls_token.std() > 1e-3  # N(0, 0.02), not timm's 1e-6


def test_clip_projections_start_as_open_clips():
    model, _, _ = tiny("clip", "method.text_width=64", "method.text_heads=4", "method.embed_dim=64")
    image_std = float(model.image_proj.weight.detach().std())
    assert image_std == pytest.approx(96**-0.5, rel=0.1)  # VisionTransformer.proj: width ** -0.5
    assert float(model.text.text_projection.detach().std()) == pytest.approx(64**-0.5, rel=0.1)
    attn = model.text.transformer.resblocks[0].attn.in_proj_weight
    assert float(attn.detach().std()) == pytest.approx(64**-0.5, rel=0.1)  # TextTransformer.init_parameters


def test_clip_keeps_gains_biases_logit_scale_and_position_embeddings_out_of_weight_decay():
    model, _, trainer = tiny("clip")
    decay = optimized(trainer)
    assert decay[id(model.logit_scale)] == 0 and decay[id(model.text.positional_embedding)] == 0
    assert decay[id(model.backbone.model.pos_embed)] == 0
    configured = run_config(*small("clip")).train.weight_decay  # the CPU recipe's (the reference's: 0.2)
    assert decay[id(model.text.ln_final.weight)] == 0
    assert configured > 0 and decay[id(model.image_proj.weight)] == pytest.approx(configured)


def test_simclr_and_byol_decay_every_parameter_as_moco_v3_and_dino_spares_only_biases_and_norms():
    simclr, _, trainer = tiny("simclr")
    assert all(v == pytest.approx(0.1) for v in optimized(trainer).values())
    dino, _, trainer = tiny("dino")
    decay = optimized(trainer)
    assert decay[id(dino.backbone.model.pos_embed)] > 0 and decay[id(dino.backbone.model.cls_token)] > 0
    assert decay[id(dino.backbone.model.blocks[0].norm1.weight)] == 0


def test_simclr_and_byol_heads_are_the_moco_v3_studys_on_vits_and_their_own_on_resnets_and_at_cpu_size():
    def shape(head: nn.Sequential) -> list[str]:
        return [
            f"linear{'+b' if m.bias is not None else ''}"
            if isinstance(m, nn.Linear)
            else f"bn{'+affine' if m.affine else ''}"
            for m in head
            if isinstance(m, nn.Linear | nn.BatchNorm1d)
        ]

    simclr, _, _ = tiny("simclr")
    assert shape(simclr.projector) == ["linear", "bn+affine", "linear", "bn+affine", "linear", "bn"]
    # BYOL's reference config on a ViT: the MoCo v3 study's heads (a 3-layer projector, last BN on both).
    narrow = ["method.proj_hidden_dim=64", "method.pred_hidden_dim=64", "method.proj_dim=32"]
    byol_vit, _ = build(run_config(*TINY, "method=byol", *narrow))
    assert shape(byol_vit.projector) == ["linear", "bn+affine", "linear", "bn+affine", "linear", "bn"]
    assert shape(byol_vit.predictor) == ["linear", "bn+affine", "linear", "bn"]
    # At CPU size BYOL's own (configs/method/cpu/byol.yaml: chosen by the sweep), no output BN.
    byol, _, _ = tiny("byol")
    assert shape(byol.projector) == shape(byol.predictor) == ["linear", "bn+affine", "linear"]
    resnet = [*TINY, "backbone=resnet18"]
    simclr_rn, _ = build(run_config(*resnet, "method=resnet/simclr", "method.proj_hidden_dim=64"))
    assert shape(simclr_rn.projector) == ["linear", "bn+affine", "linear", "bn"]  # SimCLR's output BN
    byol_rn, _ = build(
        run_config(*resnet, "method=resnet/byol", "method.proj_hidden_dim=64", "method.pred_hidden_dim=64")
    )
    assert shape(byol_rn.projector) == shape(byol_rn.predictor) == ["linear", "bn+affine", "linear"]


def test_timm_lars_leaves_the_groups_without_weight_decay_out_of_the_adaptation():
    """SimCLR (exclude_from_layer_adaptation defaults to its weight-decay exclusions) and BYOL
    (exclude_bias_and_norm for both) skip biases and norms in LARS; timm's `lars` adapts only where the
    group's weight decay is non-zero, so the recipe's no-decay group gets plain momentum SGD."""
    weight, bias = nn.Parameter(torch.full((4, 4), 2.0)), nn.Parameter(torch.ones(4))
    weight.grad, bias.grad = torch.full((4, 4), 0.5), torch.full((4,), 0.5)
    lr, wd, eta = 0.1, 1e-2, 1e-3
    opt = create_optimizer_v2(
        [{"params": [weight], "weight_decay": wd}, {"params": [bias], "weight_decay": 0.0}],
        opt="lars",
        lr=lr,
        momentum=0.9,
    )
    opt.step()
    assert torch.allclose(bias, torch.full((4,), 1.0 - lr * 0.5))  # no trust ratio
    w_norm, g_norm = 2.0 * 4, 0.5 * 4
    trust = eta * w_norm / (g_norm + wd * w_norm + 1e-8)  # timm's (LARC's) form of the ratio
    assert torch.allclose(weight, torch.full((4, 4), 2.0 - lr * trust * (0.5 + wd * 2.0)))


@pytest.mark.parametrize(
    ("method", "interpolation"),
    [
        ("dino", "bicubic"),  # main_dino.py
        ("mae", "bicubic"),  # main_pretrain.py
        ("clip", "bicubic"),  # open_clip transform.py
        ("simclr", "bilinear"),  # MoCo v3 / moco_v3_tpu: torchvision's default
        ("byol", "bilinear"),
        ("resnet/simclr", "bicubic"),  # SimCLR data_util.py
        ("resnet/byol", "bicubic"),  # BYOL dataset.py
    ],
)
def test_crops_resample_as_the_reference_does(method, interpolation):
    name = method.split("/")[-1]
    extra = [*small(name)[1:], "backbone=resnet18"] if "/" in method else small(method)[1:]
    model, _ = build(run_config(*TINY, f"method={method}", *extra))
    pipelines = [
        t.transform() if isinstance(t, Augment) else t
        for group in model.views().groups().values()
        for t in group
    ]
    crops = [
        op for p in pipelines for op in getattr(p, "transforms", []) if isinstance(op, v2.RandomResizedCrop)
    ]
    assert crops and {c.interpolation for c in crops} == {v2.InterpolationMode[interpolation.upper()]}
