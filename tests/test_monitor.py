"""The label-free monitors (budgetssl.monitor): each measure on a matrix whose value is known by hand,
the collapse rules, and runs: a DINO driven into collapse is flagged with the prototype rule, and the
record's monitor fields are written outside the budget. That supervised and MAE at the demo's largest
budget are not flagged is checked on the runs that show they learn (tests/gain.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from budgetssl.monitor.collapse import PROTOTYPE_GAP, RANK_RATIO, verdict
from budgetssl.monitor.measures import (
    effective_rank,
    entropy_gap,
    kl_divergence,
    mean_entropy,
    prototype_measures,
    prototypes_in_use,
    std_of_l2_normalized,
)
from budgetssl.monitor.watch import Monitor, final_values, held_out
from budgetssl.stages.pretrain import build
from conftest import METHOD_NAMES, TINY, run_config, run_in_process, small, summary

pytestmark = pytest.mark.usefixtures("one_thread")


def rank_three(n: int = 40, d: int = 12, singular=(5.0, 5.0, 5.0)) -> torch.Tensor:
    """An (n, d) matrix with exactly the given singular values (orthonormal factors)."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(n, len(singular), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(singular), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ v.T


def test_effective_rank_of_a_rank_three_matrix_with_equal_singular_values_is_three():
    assert effective_rank(rank_three()) == pytest.approx(3.0, abs=1e-4)  # eps adds ~1e-6 per empty direction


def test_effective_rank_of_unequal_singular_values_is_exp_of_their_entropy():
    z = rank_three(singular=(3.0, 1.0, 0.0 + 1e-30))
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(z) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), abs=1e-4)


def test_effective_rank_of_a_constant_embedding_is_one():
    assert effective_rank(torch.ones(32, 8)) == pytest.approx(1.0, abs=1e-4)


def test_std_of_a_constant_embedding_is_zero_and_of_an_isotropic_one_about_one_over_sqrt_d():
    assert std_of_l2_normalized(torch.ones(64, 16) * 3.0) == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    d = 64
    assert std_of_l2_normalized(torch.randn(20000, d, generator=g)) * math.sqrt(d) == pytest.approx(
        1.0, abs=0.01
    )
    # the hand value of a small matrix: rows (1,0), (0,1) -> per-dimension std of (1, 0) = sqrt(1/2)
    assert std_of_l2_normalized(torch.tensor([[2.0, 0.0], [0.0, 5.0]])) == pytest.approx(math.sqrt(0.5))


def test_entropy_of_uniform_rows_is_ln_k_and_of_one_hot_rows_zero():
    k = 7
    assert mean_entropy(torch.full((5, k), 1 / k)) == pytest.approx(math.log(k))
    assert mean_entropy(torch.eye(k)) == pytest.approx(0.0, abs=1e-12)


def test_entropy_gap_is_zero_in_both_collapses_and_ln_k_for_distinct_one_hots():
    k = 6
    same_prototype = torch.zeros(10, k)
    same_prototype[:, 2] = 1
    assert entropy_gap(same_prototype) == pytest.approx(0.0, abs=1e-12)
    assert entropy_gap(torch.full((10, k), 1 / k)) == pytest.approx(0.0, abs=1e-12)
    assert entropy_gap(torch.eye(k)) == pytest.approx(math.log(k))


def test_kl_of_equal_distributions_is_zero_and_of_known_ones_its_hand_value():
    p = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    q = torch.full((1, 2), 0.5)
    assert kl_divergence(torch.tensor([[1.0, 0.0]]), q) == pytest.approx(math.log(2))


def test_prototypes_in_use_counts_distinct_argmaxes():
    p = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    assert prototypes_in_use(p) == 2


def test_prototype_measures_read_logits_as_the_loss_does():
    logits = torch.zeros(4, 5)
    got = prototype_measures(logits, logits)
    assert got["teacher_entropy"] == pytest.approx(math.log(5)) == got["log_prototypes"]
    assert got["kl_teacher_student"] == pytest.approx(0.0, abs=1e-12)
    assert got["entropy_gap"] == pytest.approx(0.0, abs=1e-12)


def test_final_values_average_the_last_tenth_of_the_monitored_steps_at_least_one():
    history = [(s, {"a": float(s)}) for s in range(1, 21)]
    assert final_values(history) == ({"a": 19.5}, [19, 20])
    assert final_values(history[:3]) == ({"a": 3.0}, [3])


def test_verdict_names_the_first_rule_and_lists_every_rule_that_fired():
    healthy = {"rank_features": 20.0, "std_features": 0.08, "dim_features": 96.0}
    assert verdict(healthy, healthy) is None
    collapsed = {
        **healthy,
        "rank_features": 20.0 * RANK_RATIO * 0.9,
        "entropy_gap": PROTOTYPE_GAP / 2,
        "kl_teacher_student": 1.0,
    }
    got = verdict(healthy, collapsed)
    assert got is not None and got["rule"] == "prototype_entropy_gap"
    assert got["rules"] == ["prototype_entropy_gap", "rank_features"]
    assert got["values"]["rank_features_ratio"] == pytest.approx(RANK_RATIO * 0.9)
    assert set(got["thresholds"]) == set(got["rules"])
    constant = {"rank_features": 20.0, "std_features": 0.0, "dim_features": 96.0}
    assert verdict(healthy, constant)["rule"] == "std_features"


