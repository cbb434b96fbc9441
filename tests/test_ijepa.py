"""I-JEPA (methods/zoo/ijepa.py) against facebookresearch/ijepa, whose rules are written out here: there
is no independent library implementation of its loss. Cited files are the official repository's:
src/train.py (forward_target, forward_context, loss_fn, momentum_scheduler), src/masks/multiblock.py
(MaskCollator), src/masks/utils.py (apply_masks), src/utils/tensors.py (repeat_interleave_batch),
src/models/vision_transformer.py (VisionTransformer.forward, VisionTransformerPredictor.forward, Block,
Attention), src/helper.py (init_opt's parameter groups) and src/utils/schedulers.py (CosineWDSchedule)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from budgetssl.engine.schedule import Clock
from budgetssl.engine.settings import loop_settings
from budgetssl.engine.trainer import Trainer
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.ijepa import MultiBlock, block_size, ijepa_loss
from budgetssl.stages.pretrain import build
from budgetssl.verify.flops import count
from conftest import run_config, small
from real_step import measure
from test_method_flops import ViT, linear

# --- the official rules, written out ---------------------------------------------------------------


def official_smooth_l1(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """src/train.py loss_fn: F.smooth_l1_loss(z, h) (beta 1, mean), written out element by element."""
    d = (z - h).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def official_block_size(u: float, grid: int, scale: tuple, aspect: tuple) -> tuple[int, int]:
    """MaskCollator._sample_block_size for the uniform `u` its generator drew."""
    max_keep = int(grid * grid * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    h, w = int(round(math.sqrt(max_keep * ratio))), int(round(math.sqrt(max_keep / ratio)))
    while h >= grid:
        h -= 1
    while w >= grid:
        w -= 1
    return h, w


def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """src/masks/utils.py apply_masks."""
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).repeat(1, 1, x.size(-1))) for m in masks], 0)


def repeat_interleave_batch(x: torch.Tensor, b: int, repeat: int) -> torch.Tensor:
    """src/utils/tensors.py repeat_interleave_batch."""
    n = len(x) // b
    return torch.cat([torch.cat([x[i * b : (i + 1) * b] for _ in range(repeat)], 0) for i in range(n)], 0)


def official_block(blk, x: torch.Tensor) -> torch.Tensor:
    """src/models/vision_transformer.py Block and Attention (explicit softmax) on a timm Block's weights."""
    b, n, c = x.shape
    heads = blk.attn.num_heads
    y = blk.norm1(x)
    qkv = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias)
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    y = F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), blk.attn.proj.weight, blk.attn.proj.bias)
    x = x + y
    y = blk.norm2(x)
    y = F.linear(
        F.gelu(F.linear(y, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias
    )
    return x + y


def official_encoder(vit, imgs: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """VisionTransformer.forward (no class token): patchify, add positions, keep the masked tokens."""
    x = vit.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + vit.pos_embed
    if masks is not None:
        x = apply_masks(x, masks)
    for blk in vit.blocks:
        x = official_block(blk, x)
    return vit.norm(x)


def official_predictor(p, x: torch.Tensor, masks_x: list, masks: list) -> torch.Tensor:
    """VisionTransformerPredictor.forward on our Predictor's weights."""
    b = len(x) // len(masks_x)
    x = p.embed(x)
    x = x + apply_masks(p.pos.repeat(b, 1, 1), masks_x)
    n_ctxt = x.shape[1]
    pos_embs = repeat_interleave_batch(apply_masks(p.pos.repeat(b, 1, 1), masks), b, repeat=len(masks_x))
    pred_tokens = p.mask_token.repeat(pos_embs.size(0), pos_embs.size(1), 1) + pos_embs
    x = torch.cat([x.repeat(len(masks), 1, 1), pred_tokens], dim=1)
    for blk in p.blocks:
        x = official_block(blk, x)
    return p.proj(p.norm(x)[:, n_ctxt:])


def official_param_groups(encoder, predictor) -> list[dict]:
    """src/helper.py init_opt: biases and 1-d parameters of either network without weight decay."""

    def part(model, decay: bool) -> list:
        return [p for n, p in model.named_parameters() if (("bias" not in n) and p.ndim != 1) == decay]

    return [
        {"params": part(encoder, True)},
        {"params": part(predictor, True)},
        {"params": part(encoder, False), "WD_exclude": True, "weight_decay": 0},
        {"params": part(predictor, False), "WD_exclude": True, "weight_decay": 0},
    ]


# --- the loss ---------------------------------------------------------------------------------------


def test_the_loss_is_the_official_smooth_l1_on_values_and_gradients():
    torch.manual_seed(0)
    z = (2 * torch.randn(8, 5, 6, dtype=torch.float64)).requires_grad_()  # both sides of |d| = 1
    h = torch.randn(8, 5, 6, dtype=torch.float64)
    ours, ref = ijepa_loss(z, h), official_smooth_l1(z, h)
    (g_ours,) = torch.autograd.grad(ours, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    assert (ours - ref).abs().item() < 1e-12
    assert (g_ours - g_ref).abs().max().item() < 1e-12
    assert ((z - h).abs() > 1).any() and ((z - h).abs() < 1).any()
    h.requires_grad_()
    ijepa_loss(z, h).backward()
    assert h.grad is None  # the target is detached, as forward_target runs under no_grad


# --- the masks --------------------------------------------------------------------------------------

REF = {"scale": (0.15, 0.2), "aspect": (0.75, 1.5), "context": (0.85, 1.0)}  # configs/in1k_vith14_ep300.yaml


@pytest.mark.parametrize("grid", [4, 8, 14, 16])
def test_block_sizes_follow_the_official_rule_exactly(grid):
    us = torch.linspace(0, 1, 2001, dtype=torch.float64)
    for scale, aspect in ((REF["scale"], REF["aspect"]), (REF["context"], (1.0, 1.0))):
        h, w = block_size(us, grid, scale, aspect)
        expected = [official_block_size(float(u), grid, scale, aspect) for u in us]
        assert list(zip(h.tolist(), w.tolist(), strict=True)) == expected


def masks_at(grid: int, batch: int, seed: int, keep: float = 0.28) -> tuple[MultiBlock, torch.Tensor, ...]:
    masks = MultiBlock(grid, 4, REF["scale"], REF["aspect"], REF["context"], keep)
    torch.manual_seed(seed)
    u = torch.rand(2)  # the draw's first two uniforms: the step's target and context sizes
    torch.manual_seed(seed)
    ctx, tgt = masks.draw(batch, torch.device("cpu"))
    return masks, u, ctx, tgt


def rectangle(idx: list[int], grid: int) -> tuple[int, int, int, int]:
    rows, cols = [i // grid for i in idx], [i % grid for i in idx]
    return min(rows), max(rows), min(cols), max(cols)


def test_target_blocks_are_the_official_rectangles_truncated_to_the_smallest_the_rule_draws():
    grid, batch = 14, 64  # ViT-B/16 at 224
    tops = set()
    for seed in range(6):
        masks, u, ctx, tgt = masks_at(grid, batch, seed)
        h, w = official_block_size(float(u[0]), grid, REF["scale"], REF["aspect"])
        kt = masks.target_tokens
        assert kt == min(official_block_size(i / 1000, grid, REF["scale"], REF["aspect"])[0]
                         * official_block_size(i / 1000, grid, REF["scale"], REF["aspect"])[1]
                         for i in range(1001))  # fmt: skip
        assert kt == 30 and tgt.shape == (4, batch, kt) and h * w >= kt
        for block in tgt.flatten(0, 1).tolist():
            top, _, left, _ = rectangle(block, grid)
            tops.add(top)
            assert 0 <= top < grid - h and 0 <= left < grid - w  # torch.randint(0, grid - h)
            full = [(top + r) * grid + left + c for r in range(h) for c in range(w)]
            assert block == full[:kt]  # the rectangle's first kt tokens in row-major order
    assert len(tops) > 1


def test_the_context_is_the_square_block_without_the_targets_first_in_row_major_order():
    grid, batch = 14, 64
    filled = 0
    for seed in range(4):
        masks, u, ctx, tgt = masks_at(grid, batch, seed)
        s = official_block_size(float(u[1]), grid, REF["context"], (1.0, 1.0))
        assert s == (13, 13) and ctx.shape == (batch, 54) and masks.context_tokens == int(0.28 * 196)
        h, w = official_block_size(float(u[0]), grid, REF["scale"], REF["aspect"])

        def whole(block: list[int], h: int = h, w: int = w) -> set[int]:  # as mask_complement clears it
            top, _, left, _ = rectangle(block, grid)
            return {(top + r) * grid + left + c for r in range(h) for c in range(w)}

        for i in range(batch):
            rects = [whole(tgt[k, i].tolist()) for k in range(4)]
            in_targets = set().union(*rects)
            # MaskCollator's context: the block at randint(0, 14 - 13) = 0, less the targets (allow_overlap
            # False), as torch.nonzero lists it (row-major); the batch's truncation keeps its first tokens.
            block = [r * grid + c for r in range(13) for c in range(13)]
            free = [t for t in block if t not in in_targets]
            got = ctx[i].tolist()
            assert got == sorted(set(got)) and set(got) <= set(block)
            if len(free) >= 54:
                assert got == free[:54]
            else:  # filled as constrain_mask relaxes: at try r only the first 4 - r blocks constrain
                filled += 1
                order, allowed = [], set(free)
                for r in range(1, 5):
                    constraining = set().union(set(), *rects[: 4 - r])
                    new = [t for t in block if t not in constraining and t not in allowed]
                    order += new
                    allowed |= set(new)
                assert got == sorted(free + order[: 54 - len(free)])
    assert 0 < filled < 0.2 * 4 * batch, filled  # the fixed count needs the fallback rarely at this grid


def test_the_masks_are_drawn_from_the_seed_and_their_shapes_are_fixed_on_meta_tensors():
    *_, c0, t0 = masks_at(8, 4, 0)
    *_, c1, t1 = masks_at(8, 4, 0)
    *_, c2, _ = masks_at(8, 4, 1)
    assert torch.equal(c0, c1) and torch.equal(t0, t1) and not torch.equal(c0, c2)
    masks = MultiBlock(8, 4, REF["scale"], REF["aspect"], REF["context"], 0.28)
    ctx, tgt = masks.draw(4, torch.device("meta"))
    assert ctx.shape == c0.shape and tgt.shape == t0.shape and ctx.is_meta


# --- the whole step against the official step ------------------------------------------------------

STEP = [
    "method=cpu/ijepa",
    "dataset.image_size=32",  # 8 x 8 patches: 9-token target blocks, 17 context tokens
    "dataset.num_train=8",
    "train.batch_size=4",
    "energy.track=false",
    "+backbone.kwargs.class_token=false",  # the official ViT has no class token
    "train.weight_decay=0.04",
    "train.weight_decay_end=0.4",
    "train.base_lr=0.003",  # large enough that 3 updates move the weights well beyond float error
]


class Fixed:
    """Masks handed to the method in place of its draw, the same ones the reference reads."""

    def __init__(self, draws: list) -> None:
        self.draws = list(draws)

    def draw(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.draws.pop(0)


def test_three_steps_match_the_official_train_step_on_the_same_images_and_masks():
    torch.manual_seed(0)
    run = run_config(*STEP)
    method, _ = build(run)
    trainer = Trainer(method, loop_settings(run))
    encoder, predictor = copy.deepcopy(method.backbone.model), copy.deepcopy(method.predictor)
    target_encoder = copy.deepcopy(encoder)
    assert method.backbone.num_prefix_tokens == 0
    # the target encoder starts as a copy (src/train.py: copy.deepcopy(encoder))
    for a, b in zip(method.teacher.parts["backbone"].model.parameters(), encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    optimizer = torch.optim.AdamW(official_param_groups(encoder, predictor))
    images = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    draws = [method.masks.draw(4, torch.device("cpu")) for _ in range(3)]
    method.masks = Fixed(draws)
    clocks = [0.0, 0.4, 0.8]
    for imgs, (ctx, tgt), f in zip(images, draws, clocks, strict=True):
        trainer.schedule(Clock.of(f))  # the loop sets the step's lr and weight decay, then steps
        loss, logs = trainer.step({"image": imgs}, None, Clock.of(f))
        masks_enc, masks_pred = [ctx], list(tgt)
        # lr: the harness's warm-up and cosine (the schedule is tested in test_schedule.py); weight decay:
        # CosineWDSchedule's cosine from 0.04 to 0.4, written out
        wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * f))
        for group in optimizer.param_groups:
            group["lr"] = trainer.recipe.lr_at(f)
            if not group.get("WD_exclude"):
                group["weight_decay"] = wd
        # src/train.py train_step: forward_target, forward_context, loss_fn, step, momentum update
        with torch.no_grad():
            h = official_encoder(target_encoder, imgs)
            h = F.layer_norm(h, (h.size(-1),))
            h = repeat_interleave_batch(apply_masks(h, masks_pred), len(h), repeat=len(masks_enc))
        z = official_predictor(predictor, official_encoder(encoder, imgs, masks_enc), masks_enc, masks_pred)
        ref = F.smooth_l1_loss(z, h)
        ref.backward()
        optimizer.step()
        optimizer.zero_grad()
        m = 0.996 + f * (1.0 - 0.996)  # momentum_scheduler: linear from ema[0] to ema[1] over the run
        assert logs["momentum"] == pytest.approx(m, abs=1e-12)
        with torch.no_grad():
            for q, k in zip(encoder.parameters(), target_encoder.parameters(), strict=True):
                k.data.mul_(m).add_((1.0 - m) * q.detach().data)
        assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    pairs = [
        (method.backbone.model, encoder),
        (method.predictor, predictor),
        (method.teacher.parts["backbone"].model, target_encoder),
    ]
    worst = max(
        (a - b).abs().max().item()
        for x, y in pairs
        for a, b in zip(x.parameters(), y.parameters(), strict=True)
    )
    assert worst < 1e-5, worst
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(method.backbone.model.parameters(), target_encoder.parameters(), strict=True)
    )
    assert moved > 1e-4  # the parameters did move, so the comparison tests the updates


# --- the meter --------------------------------------------------------------------------------------

NANO, SIZE, BATCH = ViT(), 16, 4


def ijepa_forward(
    vit: ViT, size: int, tokens: tuple[int, int, int], dim: int, depth: int
) -> tuple[int, int, int]:
    """(context encoder, predictor, target encoder) forward FLOPs per image, for (context tokens, target
    tokens per block, blocks)."""
    kc, kt, j = tokens
    patches = (size // vit.patch) ** 2
    encoder = vit.patch_embed(patches) + vit.blocks(kc + vit.prefix)
    predictor = linear(vit.dim, dim) * kc + j * (vit.blocks(kc + kt, dim, depth) + kt * linear(dim, vit.dim))
    return encoder, predictor, vit.forward(size)


def test_the_step_costs_the_closed_form_and_the_breakdown_names_each_encoder_and_the_predictor():
    got = measure(
        run_config(
            *small("ijepa"),
            f"dataset.image_size={SIZE}",
            "dataset.num_train=16",
            f"train.batch_size={BATCH}",
            "energy.track=false",
        )
    )
    # 4 x 4 patches: a 3 x 3 context block keeping int(0.28 * 16) = 4 tokens; the reference rule draws
    # target blocks of 1 to 4 patches there (a 1 x 1 at aspect ratios near 1), so each keeps 1
    kc, kt = (
        4,
        min(math.prod(official_block_size(i / 1000, 4, REF["scale"], REF["aspect"])) for i in range(1001)),
    )
    assert kt == 1
    encoder, predictor, teacher = ijepa_forward(NANO, SIZE, (kc, kt, 4), 48, 2)
    patches = (SIZE // NANO.patch) ** 2
    assert got["flops_per_step"] == BATCH * (3 * (encoder + predictor) - NANO.patch_embed(patches) + teacher)
    forward = got["breakdown"]["forward"]
    assert set(forward) == {"total", "backbone", "teacher", "predictor"}
    assert (forward["backbone"], forward["predictor"], forward["teacher"]) == (
        BATCH * encoder,
        BATCH * predictor,
        BATCH * teacher,
    )


def test_on_vit_base_with_the_reference_predictor_the_count_is_the_closed_form():
    common = ["backbone=vit_base", "dataset.image_size=224", "dataset.num_train=1", "train.batch_size=1"]
    got = count(
        run_config(*common, "method=ijepa", "energy.track=false")
    )  # on meta tensors, as budgetssl-flops
    base = ViT(dim=768, depth=12, patch=16)
    encoder, predictor, teacher = ijepa_forward(base, 224, (54, 30, 4), 384, 12)
    assert got["flops_per_step"] == 3 * (encoder + predictor) - base.patch_embed(196) + teacher


# --- the schedule and bad values --------------------------------------------------------------------


def test_the_target_encoders_momentum_rises_linearly_to_one():
    torch.manual_seed(0)
    method, _ = build(run_config(*small("ijepa"), "dataset.image_size=16", "energy.track=false"))
    for f in (0.0, 0.25, 0.5, 1.0):
        assert method.teacher.schedule(f) == pytest.approx(0.996 + 0.004 * f, abs=1e-15)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.context_keep=0.9"], "method.context_keep=0.9 keeps 14 context tokens of 16"),
        (["method.context_keep=0.01"], "it must keep at least one"),
        (["method.target_scale_min=0.01", "method.target_scale_max=0.01"], "draws target blocks of no patch"),
        (["method.target_scale_min=0.3", "method.target_scale_max=0.2"], "must satisfy 0 < min <= max <= 1"),
        (["method.target_aspect_min=0"], "method.target_aspect_min=0"),
        (["method.num_targets=0"], "method.num_targets=0"),
        (["backbone=resnet18"], "needs a ViT backbone"),
        (["method.momentum_rule=fast"], "method.momentum_rule must be one of"),
    ],
)
def test_bad_values_are_refused_naming_the_option_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config(*small("ijepa"), "dataset.image_size=16", *overrides)


def test_a_predictor_width_the_heads_do_not_divide_is_refused_naming_a_width_that_works():
    with pytest.raises(
        ConfigError, match="method.predictor_dim=50 must be divisible by the encoder's 3 heads"
    ):
        build(run_config(*small("ijepa"), "dataset.image_size=16", "method.predictor_dim=50"))
