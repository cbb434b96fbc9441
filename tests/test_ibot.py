"""iBOT (methods/zoo/ibot.py): its loss against lightly's DINOLoss and IBOTPatchLoss, its masks against
bytedance/ibot loader.py written out, its whole step against main_ibot.py written out for a few steps,
its FLOPs against a closed form, the masked ViT read-out, and the configs it refuses."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, IBOTPatchLoss
from torch import nn

from budgetssl.engine.schedule import Clock
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.ibot import Masking, block_mask, ibot_loss
from budgetssl.stages.pretrain import build
from conftest import TINY, hook_step, run_config, small
from test_method_flops import BATCH, NANO, SIZE, linear, sizes, step

B, K, N = 4, 12, 9  # images, prototypes, patches per crop


def logits(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_the_loss_equals_lightlys_dino_and_ibot_patch_losses_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    s_cls = [logits(B, K, seed=i).requires_grad_(True) for i in range(4)]  # 2 global, 2 local crops
    s_patch = [logits(B, N, K, seed=10 + i).requires_grad_(True) for i in range(2)]
    t_cls = [logits(B, K, seed=20 + i) for i in range(2)]
    t_patch = [logits(B, N, K, seed=30 + i) for i in range(2)]
    masks = [torch.rand(B, N, generator=g) < 0.4 for _ in range(2)]
    masks[0][1] = False  # an image with no masked patch adds 0, as in both references
    center, center2 = logits(1, K, seed=40) * 0.1, logits(1, 1, K, seed=41) * 0.1
    loss, cls, patch = ibot_loss(s_cls, s_patch, t_cls, t_patch, masks, (center, center2), 0.1, (0.05, 0.06))
    loss.backward()

    ref_s_cls = [s.detach().clone().requires_grad_(True) for s in s_cls]
    ref_s_patch = [s.detach().clone().requires_grad_(True) for s in s_patch]
    dino = DINOLoss(K, student_temp=0.1)
    dino.center.copy_(center.view(1, 1, K))
    ref_cls = dino(t_cls, ref_s_cls, teacher_temp=0.05)
    ibot = IBOTPatchLoss(K, student_temp=0.1)
    ibot.center.center.copy_(center2.view(1, K))
    ref_patch = 0.0
    for t, s, m in zip(t_patch, ref_s_patch, masks, strict=True):
        ibot.center.center.copy_(center2.view(1, K))  # each call updates it: both crops read the same
        ref_patch = ref_patch + ibot(t[m], s[m], m.view(B, 3, 3), teacher_temp=0.06) / 2
    (ref_cls + ref_patch).backward()

    assert float(cls.detach()) == pytest.approx(float(ref_cls.detach()), rel=1e-6)
    assert float(patch.detach()) == pytest.approx(float(ref_patch.detach()), rel=1e-6)
    for ours, ref in zip(s_cls + s_patch, ref_s_cls + ref_s_patch, strict=True):
        assert torch.allclose(ours.grad, ref.grad, atol=1e-7)
    assert s_patch[0].grad[1].abs().max() == 0  # unmasked image: no patch gradient
    assert all(p.grad.abs().sum() > 0 for p in s_patch)


def reference_block_mask(h: int, w: int, ratio: float, aspect: tuple[float, float], rng: random.Random):
    """bytedance/ibot loader.py ImageFolderMask.__getitem__, pred_shape 'block', as written there (numpy
    bool mask, cell-by-cell fill), `random` replaced by `rng`."""
    log_aspect_ratio = tuple(math.log(x) for x in aspect)
    high = ratio * h * w
    mask = np.zeros((h, w), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for _attempt in range(10):
            low = (min(h, w) // 3) ** 2
            target_area = rng.uniform(low, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*log_aspect_ratio))
            bh = int(round(math.sqrt(target_area * aspect_ratio)))
            bw = int(round(math.sqrt(target_area / aspect_ratio)))
            if bw < w and bh < h:
                top = rng.randint(0, h - bh)
                left = rng.randint(0, w - bw)
                num_masked = mask[top : top + bh, left : left + bw].sum()
                if 0 < bh * bw - num_masked <= max_mask_patches:
                    for i in range(top, top + bh):
                        for j in range(left, left + bw):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask


@pytest.mark.parametrize("grid,ratio", [(14, 0.3), (14, 0.5), (4, 0.3), (7, 0.1)])
def test_block_masks_equal_the_reference_loader_on_the_same_draws(grid, ratio):
    for seed in range(20):
        ours = block_mask(grid, grid, ratio, (0.3, 1 / 0.3), random.Random(seed))
        ref = reference_block_mask(grid, grid, ratio, (0.3, 1 / 0.3), random.Random(seed))
        assert np.array_equal(ours.numpy(), ref)


def test_the_published_ratios_leave_half_the_crops_whole_and_mask_the_rest_by_a_tenth_to_a_half():
    torch.manual_seed(0)
    masking = Masking(14, 2, (0.0, 0.3), (0.0, 0.2), (0.3, 1 / 0.3), "block")
    shares = torch.cat([masking().float().mean(dim=1) for _ in range(300)])
    assert 0.42 < float((shares == 0).float().mean()) < 0.58
    masked = shares[shares > 0]
    # BEiT's loop may stop short of the area (ten failed attempts) or overshoot it by one block
    assert float(masked.min()) >= 0.05 and float(masked.max()) <= 0.7
    assert 0.25 < float(masked.mean()) < 0.4
    rand = Masking(4, 1, (0.5,), (0.0,), (0.3, 1 / 0.3), "rand")()
    assert rand.shape == (1, 16) and int(rand.sum()) == 8


def test_the_masked_vit_read_out_with_no_patch_masked_is_the_plain_one_and_masks_replace_embeddings():
    run = run_config(*TINY, *small("ibot"))
    model, _ = build(run)
    vit = model.backbone.eval()
    x = torch.randn(2, 3, 16, 16)
    token = torch.randn(1, 96)
    none = torch.zeros(2, 16, dtype=torch.bool)
    assert torch.allclose(vit(x, readout="tokens", mask=none, mask_token=token), vit(x, readout="tokens"))
    some = none.clone()
    some[0, 3] = True
    masked = vit(x, readout="tokens", mask=some, mask_token=token)
    assert torch.allclose(masked[1], vit(x, readout="tokens")[1], atol=1e-6)  # the other image unchanged
    assert not torch.allclose(masked[0], vit(x, readout="tokens")[0])
    with pytest.raises(ValueError, match="readout='tokens'"):
        vit(x, mask=some, mask_token=token)


# ---- the whole step against main_ibot.py, written out ----


class RefHead(nn.Module):
    """models/head.py iBOTHead with shared_head: Linear-GELU-Linear-GELU-Linear, L2 norm, weight-normed
    prototypes (nn.utils.weight_norm, weight_g filled with 1 and frozen: norm_last_layer)."""

    def __init__(self, ours) -> None:
        super().__init__()
        linears = [m for m in ours.mlp if isinstance(m, nn.Linear)]
        self.mlp = nn.Sequential(linears[0], nn.GELU(), linears[1], nn.GELU(), linears[2])
        last = nn.Linear(ours.last.weight.shape[1], ours.last.weight.shape[0], bias=False)
        self.last_layer = nn.utils.weight_norm(last)
        with torch.no_grad():
            self.last_layer.weight_v.copy_(ours.last.weight)
            self.last_layer.weight_g.fill_(1)
        self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        if x.dim() == 2:
            return self.last_layer(x)
        return self.last_layer(x[:, 0]), self.last_layer(x[:, 1:])


class RefStudent(nn.Module):
    """utils.MultiCropWrapper(vit, iBOTHead): vision_transformer.py prepare_tokens with mask_model."""

    def __init__(self, vit, head, masked_embed) -> None:
        super().__init__()
        self.vit, self.head = vit, head
        self.masked_embed = masked_embed

    def tokens(self, x, mask=None):
        vit = self.vit
        x = vit.patch_embed.proj(x)  # (B, D, h, w)
        if mask is not None:
            x.permute(0, 2, 3, 1)[mask, :] = self.masked_embed.to(x.dtype)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + vit.pos_embed
        return vit.norm(vit.blocks(x))

    def forward(self, globals_, masks, locals_):
        cls, patch = self.head(self.tokens(globals_, masks))
        # the local crops through timm's own resampled position embedding (the harness's, as for DINO)
        return (cls, patch), self.head(self.vit.forward_features(locals_)[:, 0])


class RefIBOTLoss(nn.Module):
    """main_ibot.py iBOTLoss, one process (dist.all_reduce of one rank is the identity)."""

    def __init__(self, out_dim, patch_out_dim, ngcrops, nlcrops, student_temp=0.1) -> None:
        super().__init__()
        self.student_temp, self.ngcrops, self.ncrops = student_temp, ngcrops, ngcrops + nlcrops
        self.center_momentum = self.center_momentum2 = 0.9
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))

    def forward(self, student_output, teacher_output, student_local_cls, student_mask, temp, temp2):
        student_cls, student_patch = student_output
        teacher_cls, teacher_patch = teacher_output
        student_cls = torch.cat([student_cls, student_local_cls])
        student_cls_c = (student_cls / self.student_temp).chunk(self.ncrops)
        student_patch_c = (student_patch / self.student_temp).chunk(self.ngcrops)
        teacher_cls_c = F.softmax((teacher_cls - self.center) / temp, dim=-1).detach().chunk(self.ngcrops)
        teacher_patch_c = (
            F.softmax((teacher_patch - self.center2) / temp2, dim=-1).detach().chunk(self.ngcrops)
        )
        total_loss1, n_loss_terms1, total_loss2, n_loss_terms2 = 0, 0, 0, 0
        for q in range(len(teacher_cls_c)):
            for v in range(len(student_cls_c)):
                if v == q:
                    loss2 = torch.sum(-teacher_patch_c[q] * F.log_softmax(student_patch_c[v], dim=-1), dim=-1)
                    mask = student_mask[v].flatten(-2, -1)
                    loss2 = torch.sum(loss2 * mask.float(), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
                    total_loss2 += loss2.mean()
                    n_loss_terms2 += 1
                else:
                    loss1 = torch.sum(-teacher_cls_c[q] * F.log_softmax(student_cls_c[v], dim=-1), dim=-1)
                    total_loss1 += loss1.mean()
                    n_loss_terms1 += 1
        loss = total_loss1 / n_loss_terms1 + total_loss2 / n_loss_terms2
        with torch.no_grad():
            cls_center = torch.sum(teacher_cls, dim=0, keepdim=True) / len(teacher_cls)
            self.center = self.center * self.center_momentum + cls_center * (1 - self.center_momentum)
            patch_center = torch.sum(teacher_patch.mean(1), dim=0, keepdim=True) / len(teacher_patch)
            self.center2 = self.center2 * self.center_momentum2 + patch_center * (1 - self.center_momentum2)
        return loss


def param_groups(named):
    """utils.get_params_groups: biases and 1-d parameters undecayed."""
    decayed, plain = [], []
    for name, p in named:
        if p.requires_grad:
            (plain if name.endswith(".bias") or p.dim() == 1 else decayed).append(p)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_three_steps_equal_main_ibot_written_out_losses_weights_teacher_and_centres():
    import copy

    torch.manual_seed(0)
    run = run_config(*TINY, *small("ibot"), "method.local_crops=2", "train.drop_path=0")
    model, _ = build(run)
    model.train()
    cfg = model.cfg
    with torch.no_grad():
        model.mask_token.normal_(std=0.5)  # the reference starts it at 0: any common start will do
    ref_vit = copy.deepcopy(model.backbone.model)
    ref_head = RefHead(copy.deepcopy(model.head))
    student = RefStudent(ref_vit, ref_head, nn.Parameter(model.mask_token.detach().clone()))
    # main_ibot.py: the teacher loads the student's weights (weight_norm modules do not deepcopy)
    teacher = RefStudent(copy.deepcopy(ref_vit), RefHead(copy.deepcopy(model.head)), None)
    start = model.head.last.weight.detach().clone()
    for p in teacher.parameters():
        p.requires_grad = False
    # main_ibot.py: the EMA runs over the parameters both networks name (not the student's masked_embed)
    common = [(n, p) for n, p in student.named_parameters() if n != "masked_embed"]
    loss_fn = RefIBOTLoss(cfg.out_dim, cfg.out_dim, 2, 2)

    # One optimizer, torch's, on both sides (not under test): SGD, since AdamW's normalisation turns the
    # float rounding of near-zero gradients (the weight-normed layer's radial part) into lr-sized steps.
    opt_ref = torch.optim.SGD(
        param_groups(student.named_parameters()), lr=1e-2, momentum=0.9, weight_decay=0.04
    )
    ours = [(n, p) for n, p in model.named_parameters() if not n.startswith("teacher.")]
    opt = torch.optim.SGD(param_groups(ours), lr=1e-2, momentum=0.9, weight_decay=0.04)

    torch.manual_seed(1)
    masking = model.masking()
    fractions = [0.0, 0.03, 0.5]  # frozen last layer, warming temperatures, then both final
    for step_i, fraction in enumerate(fractions):
        batch = {
            "global": torch.randn(4, 2, 3, 16, 16),
            "local": torch.randn(4, 2, 3, 8, 8),
            "masks": torch.stack([masking() for _ in range(4)]),
        }
        batch["masks"][0] = True if step_i == 1 else batch["masks"][0]  # every patch of one image masked
        out = hook_step(model, opt, batch, Clock.of(fraction))

        # the reference, main_ibot.py train_one_epoch
        warm = cfg.warmup_teacher_temp_fraction
        temp = cfg.teacher_temp if fraction >= warm else 0.04 + (cfg.teacher_temp - 0.04) * fraction / warm
        temp2 = cfg.teacher_patch_temp if fraction >= warm else 0.04 + (0.07 - 0.04) * fraction / warm
        g = batch["global"].transpose(0, 1).flatten(0, 1)
        m = batch["masks"].transpose(0, 1).flatten(0, 1).view(-1, 4, 4)
        with torch.no_grad():
            t_out = teacher.head(teacher.tokens(g))
        s_out, s_local = student(g, m, batch["local"].transpose(0, 1).flatten(0, 1))
        ref_loss = loss_fn(s_out, t_out, s_local, list(m.chunk(2)), temp, temp2)
        opt_ref.zero_grad()
        ref_loss.backward()
        if fraction < cfg.freeze_last_layer_fraction:  # utils.cancel_gradients_last_layer
            for n, p in student.named_parameters():
                if "last_layer" in n:
                    p.grad = None
        opt_ref.step()
        mom = 1 - (1 - cfg.base_momentum) * (math.cos(math.pi * fraction) + 1) / 2  # momentum_schedule
        with torch.no_grad():
            for (_, q), k in zip(common, list(teacher.parameters()), strict=True):
                k.data.mul_(mom).add_((1 - mom) * q.detach().data)

        assert float(out.loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6), step_i
    assert torch.allclose(model.center, loss_fn.center, atol=1e-6)
    assert torch.allclose(model.center2, loss_fn.center2, atol=1e-6)
    assert torch.allclose(model.mask_token, student.masked_embed, atol=1e-6)
    pairs = [
        (model.backbone.model.blocks[0].attn.qkv.weight, ref_vit.blocks[0].attn.qkv.weight),
        (model.backbone.model.cls_token, ref_vit.cls_token),
        (model.head.mlp[0].weight, ref_head.mlp[0].weight),
        (model.head.last.weight, ref_head.last_layer.weight_v),
        (
            model.teacher.parts["backbone"].model.blocks[-1].mlp.fc2.weight,
            teacher.vit.blocks[-1].mlp.fc2.weight,
        ),
        (model.teacher.parts["head"].last.weight, teacher.head.last_layer.weight_v),
    ]
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())
    assert not torch.allclose(model.head.last.weight, start)  # frozen on the first step only


# ---- FLOPs ----


def ibot_head(m, tokens: int, patch_out: int) -> int:
    """The head on `tokens` tokens: the MLP on each, the [CLS] prototypes on one, the patch ones on
    the rest."""
    mlp = linear(96, m.hidden_dim, m.hidden_dim, m.bottleneck_dim)
    return (
        tokens * mlp
        + linear(m.bottleneck_dim, m.out_dim)
        + (tokens - 1) * linear(m.bottleneck_dim, patch_out)
    )


@pytest.mark.parametrize("extra", [[], ["method.shared_head=false", "method.patch_out_dim=512"]])
def test_ibot_counts_masked_globals_with_every_patch_projected_class_tokens_of_locals_and_the_teacher(extra):
    got, m = step(*small("ibot"), "method.local_crops=3", "method.local_crop_size=8", *extra), sizes("ibot")
    patch_out = 512 if extra else m.out_dim
    tokens = (SIZE // NANO.patch) ** 2 + 1
    local_head = linear(96, m.hidden_dim, m.hidden_dim, m.bottleneck_dim) + linear(
        m.bottleneck_dim, m.out_dim
    )
    student = 2 * (NANO.trained(16) + 3 * ibot_head(m, tokens, patch_out)) + 3 * (
        NANO.trained(8) + 3 * local_head
    )
    teacher = 2 * (NANO.forward(16) + ibot_head(m, tokens, patch_out))
    assert got["flops_per_step"] == BATCH * (student + teacher)
    assert got["breakdown"]["forward"]["teacher"] == BATCH * teacher
    assert set(got["breakdown"]["forward"]) == {"total", "backbone", "head", "teacher"}


# ---- configs refused ----


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backbone=resnet18"], "needs a ViT backbone"),
        (["method.patch_out_dim=512"], "must equal method.out_dim"),
        (["method.pred_ratio=[0.3]"], "must be non-empty lists of one length"),
        (["method.pred_ratio=[0.1]", "method.pred_ratio_var=[0.2]"], "var <= ratio"),
        (["method.pred_shape=grid"], "method.pred_shape must be one of block, rand"),
        (["method.teacher_patch_temp=0"], "method.teacher_patch_temp must be > 0"),
        (["method.lambda1=0", "method.lambda2=0"], "not both 0"),
        (["method.global_crops=0"], "method.global_crops must be >= 1"),
    ],
)
def test_bad_ibot_configs_are_refused_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_config(*TINY, *small("ibot"), *overrides)
