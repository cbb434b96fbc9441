"""data2vec 2.0 against fairseq's code written out here (no other library implements its loss).

Official files (facebookresearch/fairseq, examples/data2vec): [d2v] models/data2vec2.py
(Data2VecMultiModel.forward, make_targets, d2v_loss), [base] models/modalities/base.py
(contextualized_features, decoder_input), [mod] models/modalities/modules.py (Decoder2d), [mask]
fairseq/data/data_utils.py (compute_block_mask_2d), [crit] fairseq/criterions/model_criterion.py and
fairseq/trainer.py (losses summed, gradients divided by sample_size, the masked-token count).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from budgetssl.engine.settings import loop_settings
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.data2vec2 import data2vec2_loss, inverse_block_mask, make_targets
from budgetssl.stages.pretrain import build
from conftest import run_config, small
from real_step import measure
from test_method_flops import NANO, linear

TINY = ["dataset.image_size=16", "dataset.num_train=16", "energy.track=false", "train.num_workers=0"]


# ---- fairseq, written out -------------------------------------------------------------------------------


def fairseq_make_targets(y: list[torch.Tensor], num_layers: int) -> torch.Tensor:
    """[d2v] make_targets with instance_norm_target_layer=True, layer_norm_targets=True (the image config)."""
    target_layer_results = y[-num_layers:]
    target_layer_results = [tl.transpose(1, 2) for tl in target_layer_results]  # BTC -> BCT
    target_layer_results = [F.instance_norm(tl.float()) for tl in target_layer_results]
    target_layer_results = [tl.transpose(1, 2) for tl in target_layer_results]  # BCT -> BTC
    out = target_layer_results[0].float()
    for tl in target_layer_results[1:]:
        out = out + tl.float()
    out = out / len(target_layer_results)
    return F.layer_norm(out, out.shape[-1:])


def fairseq_d2v_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[d2v] d2v_loss, loss_beta=0 and loss_scale=None: per-element MSE times 1/sqrt(C), unreduced."""
    x = x.view(-1, x.size(-1)).float()
    y = y.view(-1, x.size(-1))
    return F.mse_loss(x, y, reduction="none") * (1 / math.sqrt(x.size(-1)))


def fairseq_step_loss(dec_out, cls_out, layers, masked_b, clone_batch, top_k, cls_loss) -> torch.Tensor:
    """[d2v] forward from the teacher's layer results on, then [crit]: each loss summed, their sum divided by
    sample_size (the trainer's multiply_grads(world / sample_size), DDP averaging over the world)."""
    y = fairseq_make_targets(layers, top_k)
    orig_targets = y
    y = y.repeat_interleave(clone_batch, 0)[masked_b]
    xs = dec_out[masked_b]
    sample_size = masked_b.sum()
    cls_target = orig_targets.mean(dim=1).repeat_interleave(clone_batch, 0)
    cls = fairseq_d2v_loss(cls_out, cls_target) * (cls_loss * sample_size)
    regression = fairseq_d2v_loss(xs, y)
    return (cls.sum() + regression.sum()) / sample_size


def fairseq_block_mask(B: int, L: int, mask_prob: float, mask_length: int, adjust: float) -> torch.Tensor:
    """[mask] compute_block_mask_2d(inverse_mask=True, require_same_masks=True, non_overlapping=False,
    expand_adjcent=False, mask_dropout=0): 1 = masked."""
    d = int(L**0.5)
    mask_prob = 1 - mask_prob
    mask = torch.zeros((B, d, d))
    mask_inds = torch.randint(0, L, size=(B, int(L * ((mask_prob + adjust) / mask_length**2))))
    mask.view(B, -1).scatter_(1, mask_inds, 1)
    centers = mask.nonzero(as_tuple=True)
    inds = ([], [], [])
    offset = mask_length // 2
    for i in range(mask_length):
        for j in range(mask_length):
            inds[0].append(centers[0])
            inds[1].append(centers[1] + i - offset)
            inds[2].append(centers[2] + j - offset)
    i0 = torch.cat(inds[0])
    i1 = torch.cat(inds[1]).clamp_(min=0, max=d - 1)
    i2 = torch.cat(inds[2]).clamp_(min=0, max=d - 1)
    mask[(i0, i1, i2)] = 1
    mask = mask.reshape(B, -1)
    n_masks = mask.sum(dim=-1)
    final_target_len = int(L * mask_prob)
    for i in range(len(mask)):
        n, m = n_masks[i], mask[i]
        if n > final_target_len:
            m[torch.multinomial(m, int(n - final_target_len), replacement=False)] = 0
        elif n < final_target_len:
            m[torch.multinomial(1 - m, int(final_target_len - n), replacement=False)] = 1
    return 1 - mask


