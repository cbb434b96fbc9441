"""VICReg (methods/zoo/vicreg.py): its loss against lightly's VICRegLoss on values and gradients, its whole
step against the official repository's model, loss and optimizer on identical inputs, its closed-form
FLOP count, and its refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import VICRegLoss
from torch import nn

from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.schedule import Clock
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.vicreg import vicreg_loss, vicreg_terms
from budgetssl.stages.pretrain import build, loop_settings
from conftest import TINY, run_config, small
from test_method_flops import BATCH, NANO, SIZE, linear, sizes, step

pytestmark = pytest.mark.usefixtures("one_thread")


def embeddings(n: int = 16, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views' embeddings whose dimensions spread from 0.2 to 2 (some under the hinge's 1, some
    over), correlated with each other and across the views, so every term and its gradient is live."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    scale = torch.linspace(0.2, 2.0, d)
    z1 = (torch.randn(n, d, generator=g) @ mix) * scale + 0.3
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g)
    return z1, z2


@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 10.0, 5.0)])
def test_the_loss_equals_lightlys_vicreg_loss_in_value_and_gradients(coeffs):
    z1, z2 = embeddings()
    ours = [z.clone().requires_grad_(True) for z in (z1, z2)]
    theirs = [z.clone().requires_grad_(True) for z in (z1, z2)]
    loss = vicreg_loss(*ours, *coeffs)
    ref = VICRegLoss(lambda_param=coeffs[0], mu_param=coeffs[1], nu_param=coeffs[2])(*theirs)
    loss.backward()
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), (a.grad - b.grad).abs().max()
    # each term is live: the hinge holds some dimensions (std under 1), the others are past it
    invariance, variance, covariance = vicreg_terms(z1, z2)
    assert min(float(invariance), float(variance), float(covariance)) > 0


def official_off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """main_vicreg.py off_diagonal."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_loss(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, sim=25.0, std=25.0, cov=1.0
) -> torch.Tensor:
    """main_vicreg.py VICReg.forward after the projector, on one process (FullGatherLayer is the identity)."""
    num_features = x.shape[1]
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = official_off_diagonal(cov_x).pow_(2).sum().div(num_features) + official_off_diagonal(
        cov_y
    ).pow_(2).sum().div(num_features)
    return sim * repr_loss + std * std_loss + cov * cov_loss


def official_projector(embedding: int, spec: str) -> nn.Sequential:
    """main_vicreg.py Projector, but for the hidden Linears' bias: the batch norm after each cancels it
    (its gradient is 0 up to rounding, which AdamW would still turn into steps), so it is left out."""
    f = list(map(int, f"{embedding}-{spec}".split("-")))
    layers: list[nn.Module] = []
    for i in range(len(f) - 2):
        layers += [nn.Linear(f[i], f[i + 1], bias=False), nn.BatchNorm1d(f[i + 1]), nn.ReLU(True)]
    layers.append(nn.Linear(f[-2], f[-1], bias=False))
    return nn.Sequential(*layers)


class OfficialVICReg(nn.Module):
    """main_vicreg.py VICReg: backbone, Projector, VICReg.forward's loss."""

    def __init__(self, backbone: nn.Module, embedding: int, spec: str, batch_size: int) -> None:
        super().__init__()
        self.backbone, self.projector, self.batch_size = (
            backbone,
            official_projector(embedding, spec),
            batch_size,
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.projector(self.backbone(x))
        y = self.projector(self.backbone(y))
        return official_loss(x, y, self.batch_size)


def test_three_steps_match_the_official_model_loss_and_adamw_update():
    """The method's whole step (views as the stream makes them, backbone, expander, loss, AdamW update
    with VICRegL's groups: every 1-d parameter undecayed) against main_vicreg.py's VICReg on the same
    batches, weights and per-step lr and weight decay, for three steps."""
    run = run_config(*TINY, *small("vicreg"), "train.drop_path=0", "train.batch_size=8")
    method, batches = build(run)
    method.double()  # in float64, so Adam's normalised steps do not amplify float32 rounding
    trainer = Trainer(method, loop_settings(run))
    cfg = run.method
    spec = "-".join([str(cfg.proj_hidden_dim)] * (cfg.proj_layers - 1) + [str(cfg.proj_dim)])
    ref = OfficialVICReg(copy.deepcopy(method.backbone), method.backbone.num_features, spec, 8).double()
    ref.projector.load_state_dict(method.projector.state_dict())
    recipe = trainer.recipe
    decay = [p for p in ref.parameters() if p.ndim > 1]
    no_decay = [p for p in ref.parameters() if p.ndim == 1]
    opt = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": recipe.weight_decay}],
        lr=0.0,
        betas=tuple(recipe.betas),
        eps=recipe.eps,
    )
    initial = {name: p.detach().clone() for name, p in method.named_parameters()}
    method.train()
    ref.train()
    for fraction in (0.01, 0.3, 0.7):  # in the warm-up, then on the cosine
        batch = to_device(next(batches), trainer.device)
        batch["views"] = batch["views"].double()
        clock = Clock.of(fraction)
        trainer.schedule(clock)  # the loop sets each step's lr and weight decay so
        loss, _ = trainer.step(batch, None, clock)
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(clock)
        opt.param_groups[1]["weight_decay"] = recipe.weight_decay_at(clock)
        views = batch["views"]
        expected = ref(views[:, 0], views[:, 1])
        opt.zero_grad()
        expected.backward()
        opt.step()
        assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-12)
    ours = dict(method.named_parameters())
    theirs = dict(ref.named_parameters())
    assert set(ours) == set(theirs)
    moved = 0
    for name, p in ours.items():
        assert torch.allclose(p, theirs[name], atol=1e-10, rtol=0), (name, (p - theirs[name]).abs().max())
        moved += int(not torch.equal(p, initial[name]))
    assert moved == len(ours)  # every parameter took steps: the comparison is not of untouched weights
    for name, buffer in method.projector.named_buffers():  # batch norms' running statistics
        assert torch.allclose(buffer, dict(ref.projector.named_buffers())[name], atol=1e-12, rtol=0)


