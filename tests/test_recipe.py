"""The recipe machinery: config precedence, the lr scaling rule, weight-decay groups and schedule,
per-parameter clipping, and the budget-aware EMA teacher."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from budgetssl.config.paths import config_dir
from budgetssl.engine.recipe import (
    Recipe,
    clip_per_parameter,
    param_groups,
    peak_lr,
    resolve_recipe,
    scaled_lr,
)
from budgetssl.engine.settings import LoopSettings
from budgetssl.engine.task import Task
from budgetssl.engine.trainer import Trainer
from budgetssl.errors import ConfigError
from budgetssl.methods.ema import RULES, EmaTeacher, momentum_at, planned_base_momentum
from conftest import METHOD_NAMES, TEACHER_METHODS, default_settings, run_config


@pytest.fixture
def user_configs(tmp_path):
    """A method whose recipe sets train.*, and an experiment that overrides part of it."""
    (tmp_path / "method").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "method" / "myssl.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /method/simclr\n  - _self_\n"
        "train:\n  base_lr: 0.3\n  weight_decay: 0.123\n  warmup_fraction: 0.25\n"
    )
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrain:\n  weight_decay: 0.5\n")
    return f"hydra.searchpath=[file://{tmp_path}]"


def test_method_recipe_overrides_config_yaml(user_configs):
    base = run_config()
    run = run_config(user_configs, "method=myssl")
    assert run.method.name == "simclr"
    assert (run.train.base_lr, run.train.weight_decay, run.train.warmup_fraction) == (0.3, 0.123, 0.25)
    simclr = run_config("method=simclr")
    assert run.train.optimizer == simclr.train.optimizer  # what it leaves comes from the method it extends
    assert run.train.checkpoint_every_steps == base.train.checkpoint_every_steps  # ... and config.yaml


def test_experiment_overrides_the_method_and_the_command_line_overrides_both(user_configs):
    run = run_config(user_configs, "method=myssl", "+experiment=mine")
    assert (run.train.base_lr, run.train.weight_decay) == (0.3, 0.5)
    run = run_config(
        user_configs, "method=myssl", "+experiment=mine", "train.weight_decay=0.7", "train.lr=0.01"
    )
    assert (run.train.weight_decay, peak_lr(run.train)) == (0.7, 0.01)


def stated(method: str, key: str):
    """`train.<key>` as configs/method/<method>.yaml states it, or as the method config it extends does."""
    cfg = OmegaConf.load(config_dir() / "method" / f"{method}.yaml")
    value = OmegaConf.select(cfg, f"train.{key}", default=None)
    if value is not None:
        return value
    parents = [d.removeprefix("/method/") for d in cfg.get("defaults", []) if str(d).startswith("/method/")]
    assert parents, f"configs/method/{method}.yaml states no train.{key} and extends no method"
    return stated(parents[0], key)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_recipe_wins_over_config_yaml_and_the_command_line_over_it(method):
    """Each method config states its optimizer and base lr, which win over config.yaml's; the command
    line still wins over them."""
    run = run_config(f"method={method}")
    assert run.method.name == method
    assert (run.train.optimizer, run.train.base_lr) == (
        stated(method, "optimizer"),
        stated(method, "base_lr"),
    )
    assert run_config(f"method={method}", "train.base_lr=0.042").train.base_lr == 0.042


@pytest.mark.parametrize(
    "rule, batch, expected",
    [("linear", 1024, 4e-3), ("linear", 64, 2.5e-4), ("sqrt", 1024, 2e-3), ("none", 4096, 1e-3)],
)
def test_lr_scaling_rules(rule, batch, expected):
    assert scaled_lr(1e-3, rule, batch, 256) == pytest.approx(expected)


def test_explicit_lr_wins_over_scaling_and_reaches_the_optimizer():
    run = run_config(
        "train.base_lr=1e-3",
        "train.lr_scaling=linear",
        "train.lr_reference_batch=256",
        "train.batch_size=512",
    )
    assert peak_lr(run.train) == pytest.approx(2e-3)
    assert resolve_recipe(run.train)["lr_scaling"] == "linear"
    run = run_config("train.base_lr=1e-3", "train.batch_size=512", "train.lr=0.05")
    recipe = resolve_recipe(run.train)
    assert recipe["lr"] == 0.05 and recipe["base_lr"] == 1e-3 and recipe["lr_scaling"] == "explicit train.lr"
    trainer = Trainer(Linear(), LoopSettings.from_train(run.train))
    trainer.schedule(run.train.warmup_fraction)  # the end of warm-up: the peak
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer=adamww", "train.optimizer 'adamww' is not an optimizer timm knows"),
        ("train.lr_scaling=cubic", "train.lr_scaling must be one of"),
        ("train.no_weight_decay=[bias]", "train.no_weight_decay may list"),
        ("train.grad_clip_mode=layer", "train.grad_clip_mode must be one of"),
        ("train.betas=[0.9]", "train.betas must be"),
    ],
)
def test_bad_recipe_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config(override)


class Tiny(nn.Module):
    """A ViT-like module: a norm, a bias, a position embedding timm would exempt, a weight matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))
        self.proj = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


