"""DINOv2 (methods/zoo/dinov2.py): KoLeo against lightly's KoLeoLoss, Sinkhorn-Knopp against dinov2's
formula written out, the [CLS] and patch losses against lightly's DINOLoss and IBOTPatchLoss, the masks
against dinov2's collate, its whole step against ssl_meta_arch.py written out for three steps, its FLOPs
against a closed form, and the configs it refuses."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
from torch import nn

from budgetssl.engine.schedule import Clock
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.dinov2 import (
    MaskingGenerator,
    batch_masks,
    cross_entropy_pairs,
    koleo_loss,
    masked_patch_loss,
    sinkhorn_knopp,
)
from budgetssl.stages.pretrain import build
from conftest import TINY, hook_step, run_config, small
from test_ibot import RefHead, RefStudent, param_groups
from test_method_flops import BATCH, NANO, SIZE, linear, sizes, step


def test_koleo_equals_lightlys_koleo_loss_in_value_and_gradient():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    ours, ref = koleo_loss(x), KoLeoLoss()(ref_x)
    ours.backward()
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-12)


def reference_sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=3):
    """dinov2/loss/dino_clstoken_loss.py DINOLoss.sinkhorn_knopp_teacher, one process, as written there."""
    teacher_output = teacher_output.float()
    world_size = 1
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1] * world_size
    K = Q.shape[0]
    sum_Q = torch.sum(Q)
    Q /= sum_Q
    for _it in range(n_iterations):
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        Q /= sum_of_rows
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_sinkhorn_knopp_equals_dinov2s_formula_and_spreads_the_batch_over_the_prototypes():
    logits = torch.randn(12, 7, generator=torch.Generator().manual_seed(1)) * 0.1
    ours = sinkhorn_knopp(logits, 0.05, 3)
    assert torch.allclose(ours, reference_sinkhorn_knopp(logits, 0.05), atol=1e-6)
    assert torch.allclose(ours.sum(dim=1), torch.ones(12), atol=1e-5)  # each row an assignment

    def spread(q):  # how unequally the prototypes share the batch
        return float(q.sum(dim=0).std() / q.sum(dim=0).mean())

    assert spread(ours) < spread(torch.softmax(logits / 0.05, dim=-1)) / 3
    # the patch loss's count: the masked patches of every rank (one here)
    assert torch.allclose(sinkhorn_knopp(logits, 0.05, 3, torch.tensor(12.0)), ours, atol=1e-6)


def test_the_dino_and_patch_terms_equal_lightlys_losses_in_value_and_gradient():
    g = torch.Generator().manual_seed(2)
    b, k, n = 4, 10, 9
    student = [torch.randn(b, k, generator=g).requires_grad_(True) for _ in range(4)]
    teacher = [torch.randn(b, k, generator=g) for _ in range(2)]
    center = torch.randn(1, k, generator=g) * 0.1
    targets = [torch.softmax((t - center) / 0.05, dim=-1) for t in teacher]
    ours = cross_entropy_pairs(student, targets, 0.1)
    ref_student = [s.detach().clone().requires_grad_(True) for s in student]
    dino = DINOLoss(k, student_temp=0.1)
    dino.center.copy_(center.view(1, 1, k))
    ref = dino(teacher, ref_student, teacher_temp=0.05)
    (ours + 0).backward()
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert all(torch.allclose(a.grad, r.grad, atol=1e-12) for a, r in zip(student, ref_student, strict=True))

    masks = torch.rand(2 * b, n, generator=g) < 0.4
    masks[0] = False
    t_patch = torch.randn(int(masks.sum()), k, generator=g)
    s_patch = torch.randn(int(masks.sum()), k, generator=g).requires_grad_(True)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    center2 = torch.randn(1, k, generator=g) * 0.1
    ours = masked_patch_loss(s_patch, torch.softmax((t_patch - center2) / 0.05, dim=-1), weights, 2 * b, 0.1)
    ibot = IBOTPatchLoss(k, student_temp=0.1)
    ibot.center.center.copy_(center2)
    ref_s = s_patch.detach().clone().requires_grad_(True)
    ref = ibot(t_patch, ref_s, masks.view(2 * b, 3, 3), teacher_temp=0.05)
    ours.backward()
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(s_patch.grad, ref_s.grad, atol=1e-12)


def reference_collate_masks(B, N, mask_ratio_tuple, mask_probability, mask_generator, rng):
    """dinov2/data/collate.py collate_data_and_cast, its masks (`random` replaced by `rng`)."""
    n_samples_masked = int(B * mask_probability)
    probs = torch.linspace(*mask_ratio_tuple, n_samples_masked + 1)
    upperbound = 0
    masks_list = []
    for i in range(0, n_samples_masked):
        prob_min = probs[i]
        prob_max = probs[i + 1]
        masks_list.append(
            torch.BoolTensor(mask_generator(int(N * rng.uniform(float(prob_min), float(prob_max))), rng))
        )
        upperbound += int(N * prob_max)
    for _i in range(n_samples_masked, B):
        masks_list.append(torch.BoolTensor(mask_generator(0, rng)))
    rng.shuffle(masks_list)
    return torch.stack(masks_list).flatten(1), upperbound


def test_batch_masks_follow_dinov2s_collate_half_the_crops_masked_within_the_upperbound():
    generator = MaskingGenerator(14, 4, 0.5 * 196, 0.3)
    ours, upper = batch_masks(32, generator, (0.1, 0.5), 0.5, random.Random(3))
    ref, ref_upper = reference_collate_masks(32, 196, (0.1, 0.5), 0.5, generator, random.Random(3))
    assert (ours == ref.numpy()).all() and upper == ref_upper
    assert int((ours.sum(-1) > 0).sum()) == 16 and int(ours.sum()) <= upper


# ---- the whole step against ssl_meta_arch.py, written out ----


def ref_sinkhorn_knopp(teacher_output, teacher_temp, n_rows=None, n_iterations=3):  # noqa: ANN001, ANN201
    """The Sinkhorn-Knopp of dinov2/loss/dino_clstoken_loss.py and ibot_patch_loss.py, one process: the two
    official copies differ only in the row count B (the batch, or n_masked_patches_tensor: `n_rows`)."""
    teacher_output = teacher_output.to(torch.promote_types(teacher_output.dtype, torch.float32))
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1] if n_rows is None else n_rows
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _it in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


class RefDINOLoss(nn.Module):
    """dinov2/loss/dino_clstoken_loss.py DINOLoss, one process: the centre's update deferred to the next
    softmax_center_teacher (apply_center_update), as written there."""

    def __init__(self, out_dim, student_temp=0.1, center_momentum=0.9) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.updated, self.len_teacher_output, self.async_batch_center = True, None, None

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output, teacher_temp):
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output, teacher_temp, n_iterations=3):
        return ref_sinkhorn_knopp(teacher_output, teacher_temp, None, n_iterations)

    def forward(self, student_output_list, teacher_out_softmaxed_centered_list):
        total_loss = 0
        for s in student_output_list:
            lsm = F.log_softmax(s / self.student_temp, dim=-1)
            for t in teacher_out_softmaxed_centered_list:
                total_loss -= torch.sum(t * lsm, dim=-1).mean()
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        self.updated = False
        self.len_teacher_output = len(teacher_output)
        self.async_batch_center = torch.sum(teacher_output, dim=0, keepdim=True)

    @torch.no_grad()
    def apply_center_update(self):
        if self.updated is False:
            _t = self.async_batch_center / self.len_teacher_output
            self.center = self.center * self.center_momentum + _t * (1 - self.center_momentum)
            self.updated = True


class RefIBOTPatchLoss(RefDINOLoss):
    """dinov2/loss/ibot_patch_loss.py iBOTPatchLoss, one process (its centre (1, 1, K), its centre update
    over the patches' mean, its Sinkhorn-Knopp over n_masked_patches_tensor rows)."""

    def __init__(self, patch_out_dim, student_temp=0.1, center_momentum=0.9) -> None:
        super().__init__(patch_out_dim, student_temp, center_momentum)
        self.center = torch.zeros(1, 1, patch_out_dim)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output, teacher_temp, n_masked_patches_tensor, n_iterations=3):
        return ref_sinkhorn_knopp(teacher_output, teacher_temp, n_masked_patches_tensor, n_iterations)

    def forward_masked(self, s, t, student_masks_flat, n_masked_patches=None, masks_weight=None):
        loss = torch.sum(t * F.log_softmax(s / self.student_temp, dim=-1), dim=-1)
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        return -(loss * masks_weight).sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens):
        self.updated = False
        self.len_teacher_patch_tokens = self.len_teacher_output = len(teacher_patch_tokens)
        self.async_batch_center = torch.sum(teacher_patch_tokens.mean(1), dim=0, keepdim=True)


