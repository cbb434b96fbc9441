"""A budget ladder from one trunk (budget.ladder=[...]): each rung a complete run folder with as many
steps as a separate run at its budget, the trunk at its peak lr, each branch cooling down, the FLOPs
spent against separate runs, resumable mid-branch to the same weights, a no-op when run again, and the
config errors that name the options to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from budgetssl.analysis.collect import collect
from budgetssl.config.compose import compose_config
from budgetssl.config.run_name import config_hash
from budgetssl.engine import signals
from budgetssl.engine.checkpoint_files import check_same_config, read_checkpoint
from budgetssl.engine.signals import EXIT_INTERRUPTED
from budgetssl.errors import BudgetSSLError, ConfigError
from budgetssl.stages import ladder as ladder_stage
from conftest import TINY, run_config, run_in_process, small, summary

TORCHRUN = Path(sys.executable).parent / "torchrun"
# BYOL at CPU size: an EMA teacher (its momentum is logged) and random views; about 2 GFLOPs a step,
# so the rungs are 7, 15 and 31 steps, branching from the trunk after 6, 12 and 25.
RUNGS = ["1.6e10", "3.2e10", "6.4e10"]
LADDER = [
    *TINY,
    *small("byol"),
    f"budget.ladder=[{','.join(RUNGS)}]",
    "train.log_every=1",
    "train.checkpoint_every_steps=2",
]
BRANCH = {"1.6e10": 6, "3.2e10": 12, "6.4e10": 25}
STEPS = {"1.6e10": 7, "3.2e10": 15, "6.4e10": 31}

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(path: Path, stage: str = "pretrain") -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["stage"] == stage]


def history(folder: Path) -> list[tuple]:
    """Each pretraining row's step, loss, lr and momentum (not its timings)."""
    return [(r["step"], r["loss"], r["lr"], r["momentum"]) for r in rows(folder / "metrics.jsonl")]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "backbone.safetensors"))


def rung(folder: Path, name: str) -> Path:
    return folder / "rungs" / name


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    """The uninterrupted ladder, pretrained and transferred (budgetssl-run)."""
    folder = tmp_path_factory.mktemp("ladder") / "run"
    assert run_in_process("budgetssl-run", *LADDER, folder=folder) == 0
    return folder