class Linear(Task):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)


class Wrapper(Task):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Tiny()


def names_without_decay(rules: list[str]) -> set[str]:
    model = Wrapper()
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1, rules)
    return {by_id[id(p)] for g in groups if not g["decay"] for p in g["params"]}


def test_weight_decay_rules_pick_the_parameters():
    assert names_without_decay(["biases_norms", "tokens"]) == {
        "backbone.pos_embed",
        "backbone.proj.bias",
        "backbone.norm.weight",
        "backbone.norm.bias",
    }
    assert names_without_decay(["biases_norms"]) == {
        "backbone.proj.bias",
        "backbone.norm.weight",
        "backbone.norm.bias",
    }
    assert names_without_decay([]) == set()


def test_weight_decay_schedule_changes_only_decayed_groups():
    recipe = Recipe(lr=0.1, final_lr_ratio=0.0, warmup_fraction=0.0, weight_decay=0.04, weight_decay_end=0.4)
    trainer = Trainer(Wrapper(), default_settings(recipe))
    for fraction, expected in ((0.0, 0.04), (0.5, 0.22), (1.0, 0.4)):
        trainer.schedule(fraction)
        decays = sorted(g["weight_decay"] for g in trainer.optimizer.param_groups)
        assert decays == pytest.approx([0.0, expected])


def test_per_parameter_clipping_clips_each_gradient_alone():
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((4,), 3.0), torch.full((4,), 0.1)  # norms 6 and 0.2
    clip_per_parameter([a, b], 3.0)
    assert a.grad.norm().item() == pytest.approx(3.0, rel=1e-5)  # DINO's rule: clipped alone ...
    assert torch.equal(b.grad, torch.full((4,), 0.1))  # ... the small one untouched (a global clip scales it)


def init_weight_of_plan(steps: int, base: float = 0.996) -> float:
    """The initial teacher's weight after `steps` updates of the planned schedule."""
    start = planned_base_momentum(base, steps)
    fractions = [0.0] if steps == 1 else [i / (steps - 1) for i in range(steps)]
    return math.prod(momentum_at(f, start) for f in fractions)


@pytest.mark.parametrize("steps", [1, 2, 3, 9, 10, 55, 870, 2302, 2304, 10000])
def test_budget_aware_ema_keeps_the_initial_teacher_under_one_percent(steps):
    assert init_weight_of_plan(steps) <= 0.01


def test_budget_aware_ema_is_the_reference_schedule_for_reference_length_plans():
    # 2 ln(100) / (1 - 0.996) = 2302.6 updates: from there on, the reference's 0.996 -> 1 as published.
    assert planned_base_momentum(0.996, 2303) == 0.996
    assert planned_base_momentum(0.996, 93_800) == 0.996  # BYOL: 300 epochs of ImageNet at batch 4096
    assert planned_base_momentum(0.996, 2302) < 0.996
    assert planned_base_momentum(0.996, 55) == pytest.approx(1 - 2 * math.log(100) / 55)
    # Without the rule, the demo's 55 updates leave 89% of the random teacher, the study's 870 BYOL
    # updates at 1e18 FLOPs 18%.
    assert math.prod(momentum_at(i / 54, 0.996) for i in range(55)) == pytest.approx(0.896, abs=0.01)
    assert math.prod(momentum_at(i / 869, 0.996) for i in range(870)) == pytest.approx(0.176, abs=0.01)