def test_a_projector_with_a_constant_output_is_flagged_by_the_embeddings_spread():
    run = run_config(*TINY, *small("simclr"), "train.monitor_images=32")
    method, _ = build(run)
    monitor = Monitor(method, held_out(run, method, run.train.monitor_images))
    init = monitor(torch.device("cpu"))
    assert init["dim_embedding"] == run.method.proj_dim  # read before the projector's last batch norm
    with torch.no_grad():
        last_linear = [m for m in method.projector if isinstance(m, torch.nn.Linear)][-1]
        last_linear.weight.zero_()  # every image projects to the same (zero) vector
    assert method.training  # the monitor restores the mode it found
    final = monitor(torch.device("cpu"))
    assert final["std_embedding"] == 0.0
    got = verdict(init, final)
    assert got is not None and got["rules"] == ["rank_embedding", "std_embedding"]  # rank 1 of a zero matrix
    assert got["values"]["std_embedding_x_sqrt_dim"] == 0.0
    assert monitor.flops_per_call is not None and monitor.flops_per_call > 0


def rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_dino_driven_into_collapse_is_flagged_by_its_prototypes_and_monitors_stay_out_of_the_budget(
    tmp_path,
):
    # A teacher that copies the student at once (momentum 0) and a centre that follows the current batch
    # (momentum 0): DINO's collapse (Caron et al. 2021, Sec. 5.3).
    folder = tmp_path / "dino"
    code = run_in_process(
        "budgetssl-pretrain",
        *TINY,
        *small("dino"),
        "method.local_crops=0",
        "method.base_momentum=0",
        "method.center_momentum=0",
        "budget.flops=6e10",
        "train.lr=0.01",
        "train.log_every=5",
        folder=folder,
    )
    assert code == 0
    record = summary(folder)
    # Measured (one thread, this seed): the backbone's effective rank falls from 18.5 to 2.9 in 29 steps
    # and the head's bottleneck from 19.2 to 1.9; the teacher's entropy rises from 3.5 to 6.7 of ln 1024.
    collapse = record["collapse"]
    assert collapse is not None, record["monitor_final"]
    assert collapse["rule"] == "rank_features" and "rank_embedding" in collapse["rules"]
    assert collapse["values"]["rank_features_ratio"] < RANK_RATIO
    # The record's monitor fields, their cost apart from the budget's.
    assert record["monitor_source"] == "val" and record["monitor_images"] >= 2
    assert set(record["monitor_init"]) >= {
        "rank_features",
        "rank_embedding",
        "entropy_gap",
        "teacher_entropy",
    }
    assert record["monitor_flops"] > 0 and record["monitor_seconds"] > 0
    assert record["monitor_flops"] % record["monitor_calls"] == 0
    assert record["train_flops"] == record["steps"] * record["flops_per_step"]
    logged = rows(folder)
    assert all("monitor/rank_features" in row for row in logged)
    assert record["monitor_calls"] == len(logged) + 1  # every logged step and the one before step 1
    assert record["monitor_final_steps"][-1] == record["steps"]


def test_the_monitors_leave_training_unchanged(tmp_path):
    """Eval mode, no gradients, no random draws: a run with monitors trains what one without them does
    (SimCLR: its projector's batch norms keep their running statistics)."""
    settings = [*TINY, *small("simclr"), "budget.flops=1.2e10", "train.log_every=2"]
    on, off = tmp_path / "on", tmp_path / "off"
    assert run_in_process("budgetssl-pretrain", *settings, folder=on) == 0
    assert run_in_process("budgetssl-pretrain", *settings, "train.monitor_images=0", folder=off) == 0
    with_monitors, without = summary(on), summary(off)
    a, b = load_file(str(on / "backbone.safetensors")), load_file(str(off / "backbone.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert with_monitors["final_loss"] == without["final_loss"]
    assert "monitor_flops" not in without and "collapse" not in without
    assert [r["loss"] for r in rows(on)] == [r["loss"] for r in rows(off)]
    assert not any(k.startswith("monitor/") for r in rows(off) for k in r)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_at_initialisation_is_read_by_the_monitors_and_not_flagged_against_itself(method):
    """The monitors read each registered method's outputs on held-out images (its features at least; its
    embedding and prototype logits where it has them), every value finite, at a priced cost; a model
    compared with itself breaks no collapse rule."""
    run = run_config(*TINY, *small(method), "train.monitor_images=32")
    task, _ = build(run)
    monitor = Monitor(task, held_out(run, task, run.train.monitor_images))
    values = monitor(torch.device("cpu"))
    assert values["dim_features"] == task.backbone.num_features and values["rank_features"] > 1
    assert values and all(math.isfinite(v) for v in values.values())
    assert verdict(values, values) is None
    assert monitor.flops_per_call is not None and monitor.flops_per_call > 0