def fairseq_decoder(x: torch.Tensor, convs, proj, grid: int, dim: int) -> torch.Tensor:
    """[mod] Decoder2d.forward (SamePad2d is a no-op at an odd kernel; fairseq LayerNorm without affine)."""
    B, T, C = x.shape
    x = x.transpose(1, 2).reshape(B, C, grid, grid)
    residual = x
    for conv in convs:
        x = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
        x = F.layer_norm(x.transpose(-3, -1), (dim,)).transpose(-3, -1)  # TransposeLast(-3), LayerNorm
        x = F.gelu(x)
        if residual.size(1) == x.size(1):  # DecoderBase.add_residual
            x = x + residual
        residual = x
    x = x.reshape(B, -1, T).transpose(1, 2)
    return F.linear(x, proj.weight, proj.bias)


# ---- the loss and the targets -----------------------------------------------------------------------------


def test_the_loss_and_targets_equal_fairseqs_on_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    b, clone, tokens, c, depth, top_k = 3, 4, 9, 16, 5, 3
    layers = [torch.randn(b, tokens, c, generator=g) * (i + 1) + i for i in range(depth)]
    masked = torch.rand(b * clone, tokens, generator=g) < 0.7
    masked[:, 0] = True
    dec = torch.randn(b * clone, tokens, c, generator=g, requires_grad=True)
    cls = torch.randn(b * clone, c, generator=g, requires_grad=True)
    copies_per_gpu, cls_loss = b * clone, 0.01  # this batch as one GPU's; [cfg] model.cls_loss
    ref = fairseq_step_loss(dec, cls, layers, masked, clone, top_k, cls_loss)
    ref_grads = torch.autograd.grad(ref, [dec, cls])
    target = make_targets(layers, top_k)
    assert torch.allclose(target, fairseq_make_targets(layers, top_k), atol=1e-6)
    cls_target = target.mean(1).repeat_interleave(clone, 0)
    target = target.repeat_interleave(clone, 0)
    ours = data2vec2_loss(dec, target, masked.float(), cls, cls_target, cls_loss * copies_per_gpu)
    grads = torch.autograd.grad(ours, [dec, cls])
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-7, rtol=1e-5)
    diffs = [abs(float(ours - ref))] + [
        float((a - w).abs().max()) for a, w in zip(grads, ref_grads, strict=True)
    ]
    print("data2vec2 loss parity (loss, d pred, d cls):", diffs)
    # The class term matters: without it the loss is smaller, and the targets carry no gradient.
    assert float(data2vec2_loss(dec, target, masked.float(), cls, cls_target, 0.0)) < float(ours)


def test_the_inverse_block_mask_keeps_exactly_a_fifth_in_blocks_as_fairseqs():
    torch.manual_seed(0)
    grid, copies = 14, 400
    kept = inverse_block_mask(copies, grid, 0.8, 3, 0.07, torch.device("cpu"))
    assert kept.shape == (copies, int(196 * 0.2)) and kept.shape[1] == 39
    assert bool((kept.diff(dim=1) > 0).all())  # ascending, no patch twice
    ours = torch.zeros(copies, 196).scatter_(1, kept, 1.0)
    theirs = 1 - fairseq_block_mask(copies, 196, 0.8, 3, 0.07)  # kept = 1
    assert bool((theirs.sum(1) == 39).all())

    def neighbours(keep: torch.Tensor) -> float:
        """Mean number of kept 4-neighbours of a kept patch: 3x3 blocks cluster them; uniform ~0.7."""
        m = keep.view(-1, 1, grid, grid)
        cross = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3)
        return float((F.conv2d(m, cross, padding=1) * m).sum() / m.sum())

    uniform = torch.zeros(copies, 196).scatter_(1, torch.rand(copies, 196).argsort(1)[:, :39], 1.0)
    assert neighbours(ours) == pytest.approx(neighbours(theirs), rel=0.05)
    assert neighbours(ours) > 2 * neighbours(uniform)
    # Each position is kept about equally often by both (border blocks are clipped alike).
    assert torch.allclose(
        ours.mean(0).view(grid, grid).mean(0), theirs.mean(0).view(grid, grid).mean(0), atol=0.04
    )