def test_teacher_follows_the_plan_from_its_first_update():
    student = nn.Linear(2, 2)
    teacher = EmaTeacher({"net": student}, base_momentum=0.996)
    steps = 20
    teacher.schedule(0.0)  # the first step starts before its plan is known ...
    teacher.plan(steps)  # ... and learns it before its update
    for i in range(steps):
        if i:
            teacher.schedule(i / (steps - 1))
        teacher.update({"net": student})
    assert float(teacher.init_weight) == pytest.approx(init_weight_of_plan(steps), rel=1e-9)
    assert float(teacher.init_weight) <= 0.01


LN100 = math.log(100)


@pytest.mark.parametrize("steps", [1, 42, 168, 921, 2303, 93_800])
def test_the_published_rule_starts_at_the_published_momentum_at_any_plan_length(steps):
    assert planned_base_momentum(0.996, steps, "published") == 0.996
    assert planned_base_momentum(0.99, steps, "published", floor=0.995) == 0.99  # the floor is not read


def test_the_floor_rule_is_the_floor_on_short_plans_and_the_published_start_on_long_ones():
    # Up to 2 ln(100) / (1 - 0.99) = 921 updates the budget-aware start is below the floor ...
    for steps in (1, 42, 168, 921):
        assert 1 - 2 * LN100 / steps <= 0.99
        assert planned_base_momentum(0.996, steps, "floor", floor=0.99) == 0.99
    # ... between 921 and 2303 it is the budget-aware start, from 2303 on the published one.
    assert planned_base_momentum(0.996, 1500, "floor", floor=0.99) == pytest.approx(1 - 2 * LN100 / 1500)
    assert 0.99 < planned_base_momentum(0.996, 1500, "floor", floor=0.99) < 0.996
    assert planned_base_momentum(0.996, 2303, "floor", floor=0.99) == 0.996
    for steps in (1, 10, 100, 1000, 10_000):
        budget_aware = planned_base_momentum(0.996, steps, "budget_aware")
        assert planned_base_momentum(0.996, steps, "floor", floor=0.99) == max(0.99, budget_aware)
    # A floor at the published start is the published rule.
    assert planned_base_momentum(0.99, 42, "floor", floor=0.99) == planned_base_momentum(
        0.99, 42, "published"
    )


@pytest.mark.parametrize("rule", RULES)
def test_teacher_plans_its_start_by_its_rule_and_weighs_its_random_start_by_the_momenta(rule):
    steps, student = 42, nn.Linear(2, 2)
    teacher = EmaTeacher({"net": student}, base_momentum=0.996, rule=rule, floor=0.99)
    teacher.schedule(0.0)
    start = teacher.plan(steps)
    assert start == float(teacher.planned_base) == planned_base_momentum(0.996, steps, rule, 0.99)
    assert start == {"published": 0.996, "floor": 0.99, "budget_aware": 1 - 2 * LN100 / steps}[rule]
    momenta = []
    for i in range(steps):
        if i:
            teacher.schedule(i / (steps - 1))
        momenta.append(teacher.momentum_now)
        teacher.update({"net": student})
    assert momenta[0] == start and momenta[-1] == 1.0
    assert float(teacher.init_weight) == pytest.approx(math.prod(momenta), rel=1e-12)
    # Only the budget-aware start forgets the random teacher within 42 updates (the floor's keeps 68%).
    assert (float(teacher.init_weight) <= 0.01) == (rule == "budget_aware")


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown momentum rule 'fast'"):
        EmaTeacher({"net": nn.Linear(2, 2)}, base_momentum=0.996, rule="fast")
    with pytest.raises(ValueError, match="unknown momentum rule"):
        planned_base_momentum(0.996, 10, "fast")


@pytest.mark.parametrize("method", TEACHER_METHODS)
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.momentum_rule=fast"], "method.momentum_rule must be one of published, floor, budget_aware"),
        (
            [
                "method.momentum_rule=floor",
                "method.momentum_floor=1.0",
            ],  # above every start (data2vec2: 0.9998)
            "method.momentum_floor=1.0 is above",
        ),
        (["method.momentum_floor=1.5"], r"method.momentum_floor must be in \[0, 1\]"),
        (["method.base_momentum=-0.1"], r"method.base_momentum must be in \[0, 1\]"),
    ],
)
def test_a_bad_momentum_rule_is_refused_naming_the_option(method, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config(f"method=cpu/{method}", *overrides)
