"""The budget: a plan of whole steps, schedules over exactly that plan, never a FLOP over."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from budgetssl.engine.checkpoint_files import Checkpoints, read_checkpoint
from budgetssl.engine.loop import NonFiniteLoss, train
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.schedule import step_fraction, warmup_cosine
from budgetssl.engine.task import StepOutput, Task
from budgetssl.errors import BudgetError
from budgetssl.meter.budget import FlopBudget, StepBudget
from budgetssl.record.metrics import MetricsLog
from conftest import default_settings


class Regression(Task):
    """The smallest real task: one linear layer (2 * 8 * 4 FLOPs per sample forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4, bias=False)
        self.fractions: list[float] = []

    def forward(self, batch):
        return StepOutput(((self.layer(batch["x"]) - batch["y"]) ** 2).mean())

    def on_step_end(self, fraction: float) -> dict[str, float]:
        self.fractions.append(fraction)
        return {}


def batches(batch_size: int = 16):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, generator=g)
    while True:
        x = torch.randn(batch_size, 8, generator=g)
        yield {"x": x, "y": x @ w}


SETTINGS = default_settings(
    Recipe(lr=0.05, final_lr_ratio=0.1, warmup_fraction=0.2, weight_decay=0.0), progress=False
)


def test_plan_is_floor_of_budget_over_step_and_exact():
    assert FlopBudget(1000.0).plan(100).steps == 10
    assert FlopBudget(1099.0).plan(100).steps == 10
    assert FlopBudget(3 * 0.1e12).plan(int(0.1e12)).steps == 3  # no float rounding down
    assert FlopBudget(1e25).plan(7).steps == int(1e25) // 7


def test_budget_below_one_step_says_how_large_a_step_is():
    with pytest.raises(BudgetError, match=r"smaller than one training step \(1234 FLOPs"):
        FlopBudget(1000.0).plan(1234)


@pytest.mark.parametrize("budget", [10_000.0, 12_345.0, 40_960.0])
def test_train_spends_exactly_the_planned_steps(budget, tmp_path):
    task = Regression()
    log = MetricsLog(tmp_path / "metrics.jsonl")
    settings = replace(SETTINGS, log_every=1)
    result = train(task, batches(), settings, FlopBudget(budget), log)
    # Forward, plus a backward that needs only the weight's gradient (the input needs none): 2x forward.
    per_step = 2 * (2 * 16 * 8 * 4)
    assert result.plan.flops_per_step == per_step
    assert result.steps == result.plan.steps == int(budget // per_step)
    assert result.flops == result.steps * per_step
    assert result.flops <= budget < result.flops + per_step
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, result.steps + 1))
    assert rows[-1]["flops"] == result.flops
    # The schedule is complete whatever the budget: warm-up from the final lr, peak, and the final
    # value exactly on the last step.
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(0.005)
    assert max(lrs) <= 0.05 + 1e-12
    assert lrs[-1] == pytest.approx(0.005)
    assert task.fractions[0] == 0 and task.fractions[-1] == 1.0


def test_loss_falls_on_a_learnable_task():
    result = train(Regression(), batches(), SETTINGS, StepBudget(200))
    assert result.final_loss < 0.2 * result.first_loss


def test_a_new_input_shape_is_measured_before_it_is_spent():
    """A batch of another shape is priced on a copy first, so the budget still holds exactly."""
    small, large = batches(16), batches(48)
    mixed = itertools.chain(itertools.islice(small, 3), large)
    per_small, per_large = 2 * (2 * 16 * 8 * 4), 2 * (2 * 48 * 8 * 4)
    budget = 3 * per_small + 2 * per_large + per_large // 2
    result = train(Regression(), mixed, SETTINGS, FlopBudget(budget))
    assert result.steps == 5
    assert result.flops == 3 * per_small + 2 * per_large
    assert result.flops <= budget