def test_the_ffn_readout_and_masked_copies_read_the_vit_as_written_out():
    run = run_config(*TINY, *small("data2vec2"), "train.batch_size=2")
    method, _ = build(run)
    vit = method.backbone.model
    x = torch.randn(2, 3, 16, 16)
    layers = method.backbone(x, readout="ffn")
    h = vit._pos_embed(vit.patch_embed(x))
    for block, got in zip(vit.blocks, layers, strict=True):
        h = h + block.attn(block.norm1(h))
        f = block.mlp(block.norm2(h))
        h = h + f
        assert torch.allclose(got, f, atol=1e-5)
    keep = torch.tensor([[0, 3, 5], [1, 2, 15], [4, 8, 9], [6, 7, 10]])
    copies = method.backbone(x, readout="tokens", keep=keep)
    one_by_one = method.backbone(x.repeat_interleave(2, 0), readout="tokens", keep=keep)
    assert torch.allclose(copies, one_by_one, atol=1e-5)
    with pytest.raises(ValueError, match="masked copies"):
        method.backbone(x, readout="tokens", keep=keep[:3])


# ---- the whole step against fairseq's, for three steps ----------------------------------------------------


def reference_loss(student, teacher, convs, proj, images, keep, noise, cfg, grid):
    """Data2VecMultiModel.forward on a timm ViT: the student embeds each image once, repeats it clone_batch
    times ([base] contextualized_features), keeps each copy's patches, prepends the class token; the
    decoder input puts the noise at masked positions ([base] decoder_input); the teacher runs unmasked and
    its layer results are the blocks' feed-forward outputs on the patch tokens."""
    clone, prefix = cfg.clone_batch, 1
    pos = student.pos_embed
    x = student.patch_embed(images).flatten(1, 2) + pos[:, prefix:]
    x = x.repeat_interleave(clone, 0)
    x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    x = torch.cat([(student.cls_token + pos[:, :prefix]).expand(x.shape[0], -1, -1), x], 1)
    for block in student.blocks:
        x = block(x)
    x = student.norm(x)
    masked_b = torch.ones(x.shape[0], grid * grid, dtype=torch.bool).scatter_(1, keep, False)
    dec_in = noise.clone()
    dec_in[~masked_b] = x[:, prefix:].reshape(-1, x.shape[-1])  # kept tokens in ascending order
    dec_out = fairseq_decoder(dec_in, convs, proj, grid, cfg.decoder_dim)
    with torch.no_grad():
        t = teacher.patch_embed(images).flatten(1, 2) + teacher.pos_embed[:, prefix:]
        t = torch.cat([(teacher.cls_token + teacher.pos_embed[:, :prefix]).expand(t.shape[0], -1, -1), t], 1)
        y = []
        for block in teacher.blocks:
            t = t + block.attn(block.norm1(t))
            f = block.mlp(block.norm2(t))
            t = t + f
            y.append(f[:, prefix:])
    copies = images.shape[0] * clone
    return fairseq_step_loss(
        dec_out, x[:, 0], y, masked_b, clone, cfg.average_top_k_layers, cfg.cls_weight / copies
    )


def test_three_steps_match_the_reference_on_loss_parameters_and_teacher():
    torch.manual_seed(0)
    run = run_config(*TINY, *small("data2vec2"), "train.batch_size=2", "method.clone_batch=3")
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    cfg, grid = method.cfg, 4
    student = copy.deepcopy(method.backbone.model)
    teacher = copy.deepcopy(method.teacher.parts["backbone"].model)
    convs, proj = copy.deepcopy(method.decoder.blocks), copy.deepcopy(method.decoder.proj)
    trainable = {
        **{f"s.{n}": p for n, p in student.named_parameters() if p.requires_grad},
        **{f"c.{n}": p for n, p in convs.named_parameters()},
        **{f"p.{n}": p for n, p in proj.named_parameters()},
    }
    decay = [p for n, p in trainable.items() if p.ndim > 1 and not n.endswith(".bias")]
    rest = [p for n, p in trainable.items() if not (p.ndim > 1 and not n.endswith(".bias"))]
    tr = run.train
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=1.0, betas=tuple(tr.betas), eps=tr.eps,
    )  # fmt: skip
    batch = to_device(next(batches), trainer.device)
    method.train()
    for i, fraction in enumerate([0.0, 0.4, 0.8]):
        g = torch.Generator().manual_seed(i)
        copies = 2 * cfg.clone_batch
        keep = torch.rand(copies, 16, generator=g).argsort(1)[:, :3].sort(1).values
        noise = torch.randn(copies, 16, 96, generator=g) * cfg.mask_noise_std
        method.draw = lambda *_a, k=keep, z=noise: (k, z)
        lr = trainer.schedule(fraction)
        loss, logs = trainer.step(batch, None, fraction)
        m = 1 - (1 - cfg.base_momentum) * (1 + math.cos(math.pi * fraction)) / 2  # the harness's cosine
        assert logs["momentum"] == pytest.approx(m)
        ref = reference_loss(student, teacher, convs, proj, batch["image"], keep, noise, cfg, grid)
        opt.zero_grad()
        ref.backward()
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), tr.grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(m).add_(s, alpha=1 - m)
        print(f"step {i}: loss {float(loss):.6f} reference {float(ref):.6f}")
        assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    worst = 0.0
    pairs = [
        (method.backbone.model.state_dict(), student.state_dict()),
        (method.teacher.parts["backbone"].model.state_dict(), teacher.state_dict()),
        (method.decoder.blocks.state_dict(), convs.state_dict()),
        (method.decoder.proj.state_dict(), proj.state_dict()),
    ]
    for ours, theirs in pairs:
        for key, value in ours.items():
            worst = max(worst, float((value - theirs[key]).abs().max()))
            assert torch.allclose(value, theirs[key], atol=2e-5), key
    print("data2vec2 whole-step parameter max abs diff after 3 steps:", worst)
    assert not torch.equal(method.backbone.model.blocks[0].mlp.fc1.weight, teacher.blocks[0].mlp.fc1.weight)


