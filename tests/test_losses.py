"""Each method's loss against a direct computation on small hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from budgetssl.methods.zoo.byol import byol_loss, regression_loss
from budgetssl.methods.zoo.clip import clip_loss
from budgetssl.methods.zoo.dino import dino_loss
from budgetssl.methods.zoo.mae import patchify, random_masking, reconstruction_loss
from budgetssl.methods.zoo.simclr import nt_xent


def orthonormal(n: int, d: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(n * d)))[0].T


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR paper's l(i, j) written out term by term, averaged over all 2N anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_nt_xent_equals_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(nt_xent_reference(z1, z2, 0.5), rel=1e-5)


def test_nt_xent_aligned_pairs_give_the_minimum_and_permuted_pairs_raise_it():
    z = orthonormal(6, 16)
    aligned = float(nt_xent(z, z.clone(), 0.1))
    # Aligned orthogonal pairs: the positive scores e^(1/t), each of the 2N-2 negatives e^0.
    assert aligned == pytest.approx(math.log1p(10 * math.exp(-10)), abs=1e-6)
    permuted = float(nt_xent(z, z[torch.tensor([1, 2, 3, 4, 5, 0])], 0.1))
    assert permuted > aligned + 5


def test_nt_xent_is_symmetric_in_its_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert float(nt_xent(z1, z2, 0.2)) == pytest.approx(float(nt_xent(z2, z1, 0.2)), rel=1e-6)


def test_byol_loss_is_normalised_regression_and_stops_target_gradients():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[3.0, 0.0], [1.0, 0.0]], requires_grad=True)
    # ||p/|p| - z/|z|||^2 = 2 - 2cos: 0 for the first pair (aligned), 2 for the second (orthogonal).
    assert float(regression_loss(p, z).detach()) == pytest.approx(1.0)
    regression_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    p1, p2, z1, z2 = (torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(4))
    assert float(byol_loss(p1, p2, z1, z2)) == pytest.approx(float(byol_loss(p2, p1, z2, z1)), rel=1e-6)
    assert float(byol_loss(z2, z1, z1, z2)) == pytest.approx(0.0, abs=1e-6)  # perfect predictions


def dino_reference(student, teacher, center, ts, tt) -> float:
    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        q = torch.softmax((t - center) / tt, dim=-1)
        for j, s in enumerate(student):
            if i == j:
                continue
            log_p = torch.log_softmax(s / ts, dim=-1)
            total += float(sum(-(q[b] * log_p[b]).sum() for b in range(q.shape[0])) / q.shape[0])
            terms += 1
    return total / terms


def test_dino_loss_equals_a_direct_computation_over_pairs_of_different_crops():
    g = torch.Generator().manual_seed(2)
    student = [torch.randn(3, 7, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    teacher = [torch.randn(3, 7, generator=g) for _ in range(2)]
    center = torch.randn(1, 7, generator=g)
    got = float(dino_loss(student, teacher, center, 0.1, 0.04))
    assert got == pytest.approx(dino_reference(student, teacher, center, 0.1, 0.04), rel=1e-5)


def test_dino_loss_is_lowest_when_the_student_matches_the_teacher_and_gives_it_no_gradient():
    g = torch.Generator().manual_seed(3)
    teacher = [torch.randn(4, 10, generator=g) * 5 for _ in range(2)]
    center = torch.zeros(1, 10)
    # Global crop i is compared with the other crop: matching means crop 0 predicts teacher 1 and back.
    matched = [(t / 0.04 * 0.1).clone().requires_grad_(True) for t in reversed(teacher)]
    shuffled = [m.detach()[torch.tensor([1, 2, 3, 0])] for m in matched]
    low = dino_loss(matched, [t.requires_grad_(True) for t in teacher], center, 0.1, 0.04)
    assert float(low.detach()) < float(dino_loss(shuffled, teacher, center, 0.1, 0.04))
    low.backward()
    assert all(t.grad is None for t in teacher) and all(m.grad is not None for m in matched)


def test_dino_centering_removes_a_constant_teacher_offset():
    g = torch.Generator().manual_seed(4)
    student = [torch.randn(2, 6, generator=g) for _ in range(2)]
    teacher = [torch.randn(2, 6, generator=g) for _ in range(2)]
    offset = torch.randn(1, 6, generator=g) * 10
    shifted = [t + offset for t in teacher]
    base = dino_loss(student, teacher, torch.zeros(1, 6), 0.1, 0.04)
    assert float(dino_loss(student, shifted, offset, 0.1, 0.04)) == pytest.approx(float(base), rel=1e-5)


def test_clip_loss_equals_a_direct_computation_and_is_symmetric():
    g = torch.Generator().manual_seed(5)
    img, txt = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    scale = torch.tensor(math.log(1 / 0.07))
    a, b = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    logits = a @ b.T / 0.07
    expected = 0.0
    for i in range(4):
        expected += -torch.log_softmax(logits[i], 0)[i] / 8  # image i among the texts
        expected += -torch.log_softmax(logits[:, i], 0)[i] / 8  # text i among the images
    assert float(clip_loss(img, txt, scale)) == pytest.approx(float(expected), rel=1e-5)
    assert float(clip_loss(txt, img, scale)) == pytest.approx(float(clip_loss(img, txt, scale)), rel=1e-6)
    z = orthonormal(4, 8)
    assert float(clip_loss(z, z, scale)) < float(clip_loss(z, z[torch.tensor([3, 0, 1, 2])], scale)) - 5


def test_clip_temperature_gets_a_gradient():
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(2.0, requires_grad=True)
    clip_loss(img, txt, scale).backward()
    assert scale.grad is not None and float(scale.grad) != 0


def test_patchify_orders_patches_like_the_vits_tokens():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(image, 2)  # a 2 x 3 grid of 2x2 patches
    assert patches.shape == (2, 6, 12)
    # Token 4 is row 1, column 1: pixels [2:4, 2:4]; values are laid out (py, px, channel).
    expected = image[0, :, 2:4, 2:4].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 4], expected)


def test_random_masking_keeps_the_stated_share_and_the_mask_matches_the_kept_indices():
    torch.manual_seed(0)
    keep, restore, mask = random_masking(3, 16, 0.75, torch.device("cpu"))
    assert keep.shape == (3, 4) and mask.shape == (3, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((3,), 12.0))
    for b in range(3):
        assert set(keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())
    assert len({tuple(k.tolist()) for k in keep}) > 1  # a fresh subset per image


def test_reconstruction_loss_counts_masked_patches_only():
    target = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(6))
    pred = target.clone()
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])
    pred[mask == 0] += 100.0  # errors on visible patches do not count
    assert float(reconstruction_loss(pred, target, mask, norm_pix=False)) == pytest.approx(0.0, abs=1e-6)
    pred[0, 0] += 1.0  # one masked patch off by 1 in every value: mean 1 over 4 masked patches
    assert float(reconstruction_loss(pred, target, mask, norm_pix=False)) == pytest.approx(0.25, rel=1e-5)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert float(reconstruction_loss(normed, target, mask, norm_pix=True)) == pytest.approx(0.0, abs=1e-6)