def test_schedule_functions():
    assert step_fraction(0, 10) == 0.0 and step_fraction(9, 10) == 1.0
    assert step_fraction(0, 1) == 0.0
    assert warmup_cosine(0.0, peak=1.0, end=0.1, warmup=0.2, start=0.0) == 0.0
    assert warmup_cosine(0.1, peak=1.0, end=0.1, warmup=0.2, start=0.0) == pytest.approx(0.5)
    assert warmup_cosine(0.2, peak=1.0, end=0.1, warmup=0.2, start=0.0) == pytest.approx(1.0)
    assert warmup_cosine(0.6, peak=1.0, end=0.1, warmup=0.2, start=0.0) == pytest.approx(0.55)
    assert warmup_cosine(1.0, peak=1.0, end=0.1, warmup=0.2, start=0.0) == pytest.approx(0.1)


def test_non_finite_loss_stops_the_run_at_its_step():
    class Exploding(Regression):
        def forward(self, batch):
            out = super().forward(batch)
            return StepOutput(out.loss * (float("nan") if len(self.fractions) == 3 else 1.0))

    with pytest.raises(NonFiniteLoss, match="loss is nan at step 3") as info:
        train(Exploding(), batches(), SETTINGS, StepBudget(100))
    assert info.value.step == 3


class HostReads(torch.Tensor):
    """A loss that counts how often it, or a tensor made from it, is read on the host."""

    reads = 0
    READS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__bool__,
             torch.Tensor.__int__, torch.Tensor.numpy)  # fmt: skip

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls.READS:
            HostReads.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class Watched(Regression):
    def forward(self, batch):
        return StepOutput(super().forward(batch).loss.as_subclass(HostReads))


def test_the_loss_is_read_on_the_host_only_on_logged_steps(tmp_path):
    """No step waits for the device to report its loss: the losses of the steps since the last read are
    read together, on logged steps only (the first, every log_every-th, the last)."""
    HostReads.reads = 0
    settings = replace(SETTINGS, log_every=5)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    torch.manual_seed(0)
    result = train(Watched(), batches(), settings, StepBudget(12), log)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 5, 10, 12]
    assert result.loss_reads == HostReads.reads == 4
    # Still exact: the same losses as a run that reads every step.
    torch.manual_seed(0)
    every = train(Regression(), batches(), replace(SETTINGS, log_every=1), StepBudget(12))
    assert (result.first_loss, result.final_loss) == (every.first_loss, every.final_loss)
    assert result.final_loss == rows[-1]["loss"]


class NanAt(Regression):
    """A loss that turns nan at the step after `at` steps are done (0-based step `at`)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def forward(self, batch):
        out = super().forward(batch)
        return StepOutput(out.loss * (float("nan") if len(self.fractions) == self.at else 1.0))


def test_a_non_finite_loss_between_reads_is_reported_at_its_own_step():
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 6") as info:
        train(NanAt(6), batches(), replace(SETTINGS, log_every=10), StepBudget(100))
    assert info.value.step == 6  # found at the read after step 10, reported where it happened


def test_no_checkpoint_holds_the_weights_a_non_finite_step_left(tmp_path):
    """A checkpoint due between the bad step and the next logged one reads the losses first: the run
    stops there, and the checkpoint on disk is the one before the bad step."""
    checkpoints = Checkpoints(tmp_path / "checkpoints", every=4)
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 5"):
        train(NanAt(5), batches(), replace(SETTINGS, log_every=100), StepBudget(100), checkpoints=checkpoints)
    assert [p.name for p in checkpoints.existing()] == ["step_000000004.pt"]
    saved = read_checkpoint(checkpoints.existing()[0])
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_weights_that_turned_non_finite_with_a_finite_loss_are_never_checkpointed(tmp_path):
    class Blows(Regression):
        def on_step_end(self, fraction):
            if len(self.fractions) == 2:  # after the update of step 3 (the third on_step_end)
                with torch.no_grad():
                    self.layer.weight.fill_(float("inf"))
            return super().on_step_end(fraction)

    checkpoints = Checkpoints(tmp_path / "checkpoints", every=3)
    with pytest.raises(NonFiniteLoss, match="weights are not finite after step 3") as info:
        train(Blows(), batches(), replace(SETTINGS, log_every=100), StepBudget(100), checkpoints=checkpoints)
    assert info.value.step == 3
    assert checkpoints.existing() == []