def reference_koleo(student_output, eps=1e-8):
    """dinov2/loss/koleo_loss.py KoLeoLoss.forward."""
    student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(student_output, student_output.t())
    n = student_output.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, I = torch.max(dots, dim=1)  # noqa: E741
    distances = nn.PairwiseDistance(2, eps=eps)(student_output, student_output[I])
    return -torch.log(distances + eps).mean()


def reference_dinov2_tokens(vit, x, masks, mask_token):
    """dinov2/models/vision_transformer.py prepare_tokens_with_masks then the blocks and the norm (the
    harness's timm blocks: the reference's LayerScale is not reproduced, configs/method/dinov2.yaml)."""
    x = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), mask_token.to(x.dtype).unsqueeze(0), x)
    x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + vit.pos_embed
    return vit.norm(vit.blocks(x))


def reference_forward_backward(student, teacher, losses, batch, masks, upperbound, teacher_temp, cfg):
    """ssl_meta_arch.py SSLMetaArch.forward_backward, the shared head (ibot.separate_head false), one
    process; the masks' tensors as dinov2/data/collate.py makes them. Returns loss_dict (as there, but the
    KoLeo term unweighted and not halved, as the method logs it) and the loss it backpropagates."""
    dino_loss, ibot_patch_loss = losses
    n_global_crops, n_local_crops = 2, cfg.local_crops
    global_crops = batch["global"].transpose(0, 1).flatten(0, 1)
    local_crops = batch["local"].transpose(0, 1).flatten(0, 1)
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    mask_indices_list = masks.flatten().nonzero().flatten()
    n_masked_patches_tensor = torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long)
    n_masked_patches = mask_indices_list.shape[0]
    n_local_crops_loss_terms = max(n_local_crops * n_global_crops, 1)
    n_global_crops_loss_terms = (n_global_crops - 1) * n_global_crops
    ibot_loss_scale = 1.0 / n_global_crops

    with torch.no_grad():  # get_teacher_output
        out = reference_dinov2_tokens(teacher.vit, global_crops, None, None)
        teacher_cls_tokens = out[:, 0].chunk(n_global_crops)
        teacher_cls_tokens = torch.cat((teacher_cls_tokens[1], teacher_cls_tokens[0]))
        ibot_teacher_patch_tokens = out[:, 1:]
        _dim = ibot_teacher_patch_tokens.shape[-1]
        n_cls_tokens = teacher_cls_tokens.shape[0]
        buffer_tensor_teacher = ibot_teacher_patch_tokens.new_zeros(upperbound + n_cls_tokens, _dim)
        buffer_tensor_teacher[:n_cls_tokens].copy_(teacher_cls_tokens)
        torch.index_select(
            ibot_teacher_patch_tokens.flatten(0, 1),
            dim=0,
            index=mask_indices_list,
            out=buffer_tensor_teacher[n_cls_tokens : n_cls_tokens + n_masked_patches],
        )
        tokens_after_head = teacher.head(buffer_tensor_teacher)
        teacher_cls_tokens_after_head = tokens_after_head[:n_cls_tokens]
        masked_teacher_patch_tokens_after_head = tokens_after_head[
            n_cls_tokens : n_cls_tokens + n_masked_patches
        ]
        if cfg.centering == "centering":
            teacher_dino = dino_loss.softmax_center_teacher(teacher_cls_tokens_after_head, teacher_temp)
            teacher_dino = teacher_dino.view(n_global_crops, -1, *teacher_cls_tokens_after_head.shape[1:])
            dino_loss.update_center(teacher_cls_tokens_after_head)
            masked_teacher_patch_tokens_after_head = masked_teacher_patch_tokens_after_head.unsqueeze(0)
            teacher_ibot = ibot_patch_loss.softmax_center_teacher(
                masked_teacher_patch_tokens_after_head[:, :n_masked_patches], teacher_temp
            ).squeeze(0)
            ibot_patch_loss.update_center(masked_teacher_patch_tokens_after_head[:n_masked_patches])
        else:
            teacher_dino = dino_loss.sinkhorn_knopp_teacher(teacher_cls_tokens_after_head, teacher_temp)
            teacher_dino = teacher_dino.view(n_global_crops, -1, *teacher_cls_tokens_after_head.shape[1:])
            teacher_ibot = ibot_patch_loss.sinkhorn_knopp_teacher(
                masked_teacher_patch_tokens_after_head, teacher_temp, n_masked_patches_tensor
            )

    student_global = reference_dinov2_tokens(student.vit, global_crops, masks, student.masked_embed)
    # the local crops through timm's own resampled position embedding (the harness's, as for DINO, iBOT)
    student_local_cls_tokens = student.vit.forward_features(local_crops)[:, 0]
    student_global_cls_tokens = student_global[:, 0]
    ibot_student_patch_tokens = student_global[:, 1:]
    buffer_tensor_patch_tokens = ibot_student_patch_tokens.new_zeros(upperbound, _dim)
    buffer_tensor_patch_tokens[:n_masked_patches].copy_(
        torch.index_select(ibot_student_patch_tokens.flatten(0, 1), dim=0, index=mask_indices_list)
    )
    # fmha.BlockDiagonalMask.from_tensor_list: the three concatenated through the head, then split
    inputs = [student_local_cls_tokens, student_global_cls_tokens, buffer_tensor_patch_tokens]
    outputs_list = list(student.head(torch.cat(inputs)).split([len(t) for t in inputs]))
    student_local_cls_tokens_after_head = outputs_list.pop(0)
    student_global_cls_tokens_after_head = outputs_list.pop(0)
    student_global_masked_patch_tokens_after_head = outputs_list.pop(0)[:n_masked_patches]

    terms = n_global_crops_loss_terms + n_local_crops_loss_terms
    dino_local_crops_loss = (
        dino_loss(student_local_cls_tokens_after_head.chunk(n_local_crops), teacher_dino) / terms
    )
    loss_scales = 2
    dino_global_crops_loss = (
        dino_loss([student_global_cls_tokens_after_head], [teacher_dino.flatten(0, 1)]) * loss_scales / terms
    )
    koleo = sum(reference_koleo(p) for p in student_global_cls_tokens.chunk(2))
    ibot_loss = (
        ibot_patch_loss.forward_masked(
            student_global_masked_patch_tokens_after_head,
            teacher_ibot,
            student_masks_flat=masks,
            n_masked_patches=n_masked_patches,
            masks_weight=masks_weight,
        )
        * loss_scales
        * ibot_loss_scale
    )
    loss = (
        cfg.dino_weight * (dino_local_crops_loss + dino_global_crops_loss)
        + cfg.koleo_weight * koleo
        + cfg.ibot_weight * ibot_loss
    )
    loss_dict = {"dino_loss": dino_local_crops_loss + dino_global_crops_loss, "ibot_loss": ibot_loss}
    return {**loss_dict, "koleo_loss": koleo}, loss


