"""MoCo v3 (methods/zoo/mocov3.py) against the official code, facebookresearch/moco-v3, written out here:
its loss (moco/builder.py MoCo.contrastive_loss), its whole step (MoCo.forward and main_moco.py's train loop:
momentum update, keys, loss, AdamW), its ViT (vits.py VisionTransformerMoCo), its FLOPs in closed form,
its recipe, and the options it refuses. lightly 1.6 has no loss of this form (NTXentLoss contrasts both views
of both sides, without the 2 tau scale), so the reference is the official formula."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.schedule import Clock
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import ConfigError
from budgetssl.methods.ema import momentum_at
from budgetssl.methods.zoo.mae import sincos_pos_embed as mae_sincos
from budgetssl.methods.zoo.mocov3 import contrastive_loss, mocov3_loss, sincos_pos_embed
from budgetssl.stages.pretrain import build, loop_settings
from conftest import TINY, run_config, small
from real_step import measure
from test_method_flops import NANO, ViT, linear

pytestmark = pytest.mark.usefixtures("one_thread")


# ----- the official code, written out (facebookresearch/moco-v3) -----


def official_contrastive_loss(q: torch.Tensor, k: torch.Tensor, T: float) -> torch.Tensor:
    """moco/builder.py MoCo.contrastive_loss on one process (concat_all_gather of one rank: the keys)."""
    q = nn.functional.normalize(q, dim=1)
    k = nn.functional.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    N = logits.shape[0]
    labels = torch.arange(N, dtype=torch.long) + N * 0  # torch.distributed.get_rank() = 0
    return nn.CrossEntropyLoss()(logits, labels) * (2 * T)


class OfficialMoCo(nn.Module):
    """moco/builder.py MoCo (MoCo_ViT's parts given): base encoder (backbone + projector), predictor, and
    the momentum encoder, a copy of the base encoder updated before its keys are computed."""

    def __init__(self, base_encoder: nn.Module, predictor: nn.Module, T: float) -> None:
        super().__init__()
        self.T = T
        self.base_encoder = base_encoder
        self.momentum_encoder = copy.deepcopy(base_encoder)
        self.predictor = predictor
        for param_b, param_m in zip(
            self.base_encoder.parameters(), self.momentum_encoder.parameters(), strict=True
        ):
            param_m.data.copy_(param_b.data)  # initialize
            param_m.requires_grad = False  # not update by gradient

    @torch.no_grad()
    def _update_momentum_encoder(self, m: float) -> None:
        for param_b, param_m in zip(
            self.base_encoder.parameters(), self.momentum_encoder.parameters(), strict=True
        ):
            param_m.data = param_m.data * m + param_b.data * (1.0 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self._update_momentum_encoder(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return official_contrastive_loss(q1, k2, self.T) + official_contrastive_loss(q2, k1, self.T)


def official_sincos(h: int, w: int, embed_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """vits.py VisionTransformerMoCo.build_2d_sincos_position_embedding (the class token's zeros first)."""
    grid_w = torch.arange(w, dtype=torch.float32)
    grid_h = torch.arange(h, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")  # torch's default then
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = torch.einsum("m,d->md", [grid_w.flatten(), omega])
    out_h = torch.einsum("m,d->md", [grid_h.flatten(), omega])
    pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)
    return torch.cat([torch.zeros(1, embed_dim), pos_emb], dim=0)


# ----- the loss -----


def pair(n: int = 6, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_loss_equals_the_official_contrastive_loss_in_value_and_gradients(temperature):
    q, k = pair()
    ours_q, ours_k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    ref_q, ref_k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    ours = contrastive_loss(ours_q, ours_k, temperature)
    ref = official_contrastive_loss(ref_q, ref_k, temperature)
    ours.backward()
    ref.backward()
    assert abs(float(ours.detach() - ref.detach())) < 1e-12
    assert (ours_q.grad - ref_q.grad).abs().max() < 1e-12
    assert (ours_k.grad - ref_k.grad).abs().max() < 1e-12
    assert ours_q.grad.abs().max() > 1e-3  # a real gradient, not two zeros compared


def test_symmetrised_loss_pairs_each_views_queries_with_the_other_views_keys():
    (q1, q2), (k1, k2) = pair(seed=1), pair(seed=2)
    expected = official_contrastive_loss(q1, k2, 0.2) + official_contrastive_loss(q2, k1, 0.2)
    assert float(mocov3_loss(q1, q2, k1, k2, 0.2)) == pytest.approx(float(expected), abs=1e-12)
    assert float(mocov3_loss(q1, q2, k2, k1, 0.2)) != pytest.approx(float(expected), abs=1e-6)


def test_matching_keys_give_a_lower_loss_than_shuffled_ones():
    q, _ = pair(n=8)
    aligned = contrastive_loss(q, q + 0.01 * torch.randn_like(q), 0.2)
    shuffled = contrastive_loss(q, q.roll(1, dims=0), 0.2)
    assert float(aligned) < 0.1 < float(shuffled)


# ----- the whole step against the official step -----

LR, WD, BATCH = 1e-3, 0.1, 8
FRACTIONS = (0.0, 0.4, 0.8)  # the clocks of three steps; base momentum 0.9 so the teacher moves visibly


def test_three_steps_equal_the_official_step_on_the_same_views():
    run = run_config(
        *TINY,
        *small("mocov3"),
        f"train.batch_size={BATCH}",
        f"train.lr={LR}",
        f"train.weight_decay={WD}",
        "train.num_workers=0",
        "method.base_momentum=0.9",
    )
    torch.manual_seed(0)
    method, batches = build(run)
    # In float64: a parameter whose gradient is zero but for rounding (a shift of every sample that the
    # heads' batch norm removes, e.g. the final norm's bias) gets an Adam step of any sign in float32.
    method.double()
    trainer = Trainer(method, loop_settings(run))
    assert all(g["lr"] == LR and g["weight_decay"] == WD for g in trainer.optimizer.param_groups)
    # The reference gets copies of the method's initial weights (its momentum encoder is its own copy).
    base = nn.Sequential(copy.deepcopy(method.backbone.model), copy.deepcopy(method.projector))
    ref = OfficialMoCo(base, copy.deepcopy(method.predictor), run.method.temperature)
    teacher = nn.Sequential(method.teacher.parts["backbone"].model, method.teacher.parts["projector"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(teacher.parameters(), ref.momentum_encoder.parameters(), strict=True)
    )
    # main_moco.py: AdamW over model.parameters() (the frozen ones get no gradient, so no step and no decay).
    optimizer = torch.optim.AdamW(ref.parameters(), LR, weight_decay=WD)
    student = [
        *method.backbone.model.parameters(),
        *method.projector.parameters(),
        *method.predictor.parameters(),
    ]
    initial = [p.detach().clone() for p in student]
    method.train()
    ref.train()
    momenta = [momentum_at(f, 0.9) for f in FRACTIONS]
    for i, fraction in enumerate(FRACTIONS):
        batch = {k: v.double() for k, v in to_device(next(batches), trainer.device).items()}
        loss, logs = trainer.step(batch, None, Clock.of(fraction))
        assert logs["momentum"] == pytest.approx(momenta[i])
        # The reference updates its momentum encoder first, with the momentum the method used at the end of
        # the step before (its first update copies the base onto itself: any momentum).
        x1, x2 = batch["views"][:, 0], batch["views"][:, 1]
        ref_loss = ref(x1, x2, momenta[i - 1] if i else 0.5)
        optimizer.zero_grad()
        ref_loss.backward()
        optimizer.step()
        assert abs(float(loss) - float(ref_loss.detach())) < 1e-10, (i, float(loss), float(ref_loss))
    ref._update_momentum_encoder(momenta[-1])  # what the reference's next step does first
    ref_student = [*ref.base_encoder.parameters(), *ref.predictor.parameters()]
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(student, ref_student, strict=True))
    teacher_diff = max(
        float((a - b).detach().abs().max())
        for a, b in zip(teacher.parameters(), ref.momentum_encoder.parameters(), strict=True)
    )
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(student, initial, strict=True))
    assert diff < 1e-10 and teacher_diff < 1e-10, (diff, teacher_diff)
    assert moved > 1e-3  # the steps changed the weights: the comparison is not of two untouched models


# ----- the ViT -----


def test_position_embedding_is_the_references_fixed_sincos_mae_with_its_halves_swapped():
    ours = sincos_pos_embed(4, 96, 1)
    assert torch.allclose(ours, official_sincos(4, 4, 96), atol=1e-6)
    mae = mae_sincos(4, 96, 1)  # [sin, cos](column) then [sin, cos](row): MoCo v3 puts the row first
    assert torch.allclose(ours, torch.cat([mae[:, 48:], mae[:, :48]], dim=1), atol=1e-6)
    assert not torch.allclose(ours, mae, atol=1e-3)
    with pytest.raises(ConfigError, match="method.vit_init"):
        sincos_pos_embed(4, 90, 1)


def test_the_vit_starts_as_the_references_and_its_patch_projection_and_positions_never_train():
    run = run_config(*TINY, *small("mocov3"), "train.num_workers=0")
    torch.manual_seed(0)
    method, batches = build(run)
    vit = method.backbone.model
    proj, pos = vit.patch_embed.proj, vit.pos_embed
    assert torch.allclose(pos[0], official_sincos(4, 4, 96), atol=1e-6)
    assert not (proj.weight.requires_grad or proj.bias.requires_grad or pos.requires_grad)
    bound = math.sqrt(6 / (3 * 4 * 4 + 96))  # vits.py: xavier-uniform on the projection as a linear layer
    assert bound * 0.9 < float(proj.weight.abs().max()) <= bound and not proj.bias.any()
    qkv = vit.blocks[0].attn.qkv
    qkv_bound = math.sqrt(6 / (96 + 96))  # q, k and v each a 96 x 96 matrix
    assert qkv_bound * 0.9 < float(qkv.weight.abs().max()) <= qkv_bound and not qkv.bias.any()
    fc = vit.blocks[0].mlp.fc1
    assert float(fc.weight.abs().max()) <= math.sqrt(6 / (96 + 384)) and not fc.bias.any()
    assert 0 < float(vit.cls_token.abs().max()) < 1e-5  # N(0, 1e-6)
    frozen = {id(proj.weight), id(proj.bias), id(pos)}
    trainer = Trainer(method, loop_settings(run))
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not frozen & optimized
    before = proj.weight.clone(), pos.clone(), vit.blocks[0].attn.qkv.weight.clone()
    method.train()
    trainer.step(to_device(next(batches), trainer.device), None, Clock.of(0.5))
    assert torch.equal(proj.weight, before[0]) and torch.equal(pos, before[1])
    assert not torch.equal(vit.blocks[0].attn.qkv.weight, before[2])
    # Without the stop-gradient the projection trains (the reference without --stop-grad-conv1).
    free, _ = build(run_config(*TINY, *small("mocov3"), "method.stop_grad_conv1=false"))
    assert free.backbone.model.patch_embed.proj.weight.requires_grad


def test_monitors_read_the_projectors_output_before_its_batch_norm():
    torch.manual_seed(0)
    method, _ = build(run_config(*TINY, *small("mocov3")))
    method.eval()
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        out = method.monitor_outputs(images)
        features = method.backbone(images)
        pre = method.projector[:-1](features)
    assert isinstance(method.projector[-1], nn.BatchNorm1d) and not method.projector[-1].affine
    assert torch.equal(out["features"], features) and torch.equal(out["embedding"], pre)
    assert out["embedding"].shape == (5, 64)


# ----- FLOPs -----

SIZE, FLOP_BATCH = 16, 4
FLOP_TINY = [
    "dataset.image_size=16",
    "dataset.num_train=16",
    f"train.batch_size={FLOP_BATCH}",
    "energy.track=false",
]


def test_the_meter_counts_two_trained_views_two_teacher_views_and_the_similarities():
    got = measure(run_config(*FLOP_TINY, *small("mocov3")))
    m = run_config(*small("mocov3")).method
    projector = linear(96, m.proj_hidden_dim, m.proj_hidden_dim, m.proj_dim)
    predictor = linear(m.proj_dim, m.pred_hidden_dim, m.proj_dim)
    patches = (SIZE // NANO.patch) ** 2
    # The frozen patch projection runs no backward at all: neither its input's gradient (the image) nor its
    # weight's, so a view costs 3 * forward - 2 * patch_embed through the backbone.
    online = 3 * NANO.forward(SIZE) - 2 * NANO.patch_embed(patches) + 3 * (projector + predictor)
    teacher = NANO.forward(SIZE) + projector
    # Each of the two losses: B queries x B keys (2 B B d forward); backward to the queries only, since
    # the keys come from the forward-only teacher.
    similarities = 2 * 2 * (2 * FLOP_BATCH * FLOP_BATCH * m.proj_dim)
    assert got["flops_per_step"] == 2 * FLOP_BATCH * (online + teacher) + similarities
    forward = got["breakdown"]["forward"]
    assert set(forward) == {"total", "backbone", "projector", "predictor", "teacher"}
    assert forward["teacher"] == 2 * FLOP_BATCH * teacher
    assert forward["predictor"] == 2 * FLOP_BATCH * predictor
    # With the projection trained, the backward adds exactly its weight's gradient on every view.
    free = measure(run_config(*FLOP_TINY, *small("mocov3"), "method.stop_grad_conv1=false"))
    assert free["flops_per_step"] - got["flops_per_step"] == 2 * FLOP_BATCH * NANO.patch_embed(patches)


def test_vit_base_step_costs_about_two_and_two_thirds_supervised_steps():
    """At ViT-B/16 224 with the reference heads, counted on meta tensors as budgetssl-flops counts."""
    from budgetssl.verify.flops import count

    common = ["backbone=vit_base", "dataset.image_size=224", "train.batch_size=2", "energy.track=false"]
    moco = count(run_config(*common, "method=mocov3"))
    base = ViT(dim=768, depth=12, patch=16)
    projector, predictor = linear(768, 4096, 4096, 256), linear(256, 4096, 256)
    online = 3 * base.forward(224) - 2 * base.patch_embed(196) + 3 * (projector + predictor)
    teacher = base.forward(224) + projector
    assert moco["flops_per_step"] == 2 * 2 * (online + teacher) + 2 * 2 * (2 * 2 * 2 * 256)


# ----- recipe and refusals -----


def test_the_resolved_recipe_at_batch_4096_is_config_mds_vit_base_command():
    run = run_config("method=mocov3", "backbone=vit_base", "dataset.image_size=224", "train.batch_size=4096")
    recipe = resolve_recipe(run.train)
    assert recipe["lr"] == pytest.approx(1.5e-4 * 4096 / 256)  # --lr=1.5e-4, x batch / 256 (main_moco.py)
    assert (recipe["optimizer"], recipe["weight_decay"], recipe["no_weight_decay"]) == ("adamw", 0.1, [])
    assert recipe["warmup_fraction"] == pytest.approx(40 / 300, rel=1e-4) and recipe["final_lr_ratio"] == 0.0
    assert (recipe["grad_clip"], recipe["drop_path"], list(recipe["betas"])) == (None, 0.0, [0.9, 0.999])
    m = run.method
    assert (m.temperature, m.base_momentum, m.momentum_rule) == (0.2, 0.99, "published")
    assert (m.proj_layers, m.proj_hidden_dim, m.proj_dim, m.pred_layers, m.pred_hidden_dim) == (
        3,
        4096,
        256,
        2,
        4096,
    )
    assert m.last_bn and m.vit_init and m.stop_grad_conv1 and m.crop_scale_min == 0.08


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.temperature=0"], "method.temperature must be > 0"),
        (["method.proj_layers=0"], "method.proj_layers and method.pred_layers must be >= 1"),
        (["backbone=resnet18"], "set method.vit_init=false method.stop_grad_conv1=false"),
        (["method.momentum_rule=fast"], "method.momentum_rule must be one of"),
    ],
)
def test_bad_settings_are_refused_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError) as info:
        run_config(*TINY, *small("mocov3"), *overrides)
    assert message in str(info.value)


def test_on_a_cnn_without_the_vit_options_it_steps():
    run = run_config(
        *TINY, *small("mocov3"), "backbone=resnet18", "method.vit_init=false", "method.stop_grad_conv1=false"
    )
    torch.manual_seed(0)
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    method.train()
    loss, _ = trainer.step(to_device(next(batches), trainer.device), None, Clock.of(0.0))
    assert math.isfinite(float(loss))
