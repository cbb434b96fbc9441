"""FLOPs booked for what each method really runs, checked against closed-form counts.

Conventions (fma = 2): a linear layer costs 2*in*out per token forward and twice that backward (input
and weight gradients); the patch embedding gets no input gradient (the image needs none), so a
trainable ViT costs 3 * forward - patch_embed per image; an EMA teacher costs its forward once;
contrastive losses add their similarity matmuls (2*n*m*d, trained, so times 3);
attention costs 4*n^2*d forward (two matmuls) and twice that backward; element-wise ops count 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from budgetssl.verify.flops import count
from conftest import run_config, small
from real_step import measure


@dataclass
class ViT:
    dim: int = 96
    depth: int = 4
    patch: int = 4
    prefix: int = 1

    def patch_embed(self, patches: int) -> int:
        return 2 * patches * 3 * self.patch**2 * self.dim

    def blocks(self, tokens: int, dim: int | None = None, depth: int | None = None) -> int:
        d, depth = dim or self.dim, depth or self.depth
        return depth * (24 * tokens * d * d + 4 * tokens * tokens * d)

    def forward(self, size: int) -> int:
        patches = (size // self.patch) ** 2
        return self.patch_embed(patches) + self.blocks(patches + self.prefix)

    def trained(self, size: int) -> int:
        """Forward + backward of the backbone on one image."""
        return 3 * self.forward(size) - self.patch_embed((size // self.patch) ** 2)


def linear(*dims: int) -> int:
    """Forward FLOPs of a chain of linear layers of widths dims[0] -> dims[1] -> ..."""
    return sum(2 * a * b for a, b in zip(dims, dims[1:], strict=False))


NANO, SIZE, BATCH = ViT(), 16, 4
TINY = ["dataset.image_size=16", "dataset.num_train=16", f"train.batch_size={BATCH}", "energy.track=false"]


def step(*overrides: str) -> dict:
    return measure(run_config(*TINY, *overrides))


def sizes(method: str):
    """The method's head sizes as the tests' CPU config (conftest.small) resolves them."""
    return run_config(*small(method)).method


@pytest.fixture(scope="module")
def supervised() -> dict:
    return step(*small("supervised"))


def test_the_closed_form_vit_count_matches_the_meter(supervised):
    assert supervised["flops_per_image"] == NANO.forward(SIZE)
    head = linear(96, 5)
    assert supervised["flops_per_step"] == BATCH * (NANO.trained(SIZE) + 3 * head)


def test_simclr_costs_two_supervised_steps_plus_its_projector(supervised):
    got, m = step(*small("simclr")), sizes("simclr")
    assert m.proj_layers == 3  # as the MoCo v3 ViT study's (its norms count 0)
    projector = linear(96, m.proj_hidden_dim, m.proj_hidden_dim, m.proj_dim)
    similarities = 3 * 2 * (2 * BATCH) * (2 * BATCH) * m.proj_dim  # NT-Xent: 2B anchors x 2B candidates
    assert got["flops_per_step"] == 2 * BATCH * (NANO.trained(SIZE) + 3 * projector) + similarities
    assert got["flops_per_step"] / supervised["flops_per_step"] == pytest.approx(2.0, rel=0.05)
    assert set(got["breakdown"]["forward"]) == {"total", "backbone", "projector"}


def test_byol_adds_the_teachers_forward_not_a_third_trained_pass(supervised):
    got, m = step(*small("byol")), sizes("byol")
    # The CPU config's heads (configs/method/cpu/byol.yaml: BYOL's own 2-layer projector and predictor)
    assert (m.proj_layers, m.pred_layers) == (2, 2)
    projector = linear(96, *[m.proj_hidden_dim] * (m.proj_layers - 1), m.proj_dim)
    predictor = linear(m.proj_dim, *[m.pred_hidden_dim] * (m.pred_layers - 1), m.proj_dim)
    online = NANO.trained(SIZE) + 3 * (projector + predictor)
    teacher = NANO.forward(SIZE) + projector
    assert got["flops_per_step"] == 2 * BATCH * (online + teacher)
    assert got["breakdown"]["forward"]["teacher"] == 2 * BATCH * teacher
    # Backbone-dominated: (2 views x 3 + 2 views x 1) / 3 = 8/3 of supervised, well short of 3x.
    assert 2.5 < got["flops_per_step"] / supervised["flops_per_step"] < 3.0


def test_dino_counts_every_global_and_local_crop_and_the_teacher_on_global_crops():
    got, m = step(*small("dino"), "method.local_crops=3", "method.local_crop_size=8"), sizes("dino")
    head = linear(96, m.hidden_dim, m.hidden_dim, m.bottleneck_dim) + linear(m.bottleneck_dim, m.out_dim)
    student = 2 * (NANO.trained(16) + 3 * head) + 3 * (NANO.trained(8) + 3 * head)
    teacher = 2 * (NANO.forward(16) + head)
    assert got["flops_per_step"] == BATCH * (student + teacher)
    assert got["breakdown"]["forward"]["teacher"] == BATCH * teacher


def mae_forward(vit: ViT, size: int, ratio: float, dec_dim: int, dec_depth: int) -> int:
    patches = (size // vit.patch) ** 2
    visible = int(patches * (1 - ratio)) + vit.prefix
    encoder = vit.patch_embed(patches) + vit.blocks(visible)
    every = patches + vit.prefix
    decoder = (
        linear(vit.dim, dec_dim) * visible  # embedding of the encoder's tokens
        + vit.blocks(every, dec_dim, dec_depth)  # the decoder runs on every position
        + linear(dec_dim, 3 * vit.patch**2) * every
    )
    return encoder + decoder


def test_mae_encodes_visible_tokens_only_and_decodes_all_of_them():
    got, m = step(*small("mae")), sizes("mae")
    patches = (SIZE // NANO.patch) ** 2
    forward = mae_forward(NANO, SIZE, 0.75, m.decoder_dim, m.decoder_depth)
    assert got["flops_per_step"] == BATCH * (3 * forward - NANO.patch_embed(patches))
    encoder = NANO.patch_embed(patches) + NANO.blocks(patches // 4 + 1)
    assert got["breakdown"]["forward"]["backbone"] == BATCH * encoder
    tiny, t = step(*small("mae_tiny")), sizes("mae_tiny")
    cost = mae_forward(NANO, SIZE, 0.85, t.decoder_dim, t.decoder_depth)
    assert tiny["flops_per_step"] == BATCH * (3 * cost - NANO.patch_embed(16))


def test_mae_on_vit_base_with_the_reference_decoder_costs_a_little_over_half_of_supervised():
    """Counted on meta tensors (budgetssl-flops' count, which tests/test_verify.py checks against the
    real step of every method): a real ViT-B step would take most of this file's time on a CPU and check
    nothing more here."""
    common = ["backbone=vit_base", "dataset.image_size=224", "train.batch_size=1", "energy.track=false"]
    # mixup pairs images, so it needs an even batch: off for this batch of one (it costs no FLOPs)
    sup = count(run_config(*common, "method=supervised", "method.mixup_alpha=0", "method.cutmix_alpha=0"))
    mae = count(run_config(*common, "method=mae"))
    base = ViT(dim=768, depth=12, patch=16)
    assert mae["flops_per_step"] == 3 * mae_forward(base, 224, 0.75, 512, 8) - base.patch_embed(196)
    ratio = mae["flops_per_step"] / sup["flops_per_step"]
    assert 0.5 < ratio < 0.6, ratio  # 0.556: encoder on 50 of 197 tokens, decoder (8 x 512) on all 197


def test_clip_adds_the_text_tower(supervised):
    got, m = step(*small("clip")), sizes("clip")
    ctx, width, embed = m.context_length, m.text_width, m.embed_dim
    # causal attention counted at full n^2 cost
    text = ViT().blocks(ctx, width, m.text_layers) + linear(width, embed)
    image = NANO.trained(SIZE) + 3 * linear(96, embed)
    similarities = 3 * 2 * (2 * BATCH * BATCH * embed)  # images x texts and texts x images
    assert got["flops_per_step"] == BATCH * (image + 3 * text) + similarities
    assert got["breakdown"]["forward"]["text"] == BATCH * text