def test_flops_are_two_supervised_views_plus_the_expander_and_the_two_covariances():
    got, m = step(*small("vicreg")), sizes("vicreg")
    expander = linear(96, *[m.proj_hidden_dim] * (m.proj_layers - 1), m.proj_dim)
    # one (d, n) x (n, d) product per view over the batch, trained (forward + two gradients)
    covariances = 2 * 3 * (2 * BATCH * m.proj_dim * m.proj_dim)
    assert got["flops_per_step"] == 2 * BATCH * (NANO.trained(SIZE) + 3 * expander) + covariances
    assert set(got["breakdown"]["forward"]) == {"total", "backbone", "projector"}
    supervised = step(*small("supervised"))
    assert 2.0 < got["flops_per_step"] / supervised["flops_per_step"] < 2.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.sim_coeff=-1"], "method.sim_coeff must be >= 0"),
        (["method.std_coeff=0", "method.cov_coeff=0"], "e.g. method.std_coeff=25"),
        (["method.proj_layers=0"], "method.proj_layers must be >= 1"),
        (["train.batch_size=1"], "train.batch_size must be >= 2"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError) as info:
        run_config(*TINY, *small("vicreg"), *overrides)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("method", "backbone", "batch", "lr", "expected"),
    [
        # VICRegL README ConvNeXt-B: --batch-size 576 --optimizer adamw --base-lr 0.0005 (x B / 256), 400
        # epochs; main_vicregl.py defaults: wd 0.05, 10 warm-up epochs, end lr 0.001 x, drop path 0.1
        (
            "vicreg",
            "vit_base",
            576,
            0.0005 * 576 / 256,
            {
                "optimizer": "adamw",
                "weight_decay": 0.05,
                "warmup_fraction": 10 / 400,
                "final_lr_ratio": 0.001,
            },
        ),
        # vicreg README: --batch-size 2048 --base-lr 0.2 (x B / 256), 1000 epochs; main_vicreg.py: LARS,
        # wd 1e-6, 10 warm-up epochs, end lr 0.001 x
        (
            "resnet/vicreg",
            "resnet50",
            2048,
            0.2 * 2048 / 256,
            {"optimizer": "lars", "momentum": 0.9, "weight_decay": 1e-6, "warmup_fraction": 10 / 1000},
        ),
    ],
)
def test_the_recipes_at_the_reference_batch_are_the_authors(method, backbone, batch, lr, expected):
    run = run_config(
        f"method={method}", f"backbone={backbone}", "dataset.image_size=224", f"train.batch_size={batch}"
    )
    recipe = resolve_recipe(run.train)
    assert recipe["lr"] == pytest.approx(lr, rel=1e-9)
    for key, value in expected.items():
        assert recipe[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key
    assert recipe["no_weight_decay"] == ["biases_norms"] and recipe["grad_clip"] is None
    m = run.method
    assert (m.proj_hidden_dim, m.proj_dim, m.proj_layers) == (8192, 8192, 3)  # --mlp 8192-8192-8192
    assert (m.sim_coeff, m.std_coeff, m.cov_coeff) == (25.0, 25.0, 1.0)