# ---- the meter ----------------------------------------------------------------------------------------


def test_the_meter_counts_each_copy_the_teacher_once_and_the_decoder_per_copy():
    """Closed form (tests/test_method_flops.py conventions) at vit_nano, 16 px, batch 4: patch
    embedding once per image, the blocks on each copy's 1 + 3 kept tokens, the teacher unmasked once per
    image, the decoder (6 grouped convs + a linear) on each copy's 16 positions (4 copies: the CPU size)."""
    batch = 4
    got = measure(run_config(*TINY, *small("data2vec2"), f"train.batch_size={batch}"))
    m = run_config(*TINY, *small("data2vec2")).method
    clone, patches, kept = m.clone_batch, 16, int(16 * 0.2)
    assert clone == 4  # configs/method/cpu/data2vec2.yaml
    copies = batch * clone
    encoder_copy = NANO.blocks(kept + 1)
    conv = 2 * patches * 9 * 96 * m.decoder_dim // m.decoder_groups  # first layer: 96 -> decoder_dim
    conv_rest = 2 * patches * 9 * m.decoder_dim * m.decoder_dim // m.decoder_groups
    decoder_copy = conv + (m.decoder_layers - 1) * conv_rest + patches * linear(m.decoder_dim, 96)
    teacher = NANO.forward(16)
    forward = got["breakdown"]["forward"]
    assert forward["backbone"] == batch * NANO.patch_embed(patches) + copies * encoder_copy
    assert forward["teacher"] == batch * teacher
    assert forward["decoder"] == copies * decoder_copy
    assert set(forward) == {"total", "backbone", "teacher", "decoder"}
    # Backward: twice the forward for every trained matmul and convolution (input and weight gradients;
    # a grouped convolution's weight gradient once per group, meter/convolution.py), but the image needs
    # no gradient (the patch embedding's weight gradient only).
    convs = conv + (m.decoder_layers - 1) * conv_rest
    backward = (
        batch * NANO.patch_embed(patches)
        + 2 * copies * encoder_copy
        + copies * (2 * patches * linear(m.decoder_dim, 96) + 2 * convs)
    )
    assert got["breakdown"]["backward"]["total"] == backward
    assert got["flops_per_step"] == forward["total"] + backward


# ---- bad values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.mask_prob=0.99", "method.mask_prob=0.99 keeps 0 of 16"),
        ("method.clone_batch=0", "method.clone_batch must be >= 1"),
        ("method.average_top_k_layers=0", "method.average_top_k_layers=0 must be >= 1"),
        ("method.decoder_kernel=4", "method.decoder_kernel=4 must be odd"),
        ("method.mask_length=0", "method.mask_length must be >= 1"),
        ("backbone=resnet18", "needs a ViT backbone"),
        ("method.base_momentum=1.5", r"method.base_momentum must be in \[0, 1\]"),
    ],
)
def test_bad_values_are_refused_naming_the_option(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config(*TINY, *small("data2vec2"), override)


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.decoder_groups=7", "method.decoder_groups=7 must divide"),
    ],
)
def test_sizes_the_backbone_fixes_are_refused_when_it_is_built(override, message):
    with pytest.raises(ConfigError, match=message):
        build(run_config(*TINY, *small("data2vec2"), override))