@pytest.fixture
def float64():
    """float64 the default dtype, so the reference's tensors made without one (collate.py's masks_weight,
    1 / a count) are float64 too."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
def test_three_steps_equal_dinov2s_forward_backward_written_out_losses_weights_teacher_and_centres(
    centering, float64
):
    """Three steps of the method against ssl_meta_arch.py forward_backward, update_teacher and train.py's
    schedules written out, on the same crops, masks (the method's draws, recorded and fed to the
    reference), initial weights and optimizer (torch's AdamW, not under test), in float64 (the default
    dtype too, so collate.py's masks_weight, 1 / a count, is float64): AdamW's normalisation turns float32
    rounding of near-zero gradients into steps of 1e-7 to 1e-6 (tests/test_ibot.py). The reference's
    teacher_output.float() (an upcast of half precision) is written, as the method has it, as a promotion
    to at least float32, so float64 stays float64 (in float32 the reference's order of the [CLS] rows, the
    crops swapped, rounds Sinkhorn-Knopp's sums otherwise: 3e-6 in the weights after a step). Measured
    worst differences over the 3 steps: losses (each term) 2e-15, student 8e-13, mask token 6e-17,
    teacher 1e-14, centres 3e-17; a dropped-gradient freeze (DINO's cancel_gradients_last_layer) leaves
    1.7e-3 on the last layer.
    The reference's frozen last layer: train.py's last_layer_lr 0 on its param group (AdamW still keeps
    the layer's moments, and the method keeps them: DINOv2.on_after_backward). The teacher temperature
    follows the harness's fraction of the warm-up (the reference's linspace over whole iterations)."""
    torch.manual_seed(0)
    run = run_config(
        *TINY,
        *small("dinov2"),
        "method.local_crops=2",
        "method.local_crop_size=8",
        "method.out_dim=64",
        "method.patch_out_dim=64",
        "method.hidden_dim=32",
        "method.bottleneck_dim=16",
        f"method.centering={centering}",
        "train.drop_path=0",
    )
    model, _ = build(run)
    model.double().train()
    cfg = model.cfg
    with torch.no_grad():
        model.mask_token.normal_(std=0.5)  # the reference starts it at 0: any common start will do
    ref_vit = copy.deepcopy(model.backbone.model)
    ref_head = RefHead(copy.deepcopy(model.head)).double()
    ref_head.last_layer.weight_g.requires_grad = True  # dino_head.py: the gain learnt (norm_last_layer false)
    student = RefStudent(ref_vit, ref_head, nn.Parameter(model.mask_token.detach().clone()))
    # prepare_for_distributed_training: the teacher loads the student's state
    teacher = RefStudent(copy.deepcopy(ref_vit), RefHead(copy.deepcopy(model.head)).double(), None)
    for p in teacher.parameters():
        p.requires_grad = False
    losses = (RefDINOLoss(cfg.out_dim).double(), RefIBOTPatchLoss(cfg.out_dim).double())
    losses[1].center = losses[1].center.double()

    # the reference's groups (dinov2/utils/param_groups.py): the last layer on its own, its lr scheduled
    named = list(student.named_parameters())
    last = [p for n, p in named if "last_layer" in n]
    groups = param_groups([(n, p) for n, p in named if "last_layer" not in n])
    opt_ref = torch.optim.AdamW([*groups, {"params": last}], lr=1e-3, weight_decay=0.04)
    ours = [(n, p) for n, p in model.named_parameters() if not n.startswith("teacher.")]
    opt = torch.optim.AdamW(param_groups(ours), lr=1e-3, weight_decay=0.04)

    drawn = []
    draw = model.draw_masks
    model.draw_masks = lambda crops: drawn.append(draw(crops)) or drawn[-1]

    torch.manual_seed(1)
    worst: dict[str, float] = {}

    def close(name, a, b, atol):
        worst[name] = max(worst.get(name, 0.0), float((a - b).abs().max()))
        assert torch.allclose(a, b, atol=atol), (name, step_i, a.shape, worst[name])

    for step_i, fraction in enumerate([0.0, 0.05, 0.5]):  # frozen last layer, warming temperature, final
        batch = {
            "global": torch.randn(4, 2, 3, 16, 16, dtype=torch.float64),
            "local": torch.randn(4, 2, 3, 8, 8, dtype=torch.float64),
        }
        out = hook_step(model, opt, batch, Clock.of(fraction))

        # the reference, train.py do_train's iteration
        warm = cfg.warmup_teacher_temp_fraction
        temp = cfg.teacher_temp if fraction >= warm else 0.04 + (cfg.teacher_temp - 0.04) * fraction / warm
        mom = 1 - (1 - cfg.base_momentum) * (math.cos(math.pi * fraction) + 1) / 2  # momentum_schedule
        opt_ref.param_groups[-1]["lr"] = 0.0 if fraction < cfg.freeze_last_layer_fraction else 1e-3
        masks, upperbound = drawn[-1]
        opt_ref.zero_grad(set_to_none=True)
        ref_dict, ref_loss = reference_forward_backward(
            student, teacher, losses, batch, torch.as_tensor(masks), upperbound, temp, cfg
        )
        ref_loss.backward()
        opt_ref.step()
        with torch.no_grad():  # update_teacher
            ref_s = list(ref_vit.parameters()) + list(ref_head.parameters())
            ref_t = list(teacher.vit.parameters()) + list(teacher.head.parameters())
            torch._foreach_mul_(ref_t, mom)
            torch._foreach_add_(ref_t, ref_s, alpha=1 - mom)

        assert int(masks.sum()) > 0, step_i
        close("loss", out.loss.detach(), ref_loss.detach(), 1e-12)
        for k, v in ref_dict.items():
            close(k, out.logs[k], v.detach(), 1e-12)
        if centering == "centering":
            for loss in losses:
                loss.apply_center_update()
            close("center", model.center, losses[0].center, 1e-14)
            close("center2", model.center2, losses[1].center, 1e-14)
        close("mask_token", model.mask_token, student.masked_embed, 1e-12)
        last_ours = [model.head.last.weight, model.head.last.gain]
        last_ref = [ref_head.last_layer.weight_v, ref_head.last_layer.weight_g]
        rest = [p for p in model.head.parameters() if all(p is not q for q in last_ours)]
        ours_all = [*model.backbone.model.parameters(), *rest, *last_ours]
        ref_all = [
            *ref_vit.parameters(),
            *(p for n, p in ref_head.named_parameters() if "last_layer" not in n),
        ]
        for p, q in zip(ours_all, ref_all + last_ref, strict=True):
            close("student", p, q, 1e-10)
        t_backbone, t_head = model.teacher.parts["backbone"].model, model.teacher.parts["head"]
        for p, q in zip(t_backbone.parameters(), teacher.vit.parameters(), strict=True):
            close("teacher", p, q, 1e-12)
        close("teacher", t_head.last.weight, teacher.head.last_layer.weight_v, 1e-12)
        close("teacher", t_head.last.gain, teacher.head.last_layer.weight_g, 1e-12)


def test_dinov2_counts_class_tokens_and_the_masked_upperbound_through_the_heads_and_the_teacher():
    got, m = step(*small("dinov2"), "method.local_crops=3", "method.local_crop_size=8"), sizes("dinov2")
    crops, patches = 2 * BATCH, (SIZE // NANO.patch) ** 2
    _, upper = batch_masks(crops, MaskingGenerator(4, 4, 8, 0.3), (0.1, 0.5), 0.5, random.Random(0))
    head = linear(96, m.hidden_dim, m.hidden_dim, m.bottleneck_dim) + linear(m.bottleneck_dim, m.out_dim)
    koleo = 2 * 2 * BATCH * BATCH * 96  # x x^T per global crop (under no_grad: forward only)
    student = crops * NANO.trained(16) + 3 * BATCH * NANO.trained(8) + 3 * head * (crops + 3 * BATCH + upper)
    teacher = crops * NANO.forward(16) + head * (crops + upper)
    assert patches == 16 and upper == sum(int(16 * (0.1 + 0.4 * (i + 1) / 4)) for i in range(4))
    assert got["flops_per_step"] == student + teacher + koleo
    assert got["breakdown"]["forward"]["teacher"] == teacher


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backbone=resnet18"], "needs a ViT backbone"),
        (["method.global_crops=3"], "DINOv2 takes 2 global crops"),
        (["method.mask_ratio=[0.5,0.1]"], "method.mask_ratio must be"),
        (["method.centering=mean"], "method.centering must be one of sinkhorn_knopp, centering"),
        (["method.koleo_weight=-1"], "must be >= 0"),
    ],
)
def test_bad_dinov2_configs_are_refused_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config(*TINY, *small("dinov2"), *overrides)
