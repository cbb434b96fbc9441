"""Barlow Twins (methods/zoo/barlowtwins.py) against independent references: lightly 1.6's
BarlowTwinsLoss and the official code (facebookresearch/barlowtwins main.py) written out here, on the
loss, its gradients and whole training steps; its metered step against a closed-form count; its recipes
and the values it refuses. The cross-rank check is tests/test_distributed_losses.py's `barlowtwins` entry."""

from __future__ import annotations

import copy

import pytest
import torch
from lightly.loss import BarlowTwinsLoss
from torch import nn

from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.schedule import Clock
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.barlowtwins import barlow_twins_loss, cross_correlation, off_diagonal
from budgetssl.stages.pretrain import build, loop_settings
from conftest import run_config, small
from test_method_flops import BATCH, NANO, SIZE, TINY, linear, sizes, step

LAMBD = 0.0051  # main.py --lambd


def embeddings(n: int = 12, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated views' embeddings with unequal scales and offsets per dimension, so the
    standardisation matters."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + torch.linspace(-2, 2, d)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g)
    return z1, z2


def grads(loss_of, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss = loss_of(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


class ReferenceLoss(nn.Module):
    """main.py BarlowTwins.forward after the projector, on one process (batch_size = the batch)."""

    def __init__(self, d: int, lambd: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(d, affine=False)
        self.lambd = lambd

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self.bn(z1).T @ self.bn(z2)
        c.div_(z1.shape[0])
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        n = c.shape[0]
        off_diag = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten().pow_(2).sum()
        return on_diag + self.lambd * off_diag


def test_loss_and_gradients_equal_lightlys_and_the_official_codes():
    z1, z2 = embeddings()
    ours = grads(lambda a, b: barlow_twins_loss(a, b, LAMBD), z1, z2)
    theirs = grads(BarlowTwinsLoss(lambda_param=LAMBD, gather_distributed=False), z1, z2)
    official = grads(ReferenceLoss(z1.shape[1], LAMBD).train(), z1, z2)
    for other in (theirs, official):
        assert torch.allclose(ours[0], other[0], rtol=1e-6, atol=1e-6), (ours[0], other[0])
        for g, h in zip(ours[1:], other[1:], strict=True):
            assert torch.allclose(g, h, rtol=1e-5, atol=1e-6), (g - h).abs().max()
    assert float(ours[0]) > 0.1  # correlated but noisy views: away from the identity


def test_off_diagonal_takes_every_entry_but_the_diagonal_in_order():
    c = torch.arange(16.0).view(4, 4)
    expected = torch.tensor([x for i, row in enumerate(c.tolist()) for j, x in enumerate(row) if i != j])
    assert torch.equal(off_diagonal(c), expected)
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.zeros(2, 3))


def test_the_loss_is_nought_for_identical_decorrelated_views_and_grows_with_redundancy():
    # Columns orthogonal and zero-mean over the batch: the standardised views' cross-correlation is I.
    q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))[0]
    z = (q - q.mean(0))[:, :4] * torch.tensor([1.0, 5.0, 0.1, 2.0])
    z = torch.linalg.qr(z - z.mean(0))[0]  # re-orthogonalised after centring, still zero-mean
    assert float(barlow_twins_loss(z, z.clone(), LAMBD)) == pytest.approx(0.0, abs=1e-3)
    redundant = torch.cat([z[:, :2], z[:, :2]], dim=1)  # two dimensions repeated: C_ij = 1 off the diagonal
    assert float(barlow_twins_loss(redundant, redundant, LAMBD)) == pytest.approx(LAMBD * 4, rel=1e-3)
    assert float(barlow_twins_loss(redundant, redundant, 1.0)) == pytest.approx(4.0, rel=1e-3)


def test_the_cross_correlation_is_float32_under_bf16_autocast():
    z1, z2 = embeddings(n=64, d=32)
    exact = cross_correlation(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = cross_correlation(z1, z2)
        rounded = z1.T @ z2  # what autocast would do to an unguarded product
    assert rounded.dtype == torch.bfloat16 and c.dtype == torch.float32
    assert torch.allclose(c, exact, atol=1e-6)


class ReferenceBarlowTwins(nn.Module):
    """main.py BarlowTwins with the method's backbone and projector copied in: each view through the
    backbone and the projector on its own, then ReferenceLoss."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, d: int, lambd: float) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.loss = ReferenceLoss(d, lambd)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        return self.loss(self.projector(self.backbone(y1)), self.projector(self.backbone(y2)))


BIAS_SCALE = 0.0048 / 0.2  # main.py --learning-rate-biases / --learning-rate-weights


def test_three_steps_equal_the_official_models_with_its_two_lr_groups():
    """The whole step (views from the stream, both passes, loss, AdamW on the reference's two groups:
    weights decayed at the lr, 1-d parameters undecayed at 0.024 of it) against main.py's model and
    grouping on the same batches, in float64; the lr at each step is the recipe's (its schedule is
    tested apart)."""
    run = run_config(
        *small("barlowtwins"),
        *TINY,
        "method.bias_lr_scale=0.024",
        "train.no_weight_decay=[biases_norms]",
        "train.base_lr=0.01",  # large enough that three steps move the weights visibly
    )
    torch.manual_seed(0)
    method, batches = build(run)
    method.double()  # both models in float64, so rounding cannot tell them apart
    trainer = Trainer(method, loop_settings(run))
    m = run.method
    reference = ReferenceBarlowTwins(
        copy.deepcopy(method.backbone), copy.deepcopy(method.projector), m.proj_dim, m.lambd
    ).double()
    weights = [p for p in reference.parameters() if p.ndim > 1]
    biases = [p for p in reference.parameters() if p.ndim == 1]
    t = run.train
    optimizer = torch.optim.AdamW(
        [{"params": weights}, {"params": biases, "weight_decay": 0.0}],
        lr=0.0,
        betas=tuple(t.betas),
        eps=t.eps,
        weight_decay=t.weight_decay,
    )
    initial = {name: p.detach().clone() for name, p in method.named_parameters()}
    method.train(), reference.train()
    for fraction in (0.2, 0.5, 0.9):
        batch = to_device(next(batches), trainer.device)
        batch["views"] = batch["views"].double()
        lr = trainer.schedule(Clock.of(fraction))  # as the loop does before each step (engine/loop.py)
        loss, _ = trainer.step(batch, None, Clock.of(fraction))
        optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = lr, lr * BIAS_SCALE
        views = batch["views"]
        expected = reference(views[:, 0], views[:, 1])
        optimizer.zero_grad()
        expected.backward()
        optimizer.step()
        assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-10)
    ours = dict(method.named_parameters())
    moved = 0.0
    for name, p in reference.named_parameters():
        if name.startswith("loss."):
            continue
        q, p, start = ours[name].detach(), p.detach(), initial[name]
        # atol: parameters whose gradient is 0 in exact arithmetic (the attention's key bias; fc_norm's
        # bias, which the projector's first batch norm cancels) take Adam steps of rounding noise,
        # under 1e-9 here in float64, against Adam's steps of about the lr (1.6e-4 at batch 4).
        assert torch.allclose(q, p, rtol=1e-9, atol=1e-9), (name, (q - p).abs().max())
        moved = max(moved, float((q - start).abs().max()))
    assert moved > 1e-4  # the steps moved the weights by about the lr: the comparison compares updates


def test_the_metered_step_is_two_trained_views_two_projector_passes_and_the_cross_correlation():
    sup = step(*small("supervised"))
    got, m = step(*small("barlowtwins")), sizes("barlowtwins")
    assert m.proj_layers == 3  # main.py's 8192-8192-8192 shape, at CPU width
    projector = linear(96, m.proj_hidden_dim, m.proj_hidden_dim, m.proj_dim)
    # bn(z1).T @ bn(z2): (d, B) x (B, d) forward, and both inputs' gradients backward
    correlation = 3 * 2 * BATCH * m.proj_dim * m.proj_dim
    assert got["flops_per_step"] == 2 * BATCH * (NANO.trained(SIZE) + 3 * projector) + correlation
    forward = got["breakdown"]["forward"]
    assert forward["backbone"] == 2 * BATCH * NANO.forward(SIZE)
    assert forward["projector"] == 2 * BATCH * projector
    assert forward["total"] == forward["backbone"] + forward["projector"] + correlation // 3
    assert set(forward) == {"total", "backbone", "projector"}
    assert 2.0 < got["flops_per_step"] / sup["flops_per_step"] < 2.3


def test_the_resnet_recipe_is_the_official_one_with_its_bias_lr():
    run = run_config(
        "method=resnet/barlowtwins", "backbone=resnet50", "dataset.image_size=224", "train.batch_size=2048"
    )
    recipe = resolve_recipe(run.train)
    assert recipe["lr"] == pytest.approx(0.2 * 2048 / 256)  # main.py adjust_learning_rate
    assert (recipe["optimizer"], recipe["momentum"], recipe["weight_decay"]) == ("lars", 0.9, 1e-6)
    assert recipe["final_lr_ratio"] == pytest.approx(0.001) and recipe["warmup_fraction"] == pytest.approx(
        0.01
    )
    m = run.method
    assert (m.lambd, m.proj_hidden_dim, m.proj_dim, m.proj_layers) == (0.0051, 8192, 8192, 3)
    # At CPU size on the same recipe: the trainer's groups get 0.2 and 0.0048 x B / 256 at the peak.
    tiny = run_config("method=resnet/barlowtwins", *TINY, "method.proj_hidden_dim=8", "method.proj_dim=8")
    method, _ = build(tiny)
    trainer = Trainer(method, loop_settings(tiny))
    trainer.schedule(Clock.of(tiny.train.warmup_fraction))
    scale = BATCH / 256
    by_decay = {bool(g["weight_decay"]): g for g in trainer.optimizer.param_groups}
    assert by_decay[True]["lr"] == pytest.approx(0.2 * scale) and by_decay[False]["lr"] == pytest.approx(
        0.0048 * scale
    )
    assert all(p.ndim == 1 for p in by_decay[False]["params"]) and all(
        p.ndim > 1 for p in by_decay[True]["params"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.lambd=-1"], "method.lambd (the off-diagonal weight) must be >= 0"),
        (["method.proj_layers=0"], "method.proj_layers must be >= 1"),
        (["method.proj_dim=0"], "method.proj_hidden_dim and method.proj_dim must be >= 1"),
        (["method.bias_lr_scale=0"], "method.bias_lr_scale (the biases' and norms' lr"),
        (
            ["method.bias_lr_scale=0.5", "train.no_weight_decay=[]"],
            "set train.no_weight_decay=[biases_norms]",
        ),
        (["train.batch_size=1"], "train.batch_size must be >= 2"),
    ],
)
def test_bad_values_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError) as info:
        run_config(*small("barlowtwins"), *TINY, *overrides)
    assert message in str(info.value)


def reference_lars_step(params, grads, mus, lr: float, weight_decay: float, momentum=0.9, eta=0.001) -> None:
    """main.py LARS.step with weight_decay_filter and lars_adaptation_filter on (its use there)."""
    for p, dp, mu in zip(params, grads, mus, strict=True):
        if p.ndim != 1:  # exclude_bias_and_norm: 1-d parameters get neither decay nor adaptation
            dp = dp.add(p, alpha=weight_decay)
            param_norm, update_norm = torch.norm(p), torch.norm(dp)
            one = torch.ones_like(param_norm)
            q = torch.where(
                param_norm > 0.0, torch.where(update_norm > 0, eta * param_norm / update_norm, one), one
            )
            dp = dp.mul(q)
        mu.mul_(momentum).add_(dp)
        p.add_(mu, alpha=-lr)


def test_timms_lars_on_the_two_groups_steps_as_main_pys_lars():
    """The ResNet recipe's optimizer (timm's lars on the method's two groups, the 1-d one at 0.024 of the
    lr) against main.py's LARS over three steps: equal to ~1e-6, the size of the one difference (timm's
    trust ratio divides by |g| + wd |w|, main.py's by |g + wd w|, with wd = 1e-6)."""
    tiny = run_config("method=resnet/barlowtwins", *TINY, "method.proj_hidden_dim=8", "method.proj_dim=8")
    method, _ = build(tiny)
    trainer = Trainer(method, loop_settings(tiny))
    params = [p for p in method.parameters() if p.requires_grad]
    theirs = [p.detach().clone() for p in params]
    start = [p.detach().clone() for p in params]
    mus = [torch.zeros_like(p) for p in theirs]
    g = torch.Generator().manual_seed(0)
    for fraction in (0.005, 0.3, 0.7):
        lr = trainer.schedule(Clock.of(fraction))
        grads = [torch.randn(p.shape, generator=g) * 0.01 for p in params]
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        for two_d, group_lr in (
            (True, lr),
            (False, lr * BIAS_SCALE),
        ):  # main.py's param_weights, param_biases
            group = [i for i, t in enumerate(theirs) if (t.ndim > 1) == two_d]
            reference_lars_step(
                [theirs[i] for i in group],
                [grads[i] for i in group],
                [mus[i] for i in group],
                group_lr,
                tiny.train.weight_decay,
            )
    worst = max(
        float(((p.detach() - t).abs() / (t.abs() + 1e-3)).max()) for p, t in zip(params, theirs, strict=True)
    )
    assert worst < 1e-5, worst
    moved = min(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))
    assert moved > 0  # every parameter stepped
