"""Schedules on a step's two-position clock (engine/schedule.py): under cosine every scheduled value is
what it was when the schedules ran on one fraction; under wsd the lr holds its peak on a trunk and cools
down on each rung's branch, warm-ups and freezes run on the smallest rung, annealed values (weight decay,
EMA momentum) wait for the cool-down."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from budgetssl.engine.recipe import Recipe
from budgetssl.engine.schedule import WSD, Clock, Timeline
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import BudgetError
from budgetssl.meter.budget import FlopBudget, Plan
from budgetssl.meter.ladder import Ladder, LadderPlan, branch_step
from budgetssl.methods.ema import EmaTeacher, planned_base_momentum
from budgetssl.stages.pretrain import build, loop_settings
from conftest import TINY, default_settings, run_config, small

pytestmark = pytest.mark.usefixtures("one_thread")


# The schedules as they were before the clock, on one fraction (copied from the code they replace).
def old_fraction(step: int, planned: int) -> float:
    if planned <= 1:
        return 1.0 if step > 0 else 0.0
    return min(step / (planned - 1), 1.0)


def old_cosine(fraction: float, start: float, end: float) -> float:
    f = min(max(fraction, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * f))


def old_lr(fraction: float, peak: float, end: float, warmup: float) -> float:
    f = min(max(fraction, 0.0), 1.0)
    if f < warmup:
        return end + (peak - end) * f / warmup
    if warmup >= 1:
        return peak
    return old_cosine((f - warmup) / (1 - warmup), peak, end)


def old_teacher_temp(fraction: float, warmup: float, final: float, warmup_fraction: float) -> float:
    if warmup_fraction <= 0 or fraction >= warmup_fraction:
        return final
    return warmup + (final - warmup) * fraction / warmup_fraction


FPS = 1000  # FLOPs per step in the plans below
RUNGS = [20_000.0, 40_000.0, 80_000.0]  # 20, 40 and 80 steps; branch points 16, 32 and 64
WSD_LADDER = Timeline(WSD, 0.2, reference_flops=RUNGS[0])


def plan(budget: float) -> Plan:
    return FlopBudget(budget).plan(FPS)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_under_cosine_the_clock_is_the_old_fraction_and_every_value_the_old_one(steps):
    recipe = Recipe(lr=0.3, final_lr_ratio=0.01, warmup_fraction=0.1, weight_decay=0.04, weight_decay_end=0.4)
    p = Plan(budget_flops=steps * FPS, flops_per_step=FPS, steps=steps)
    for step in range(steps):
        clock, f = Timeline().clock(step, p), old_fraction(step, steps)
        assert float(clock) == clock.anneal == clock.warm == f  # exactly, not approximately
        assert recipe.lr_at(clock) == old_lr(f, 0.3, 0.003, 0.1)
        assert recipe.weight_decay_at(clock) == old_cosine(f, 0.04, 0.4)
    assert Timeline().reference_steps(p) == steps  # the EMA teacher is planned on the run's own steps


def test_under_cosine_the_methods_schedules_are_the_old_ones():
    torch.manual_seed(0)
    dino, batches = build(run_config(*TINY, *small("dino")))
    byol, _ = build(run_config(*TINY, *small("byol")))
    cfg = dino.cfg
    for method in (dino, byol):
        method.on_plan(50)
    base = float(dino.teacher.planned_base)
    for step in range(50):
        clock = Timeline().clock(step, plan(50 * FPS))
        f = old_fraction(step, 50)
        logs = dino.on_step_start(clock)
        assert logs["momentum"] == old_cosine(f, base, 1.0)
        assert logs["teacher_temp"] == old_teacher_temp(
            f, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_fraction
        )
        assert byol.on_step_start(clock)["momentum"] == old_cosine(f, float(byol.teacher.planned_base), 1.0)


def lrs(recipe: Recipe, timeline: Timeline, p: Plan, steps: range) -> list[float]:
    return [recipe.lr_at(timeline.clock(s, p)) for s in steps]


def test_under_wsd_the_lr_holds_its_peak_on_the_trunk_and_each_branch_cools_down_to_the_final_lr():
    recipe = Recipe(lr=1.0, final_lr_ratio=0.01, warmup_fraction=0.1, weight_decay=0.05, schedule=WSD)
    trunk = plan(RUNGS[-1])
    ladder = LadderPlan.make(RUNGS, 0.2, FPS)
    assert [r.branch_step for r in ladder.rungs] == [16, 32, 64] and [r.steps for r in ladder.rungs] == [
        20,
        40,
        80,
    ]
    # Warm-up over 10% of the smallest rung (steps 0 and 1 of its 20), from the final lr to the peak.
    assert lrs(recipe, WSD_LADDER, trunk, range(3)) == [0.01, pytest.approx(0.01 + 0.99 / 1.9), 1.0]
    assert lrs(recipe, WSD_LADDER, trunk, range(2, 64)) == [1.0] * 62  # constant to the last branch point
    for rung in ladder.rungs:
        own = plan(rung.budget)
        # The rung's plan is the trunk's up to its branch point, then decays on every cool-down step.
        assert lrs(recipe, WSD_LADDER, own, range(rung.branch_step)) == lrs(
            recipe, WSD_LADDER, trunk, range(rung.branch_step)
        )
        cooldown = lrs(recipe, WSD_LADDER, own, range(rung.branch_step, rung.steps))
        assert len(cooldown) == rung.cooldown_steps == rung.steps // 5
        assert all(a > b for a, b in zip([1.0, *cooldown], cooldown, strict=False))  # strictly down
        assert cooldown[-1] == pytest.approx(0.01)  # the final lr on the rung's last step
        # 1 - sqrt (Hägele et al. 2024): half-way through the cool-down, 1 - sqrt(1/2) of the way down.
        half = WSD_LADDER.clock(rung.branch_step + rung.cooldown_steps // 2 - 1, own)
        assert half.anneal == pytest.approx(0.5)
        assert recipe.lr_at(half) == pytest.approx(0.01 + 0.99 * (1 - math.sqrt(0.5)))


def test_under_wsd_warm_ups_run_as_a_separate_run_of_the_smallest_rung_would():
    separate = plan(RUNGS[0])
    for budget in RUNGS:
        for step in range(20):
            warm = WSD_LADDER.clock(step, plan(budget)).warm
            assert warm == Timeline().clock(step, separate).warm  # the smallest rung's cosine run
    assert WSD_LADDER.reference_steps(plan(RUNGS[-1])) == 20
    # Without a ladder a wsd run is its own reference: one rung of its own budget.
    alone = Timeline(WSD, 0.2)
    assert [alone.clock(s, plan(RUNGS[-1])).warm for s in (0, 79)] == [0.0, 1.0]
    assert alone.cooldown_start(plan(RUNGS[-1])) == 64


def at(step: int, budget: float) -> Clock:
    return WSD_LADDER.clock(step, plan(budget))


def test_under_wsd_dino_warms_and_freezes_on_the_smallest_rung_and_anneals_on_the_cool_down():
    torch.manual_seed(0)
    run = run_config(*TINY, *small("dino"), f"budget.ladder=[{','.join(map(str, RUNGS))}]")
    dino, batches = build(run)
    cfg, top = dino.cfg, RUNGS[-1]
    dino.on_plan(WSD_LADDER.reference_steps(plan(top)))
    base = float(dino.teacher.planned_base)
    # planned on the smallest rung's 20 steps, by the configured rule
    assert base == planned_base_momentum(cfg.base_momentum, 20, cfg.momentum_rule, cfg.momentum_floor)
    # The teacher temperature warms up over 12.5% of the smallest rung (2.4 of its steps), then holds.
    temps = [dino.on_step_start(at(s, top))["teacher_temp"] for s in range(64)]
    assert temps[0] == cfg.warmup_teacher_temp and temps[1] < cfg.teacher_temp
    assert temps[3:] == [cfg.teacher_temp] * 61
    # The momentum stays at its base on the trunk, rises on each cool-down to exactly 1 at the end.
    assert {dino.on_step_start(at(s, top))["momentum"] for s in range(64)} == {base}
    for budget in RUNGS:
        p = plan(budget)
        rising = [
            dino.on_step_start(at(s, budget))["momentum"]
            for s in range(WSD_LADDER.cooldown_start(p), p.steps)
        ]
        assert base < rising[0] and all(a < b for a, b in zip(rising, rising[1:], strict=False))
        assert rising[-1] == 1.0
    # The last layer is frozen while warm < freeze_last_layer_fraction, on any rung's plan alike.
    trainer = Trainer(dino, loop_settings(run))
    batch = to_device(next(batches), trainer.device)
    frozen = []
    for warm in (0.0, cfg.freeze_last_layer_fraction):
        dino(batch).loss.backward()
        dino.on_after_backward(Clock(0.0, warm=warm))
        frozen.append(dino.head.last.weight.grad is None)
        trainer.optimizer.zero_grad(set_to_none=True)
    assert frozen == [True, False]
    assert dino.cfg.freeze_last_layer_fraction > 0
    # Weight decay (DINO's cosine 0.01 -> 0.4 at CPU size) waits for the cool-down, then follows it.
    decayed = []
    for s in (0, 63, 64, 79):
        trainer.schedule(at(s, top))
        decayed.append(max(g["weight_decay"] for g in trainer.optimizer.param_groups))
    assert run.train.weight_decay == 0.01 and run.train.weight_decay_end == 0.4
    assert decayed[0] == decayed[1] == pytest.approx(0.01, rel=1e-12)  # the trunk: the start value
    assert 0.01 < decayed[2] < decayed[3] == pytest.approx(0.4)  # the cool-down, to its end on the last step


def test_under_wsd_byol_momentum_holds_on_the_trunk_and_reaches_one_at_each_rungs_end():
    byol, _ = build(run_config(*TINY, *small("byol"), "budget.ladder=[2e4,8e4]"))
    byol.on_plan(WSD_LADDER.reference_steps(plan(RUNGS[-1])))
    base = float(byol.teacher.planned_base)
    assert {byol.on_step_start(at(s, RUNGS[-1]))["momentum"] for s in range(64)} == {base}
    assert [byol.on_step_start(at(p.steps - 1, p.budget_flops))["momentum"] for p in map(plan, RUNGS)] == [
        1.0
    ] * 3


def test_the_budget_aware_teacher_keeps_every_rung_under_one_percent_of_its_random_start():
    """The EMA start is planned on the smallest rung (methods/ema.py): every rung, which spends its
    trunk steps at that start and its cool-down on the cosine to 1, still forgets its initial teacher."""
    reference = WSD_LADDER.reference_steps(plan(RUNGS[-1]))
    for budget in RUNGS:
        teacher = EmaTeacher({"net": nn.Linear(2, 2)}, base_momentum=0.996)
        teacher.plan(reference)
        for step in range(plan(budget).steps):
            teacher.schedule(at(step, budget).anneal)
            teacher.update({"net": nn.Linear(2, 2)})
        assert float(teacher.init_weight) <= 0.01


def rung_and_separate_momenta(rule: str, budget: float, base: float = 0.996) -> tuple[list, list]:
    """The momentum of every update of the ladder's rung at `budget` (trunk planned on the smallest rung)
    and of a separate wsd run at `budget` (planned on its own steps), under `rule` with a 0.99 floor."""
    out = []
    for timeline in (WSD_LADDER, Timeline(WSD, 0.2)):
        teacher = EmaTeacher({"net": nn.Linear(2, 2)}, base_momentum=base, rule=rule, floor=0.99)
        teacher.plan(timeline.reference_steps(plan(budget)))
        out.append(
            [teacher.schedule(timeline.clock(s, plan(budget)).anneal) for s in range(plan(budget).steps)]
        )
    return out[0], out[1]


@pytest.mark.parametrize("rule", ["published", "floor"])
def test_a_rungs_teacher_follows_its_separate_runs_momentum_on_every_step(rule):
    """Under a start that does not depend on the plan (published; the floor at plans of at most
    2 ln(100) / (1 - floor) = 921 updates, the demo's), a rung's teacher is its separate run's."""
    for budget in RUNGS:
        rung, separate = rung_and_separate_momenta(rule, budget)
        assert rung == separate  # exactly, step by step
        assert rung[0] == {"published": 0.996, "floor": 0.99}[rule] and rung[-1] == 1.0


def test_under_the_budget_aware_start_a_larger_rungs_teacher_is_faster_than_its_separate_runs():
    """The documented difference (methods/ema.py): the smallest rung is its separate run; a larger rung
    starts at the smallest rung's start, lower than its own plan's, and stays below it until its end."""
    smallest, *larger = RUNGS
    rung, separate = rung_and_separate_momenta("budget_aware", smallest)
    assert rung == separate
    for budget in larger:
        rung, separate = rung_and_separate_momenta("budget_aware", budget)
        assert (
            rung[0]
            == planned_base_momentum(0.996, 20)
            < separate[0]
            == planned_base_momentum(0.996, plan(budget).steps)
        )
        assert all(a < b for a, b in zip(rung[:-1], separate[:-1], strict=True)) and rung[-1] == separate[-1]


def test_a_ladder_of_1_2_4_8_16_with_a_fifth_cooling_down_spends_19_units_against_31():
    ladder = LadderPlan.make([16e3, 1e3, 4e3, 2e3, 8e3], 0.2, flops_per_step=1)  # any order
    assert [r.budget for r in ladder.rungs] == [1e3, 2e3, 4e3, 8e3, 16e3]
    assert ladder.trunk_steps == ladder.trunk_flops == 12_800
    assert ladder.cooldown_flops() == [200, 400, 800, 1600, 3200]
    assert (ladder.ladder_flops, ladder.separate_runs_flops) == (19_000, 31_000)
    section = ladder.rung_section(2, "../..")
    assert Ladder.from_dict(section.to_dict()) == section
    assert section.to_dict() == {
        "role": "rung",
        "trunk": "../..",
        "rungs": [1e3, 2e3, 4e3, 8e3, 16e3],
        "cooldown_fraction": 0.2,
        "branch_step": 3200,
        "shared_flops": 3200,
        "cooldown_steps": 800,
        "cooldown_flops": 800,
    }
    trunk = ladder.trunk_section(["rungs/1e3"])
    assert trunk.ladder_flops == 19_000 and trunk.trunk_steps == 12_800
    # A record written before `ladder_flops` called it `total_flops` (inside `ladder`): read as the same.
    older = {k: v for k, v in trunk.to_dict().items() if k != "ladder_flops"}
    assert Ladder.from_dict({**older, "total_flops": 19_000}) == trunk
    # Steps are whole: at 3 FLOPs a step a rung of 1000 has 333 steps, 266 of them on the trunk.
    assert (branch_step(1000, 0.2, 3), LadderPlan.make([1000], 0.2, 3).rungs[0].steps) == (266, 333)


def test_a_smallest_rung_that_branches_before_the_first_step_is_refused():
    with pytest.raises(
        BudgetError, match=r"branches before the trunk's first step .* raise it to at least 1250"
    ):
        LadderPlan.make([1100.0, 5000.0], 0.2, flops_per_step=1000)


def test_a_clock_is_frozen_and_reads_a_bare_fraction_at_both_positions():
    clock = Clock.of(0.25)
    assert (clock.anneal, clock.warm) == (0.25, 0.25) and Clock.of(clock) is clock
    with pytest.raises(AttributeError, match="frozen"):
        clock.warm = 0.5  # type: ignore[misc]
    assert (
        default_settings(Recipe(lr=1.0, final_lr_ratio=0.1, warmup_fraction=0.0, weight_decay=0.0)).timeline
        == Timeline()
    )
