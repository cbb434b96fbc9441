"""DINOv2 (methods/zoo/dinov2.py): KoLeo against lightly's KoLeoLoss, Sinkhorn-Knopp against dinov2's
formula written out, the [CLS] and patch losses against lightly's DINOLoss and IBOTPatchLoss, the masks
against dinov2's collate, its FLOPs against a closed form, and the configs it refuses."""

from __future__ import annotations

import random

import pytest
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss

from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.dinov2 import (
    MaskingGenerator,
    batch_masks,
    cross_entropy_pairs,
    koleo_loss,
    masked_patch_loss,
    sinkhorn_knopp,
)
from conftest import TINY, run_config, small
from test_method_flops import BATCH, NANO, SIZE, linear, sizes, step


def test_koleo_equals_lightlys_koleo_loss_in_value_and_gradient():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    ours, ref = koleo_loss(x), KoLeoLoss()(ref_x)
    ours.backward()
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-7)


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
    assert all(torch.allclose(a.grad, r.grad, atol=1e-7) for a, r in zip(student, ref_student, strict=True))

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
    assert torch.allclose(s_patch.grad, ref_s.grad, atol=1e-7)


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