def test_every_rung_is_a_complete_run_with_a_separate_runs_steps(ladder):
    trunk = summary(ladder)
    fps = trunk["flops_per_step"]
    assert trunk["status"] == "completed" and trunk["ladder"]["role"] == "trunk"
    for name in RUNGS:
        folder = rung(ladder, name)
        record = summary(folder)
        assert record["status"] == "completed" and record["command"] == "budgetssl-run"
        assert record["budget_flops"] == float(name) and record["schedule"] == "wsd"
        assert record["flops_per_step"] == fps
        assert record["steps"] == record["planned_steps"] == STEPS[name] == int(float(name) // fps)
        assert record["train_flops"] == record["steps"] * fps <= float(name) < record["train_flops"] + fps
        assert record["miou"] > 0 and record["transfer_flops"] > 0  # transferred like any run
        assert record["total_flops"] == record["train_flops"] + record["transfer_flops"]
        assert record["ladder"] == {
            "role": "rung",
            "trunk": "../..",
            "rungs": [float(r) for r in RUNGS],
            "cooldown_fraction": 0.2,
            "branch_step": BRANCH[name],
            "shared_flops": BRANCH[name] * fps,
            "cooldown_steps": STEPS[name] - BRANCH[name],
            "cooldown_flops": (STEPS[name] - BRANCH[name]) * fps,
        }
        assert (folder / record["backbone_weights"]).is_file()
        # Its monitors: the trunk's at initialisation, its own at its end, and a verdict (null or a rule).
        assert record["monitor_init"] == trunk["monitor_init"] and "collapse" in record
        assert record["monitor_final_steps"][-1] == record["steps"] and record["monitor_flops"] > 0
        config = OmegaConf.load(folder / ".hydra" / "config.yaml")
        assert config.budget.flops == float(name) and config.train.schedule == "wsd"
        assert [r["step"] for r in rows(folder / "metrics.jsonl")] == list(range(1, STEPS[name] + 1))
        assert rows(folder / "metrics.jsonl", "transfer")  # the transfer's rows follow
    # The analysis counts the rungs as runs and the trunk as none.
    found = collect(ladder)
    assert sorted(r.folder.name for r in found.runs) == sorted(RUNGS) and found.trunks == [
        ladder / "summary.json"
    ]


def test_the_ladder_spends_its_trunk_once_against_every_rung_in_full(ladder):
    trunk = summary(ladder)
    fps, spent = trunk["flops_per_step"], trunk["ladder"]
    rungs = [summary(rung(ladder, name)) for name in RUNGS]
    assert trunk["steps"] == spent["trunk_steps"] == BRANCH["6.4e10"]
    assert trunk["train_flops"] == spent["trunk_flops"] == 25 * fps
    assert spent["cooldown_flops"] == [r["ladder"]["cooldown_flops"] for r in rungs]
    assert (
        spent["ladder_flops"] == spent["trunk_flops"] + sum(spent["cooldown_flops"]) == (25 + 1 + 3 + 6) * fps
    )
    assert spent["separate_runs_flops"] == sum(r["train_flops"] for r in rungs) == (7 + 15 + 31) * fps
    assert spent["rung_folders"] == [f"rungs/{name}" for name in RUNGS]
    assert all((ladder / f / "summary.json").is_file() for f in spent["rung_folders"])


def test_the_trunk_holds_its_peak_lr_and_each_branch_cools_down_to_the_final_lr(ladder):
    trunk = rows(ladder / "metrics.jsonl")
    peak = trunk[-1]["lr"]
    assert [r["step"] for r in trunk] == list(range(1, 26))
    assert trunk[0]["lr"] < peak and [r["lr"] for r in trunk[1:]] == [peak] * 24  # after a 1-step warm-up
    momentum = trunk[0]["momentum"]
    assert [r["momentum"] for r in trunk] == [momentum] * 25  # an annealed value: held on the trunk
    recipe = summary(ladder)["recipe"]
    final = recipe["lr"] * recipe["final_lr_ratio"]
    for name in RUNGS:
        history = rows(rung(ladder, name) / "metrics.jsonl")
        assert history[: BRANCH[name]] == trunk[: BRANCH[name]]  # its trunk share, row for row
        cooldown = [r["lr"] for r in history[BRANCH[name] :]]
        assert all(a < b for a, b in zip(cooldown[1:], cooldown, strict=False)) and cooldown[0] < peak
        assert cooldown[-1] == pytest.approx(final, abs=1e-12)
        assert history[-1]["momentum"] == 1.0


def test_a_rung_leaves_the_trunk_at_its_branch_point(ladder):
    """The largest rung's weights are not the trunk's (its branch point), and the rungs differ."""
    saved = read_checkpoint(ladder / "checkpoints" / "step_000000025.pt")
    trunk = {
        k.removeprefix("backbone.model."): v
        for k, v in saved["model"].items()
        if k.startswith("backbone.model.")
    }
    top = weights(rung(ladder, "6.4e10"))
    assert top.keys() == trunk.keys()
    assert not all(torch.equal(top[k], trunk[k]) for k in top)
    small_, middle = weights(rung(ladder, "1.6e10")), weights(rung(ladder, "3.2e10"))
    assert not all(torch.equal(small_[k], middle[k]) for k in small_)


def test_the_smallest_rung_is_a_separate_wsd_run_at_its_budget_bit_for_bit(ladder, tmp_path):
    separate = tmp_path / "separate"
    overrides = [*TINY, *small("byol"), "train.schedule=wsd", "budget.flops=1.6e10", "train.log_every=1"]
    assert run_in_process("budgetssl-pretrain", *overrides, folder=separate) == 0
    got, want = summary(rung(ladder, "1.6e10")), summary(separate)
    same = ("steps", "planned_steps", "train_flops", "flops_per_step", "first_loss", "final_loss")
    for key in (*same, "monitor_init", "monitor_final", "monitor_final_steps", "collapse"):
        assert got[key] == want[key], key
    a, b = weights(rung(ladder, "1.6e10")), weights(separate)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_largest_rungs_teacher_is_its_separate_wsd_runs_on_every_step(ladder, tmp_path):
    """The trunk's teacher starts where a separate run of every rung would (methods/ema.py: the default
    rule's start does not depend on the plan at these lengths), so each rung's momentum is its own run's."""
    separate = tmp_path / "separate"
    overrides = [*TINY, *small("byol"), "train.schedule=wsd", "budget.flops=6.4e10", "train.log_every=1"]
    assert run_in_process("budgetssl-pretrain", *overrides, folder=separate) == 0
    got, want = summary(rung(ladder, "6.4e10")), summary(separate)
    assert got["teacher_base_momentum"] == want["teacher_base_momentum"]
    assert got["teacher_init_weight"] == pytest.approx(want["teacher_init_weight"], rel=1e-12)
    momenta = [[r["momentum"] for r in rows(f / "metrics.jsonl")] for f in (rung(ladder, "6.4e10"), separate)]
    assert momenta[0] == momenta[1] and len(momenta[0]) == STEPS["6.4e10"]
    assert momenta[0][0] == got["teacher_base_momentum"] and momenta[0][-1] == 1.0


def test_running_the_same_command_on_a_completed_ladder_changes_nothing(ladder):
    def state() -> dict[str, bytes]:
        kept = ("summary.json", "metrics.jsonl", "backbone.safetensors")
        return {
            str(p.relative_to(ladder)): p.read_bytes()
            for p in sorted(ladder.rglob("*"))
            if p.is_file() and (p.name in kept or p.suffix == ".pt") and p != ladder / "summary.json"
        }

    before, trunk = state(), summary(ladder)
    start = time.perf_counter()
    assert run_in_process("budgetssl-run", *LADDER, folder=ladder) == 0
    assert state() == before  # no rung trained, transferred or recorded again; the trunk took no step
    assert summary(ladder)["ladder"] == trunk["ladder"] and summary(ladder)["steps"] == trunk["steps"]
    print(f"a completed ladder again: {time.perf_counter() - start:.1f} s")


def test_a_ladder_stopped_mid_branch_resumes_to_the_same_weights(ladder, tmp_path, monkeypatch):
    """Stopped (SIGUSR1, as SLURM warns before a time limit) after the largest rung's second cool-down
    step, then the same command again: the rungs done are skipped, the branch resumes from its
    checkpoint, and every rung ends as in the uninterrupted ladder."""
    folder = tmp_path / "run"
    branch = rung(folder, "6.4e10") / "metrics.jsonl"

    def requested() -> str | None:
        return "SIGUSR1" if branch.is_file() and len(rows(branch)) > BRANCH["6.4e10"] else None

    monkeypatch.setattr(signals, "requested", requested)
    # budgetssl-pretrain: the same pretraining as the reference's budgetssl-run, without its transfers.
    assert run_in_process("budgetssl-pretrain", *LADDER, folder=folder) == EXIT_INTERRUPTED
    record = summary(folder)
    assert record["status"] == "interrupted" and record["interrupted_at_step"] == BRANCH["6.4e10"] + 2
    # The rung stopped says so in its own folder, as any run does (stages/outcome.py), with where it resumes.
    stopped = summary(rung(folder, "6.4e10"))
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGUSR1"
    assert stopped["interrupted_at_step"] == BRANCH["6.4e10"] + 2 and stopped["budget_flops"] == 6.4e10
    assert stopped["checkpoint"].startswith("checkpoints/step_")
    done = {name: (rung(folder, name) / "summary.json").read_bytes() for name in RUNGS[:2]}
    monkeypatch.undo()
    assert run_in_process("budgetssl-pretrain", *LADDER, folder=folder) == 0
    assert {name: (rung(folder, name) / "summary.json").read_bytes() for name in RUNGS[:2]} == done
    assert summary(rung(folder, "6.4e10"))["resumed_from_step"] == BRANCH["6.4e10"] + 2
    for name in RUNGS:
        got, want = summary(rung(folder, name)), summary(rung(ladder, name))
        for key in ("steps", "train_flops", "first_loss", "final_loss"):
            assert got[key] == want[key], (name, key)
        assert history(rung(folder, name)) == history(rung(ladder, name))  # every step once, same losses
        a, b = weights(rung(folder, name)), weights(rung(ladder, name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert summary(folder)["ladder"] == summary(ladder)["ladder"]


def test_a_rung_that_fails_leaves_a_failed_record_of_its_own_and_the_ladder_fails(tmp_path, monkeypatch):
    """A rung whose record cannot be made (here: its weights cannot be written, as on a full disk) fails in
    its own folder with the error, as any run would, and the ladder's record fails with it; the rung before
    it stays completed, and no later rung starts."""
    real = ladder_stage.pretrained

    def failing(run, folder, *args, **kwargs):
        if folder.name == RUNGS[1]:
            raise BudgetSSLError(f"no space left on the device to write {folder / 'backbone.safetensors'}")
        return real(run, folder, *args, **kwargs)

    monkeypatch.setattr(ladder_stage, "pretrained", failing)
    folder = tmp_path / "run"
    assert run_in_process("budgetssl-pretrain", *LADDER, folder=folder) == 2
    failed = summary(rung(folder, RUNGS[1]))
    assert failed["status"] == "failed" and failed["error_type"] == "BudgetSSLError"
    assert "no space left" in failed["error"] and failed["budget_flops"] == 3.2e10
    assert failed["wall_seconds"] > 0 and failed["finished_at"]
    assert summary(rung(folder, RUNGS[0]))["status"] == "completed"
    assert not (rung(folder, RUNGS[2]) / "summary.json").exists()
    assert summary(folder)["status"] == "failed" and "no space left" in summary(folder)["error"]


# --- config ---------------------------------------------------------------------------------------


def test_budget_ladder_alone_sets_the_budget_and_the_schedule():
    run = run_config("budget.ladder=[4e11,1e11,2e11]")
    assert run.budget.flops == 4e11 and run.train.schedule == "wsd" and run.train.cooldown_fraction == 0.2
    plain = run_config()
    assert plain.budget.flops == 1e12 and plain.budget.ladder is None and plain.train.schedule == "cosine"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget.ladder=[1e11,2e11]", "train.schedule=cosine"], r"budget.ladder needs train.schedule=wsd"),
        (
            ["budget.ladder=[1e11,2e11]", "budget.flops=3e11"],
            r"budget.flops=3e11 disagrees with budget.ladder=\[1e11,2e11\].*set budget.flops=2e11",
        ),
        (
            ["budget.ladder=[1e11,2e11]", "train.warmup_fraction=0.85"],
            r"train.warmup_fraction=0.85 ends the lr's warm-up after the smallest rung's branch point",
        ),
        (
            ["train.schedule=wsd", "train.warmup_fraction=0.8"],
            r"after the branch point .* lower train.warmup",
        ),
        (["train.cooldown_fraction=0"], r"train.cooldown_fraction must be in \(0, 1\)"),
        (["train.cooldown_fraction=1.0"], r"train.cooldown_fraction must be in \(0, 1\)"),
        (["budget.ladder=[]"], r"budget.ladder must list at least one budget"),
        (["budget.ladder=[1e11,1e11]"], r"budget.ladder lists a budget twice"),
        (["budget.ladder=[-1e11,1e11]"], r"budget.ladder's budgets must be positive"),
        (["train.schedule=linear"], r"train.schedule must be one of cosine, wsd; got 'linear'"),
    ],
)
def test_a_ladder_that_cannot_train_is_refused_naming_the_options(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config(*overrides)


def test_a_bad_ladder_exits_non_zero_with_a_failed_record(tmp_path, capsys):
    code = run_in_process(
        "budgetssl-pretrain", *TINY, "budget.ladder=[1e10]", "budget.flops=2e10", folder=tmp_path
    )
    assert code == 2 and summary(tmp_path)["status"] == "failed"
    assert "budget.flops=2e10 disagrees with budget.ladder" in capsys.readouterr().err


def job(*overrides: str) -> dict:
    cfg = compose_config(list(overrides))
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
    }


def test_run_folders_without_a_ladder_keep_their_names_and_checkpoints():
    """The hashes of run folders named before these options existed (computed then), and a checkpoint
    written then resumes: the new keys at their defaults are as if absent. The readout section came
    later and renames every folder on purpose (records made before it hold no read-outs and the former
    probe): without it, the names are those of then. So does the EMA teacher's `method.momentum_rule`
    (its default, published, changes what DINO and BYOL train): without it and its floor, the same."""

    def before_readout(*overrides: str) -> dict:
        config = {k: v for k, v in job(*overrides).items() if k != "readout"}
        method = {k: v for k, v in config["method"].items() if k not in ("momentum_rule", "momentum_floor")}
        return config | {"method": method}

    assert config_hash(before_readout(), "pretrain") == "00ac1e83f5"
    assert config_hash(before_readout(), "run") == "0c6670e7fa"
    assert config_hash(before_readout("method=cpu/dino", "budget.flops=5e11"), "pretrain") == "677bceecee"
    tuned = before_readout("method=mae", "train.batch_size=64", "+experiment=tune_cpu")
    assert config_hash(tuned, "run") == "f4b3efa9c9"
    assert config_hash(job(), "run") != "0c6670e7fa"  # the readout section renames
    dino = {k: v for k, v in job("method=cpu/dino", "budget.flops=5e11").items() if k != "readout"}
    assert config_hash(dino, "pretrain") != "677bceecee"  # and the teacher's rule
    ladder = job("budget.ladder=[5e11,1e12]")
    assert config_hash(ladder, "pretrain") != config_hash(job(), "pretrain")  # another folder
    assert config_hash(job("train.schedule=wsd"), "pretrain") != config_hash(job(), "pretrain")
    before = run_config().to_dict()
    for section, key in (("train", "schedule"), ("train", "cooldown_fraction"), ("budget", "ladder")):
        del before[section][key]
    check_same_config(before, run_config().to_dict(), Path("run/checkpoints/step_1.pt"))
    with pytest.raises(ConfigError, match="holds a checkpoint of another config"):
        check_same_config(
            before, run_config("train.schedule=wsd").to_dict(), Path("run/checkpoints/step_1.pt")
        )


# --- torchrun ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_ladder_under_torchrun_trains_every_rung_on_both_ranks(ladder, tmp_path):
    """Two gloo ranks follow the same sequence (trunk, handoff, branch, ...); every train() call ends
    with the ranks' parameters compared (engine/distributed.py check_in_sync), and rank 0 writes."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    folder = tmp_path / "run"
    two = [o for o in LADDER if not o.startswith("budget.ladder=")] + [
        f"budget.ladder=[{RUNGS[0]},{RUNGS[1]}]"
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", __file__, str(folder), *two],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in RUNGS[:2]:  # a ladder of two: the reference's first two rungs, but for its rung list
        got, want = summary(rung(folder, name)), summary(rung(ladder, name))
        assert got["status"] == "completed" and got["world_size"] == 2
        for key in ("flops_per_step", "steps", "train_flops"):
            assert got[key] == want[key], (name, key)
        assert {**got["ladder"], "rungs": None} == {**want["ladder"], "rungs": None}
        steps = [r["step"] for r in rows(rung(folder, name) / "metrics.jsonl")]
        assert steps == list(range(1, STEPS[name] + 1))  # rank 0 alone logged
    assert summary(folder)["ladder"]["trunk_steps"] == BRANCH[RUNGS[1]]
    print(f"a ladder under torchrun, 2 processes: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":  # a torchrun worker: python tests/test_ladder.py RUN_FOLDER OVERRIDE...
    sys.exit(run_in_process("budgetssl-pretrain", *sys.argv[2:], folder=Path(sys.argv[1])))
