"""budgetssl-plan: a sweep priced before it runs equals what its runs then spend, in the folders Hydra's
own multirun makes for them; a completed job is skipped; each warning fires on a config made to trigger
it; an unknown plan.device lists the valid ones; MFU from records; and budgetssl-report's cost of
reaching a predicted budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import pytest
from hydra.core.hydra_config import HydraConfig

from budgetssl.cli import plan as plan_cli
from budgetssl.cli import report
from budgetssl.config.paths import config_dir
from budgetssl.config.run_name import spell_budget
from budgetssl.meter.peak import ACCELERATORS
from budgetssl.plan.sweep import make
from conftest import TINY, run_in_process, summary

pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny runs with the probe on (few images, two epochs of its heads) and without the read-outs and
# monitors, which cost seconds and are not priced.
SMALL = [*TINY, "readout.classify=false", "train.monitor_images=0", "transfer.probe=true",
         "readout.probe_images=16", "readout.max_epochs=2"]  # fmt: skip
BUDGETS = "budget.flops=3e9,6e9"


def hydra_job_folders(args: list[str]) -> list[Path]:
    """The run folders Hydra's own sweep makes for `budgetssl-run args` (its sweeper, launcher and
    run_job under budgetssl's config tree, as cli/common.py's hydra.main runs them), the jobs not run."""
    made = []

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def job(cfg) -> None:
        made.append(Path(HydraConfig.get().runtime.output_dir))

    quiet = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["budgetssl-run", *args, *quiet])
        job()
    return made


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-job sweep planned, run (each job as budgetssl-run runs it, in the folder Hydra makes for it),
    then planned again."""
    root = tmp_path_factory.mktemp("swept")
    args = [*SMALL, BUDGETS, f"hydra.sweep.dir={root / 'runs'}"]
    before = make(args, multirun=True)
    folders = hydra_job_folders(["--multirun", *args])
    for row, folder in zip(before.rows, folders, strict=True):
        assert Path(row.folder) == folder  # Hydra's expansion and names, job for job
        assert run_in_process("budgetssl-run", *row.overrides, folder=folder) == 0
    after = make(args, multirun=True)
    return root, before, after


def test_a_sweeps_plan_is_what_its_runs_spend(swept):
    _, before, _ = swept
    assert [r.status for r in before.rows] == ["planned"] * 2
    for row in before.rows:
        record = summary(Path(row.folder))
        assert record["status"] == "completed"
        assert row.flops_per_step == record["flops_per_step"]
        assert row.steps == record["steps"] and row.pretrain_flops == record["train_flops"]
        assert row.transfer_flops == record["transfer_flops"]
        assert row.probe_flops == record["probe_feature_flops"]  # the probe's heads are not priced
        assert row.total_flops == record["total_flops"] + record["probe_feature_flops"]
        assert row.budget == spell_budget(record["budget_flops"])
    assert before.summary["totals"]["total_flops"] == sum(r.total_flops for r in before.rows)
    assert before.summary["distinct_counts"] == 3  # one step, one transfer step, one probe pass


def test_a_completed_job_is_skipped_and_not_counted(swept, capsys):
    root, _, after = swept
    assert [r.status for r in after.rows] == ["completed"] * 2
    assert all("skipped, already completed" in r.warnings[0] for r in after.rows)
    assert after.summary["totals"]["completed"] == 2 and after.summary["totals"]["total_flops"] == 0
    # rerun=true runs them again: priced.
    plan_cli.main([*SMALL, "budget.flops=3e9", "rerun=true", f"hydra.run.dir={after.rows[0].folder}"])
    out = capsys.readouterr().out
    assert "rerun=true: runs again" in out and "1 planned, 0 already completed" in out


def test_the_plan_writes_its_table_csv_and_json(swept, capsys):
    root, _, _ = swept
    out = root / "plan_out"
    plan_cli.main(["--multirun", *SMALL, BUDGETS, f"hydra.sweep.dir={root / 'runs'}", f"plan.out={out}"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["job", "status", "method"]
    assert "2 already completed (skipped)" in printed
    planned = json.loads((out / "plan.json").read_text())
    assert [j["status"] for j in planned["jobs"]] == ["completed"] * 2 and "totals" in planned
    header = (out / "plan.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["job", "status", "method", "backbone"] and "co2_kg" in header


def cost_line(text: str, config: str) -> str:
    """The line of the report's "Cost of reaching" section for `config` (method / dataset / backbone)."""
    costs = text.split("### Cost of reaching", 1)[1]
    return next(x for x in costs.splitlines() if x.startswith(f"- {config}:"))


def test_the_report_prices_reaching_the_predicted_budget_on_the_runs_device(swept):
    root, _, _ = swept
    report.main([str(root / "runs"), "--out", str(root / "report"), "--predict-at", "1e15"])
    text = (root / "report" / "report.md").read_text()
    assert "### Cost of reaching 1e+15 FLOPs" in text
    line = cost_line(text, "supervised / synthetic / vit_nano")
    # On this CPU: its measured peak and MFU give the hours; no datasheet gives its board power.
    assert "device-hours on" in line and "median measured MFU" in line and "of 2 run(s)" in line
    assert "no energy estimate" in line


# The configs below are priced, not run: no probe, no read-outs.
BASE = [*TINY, "readout.classify=false", "train.monitor_images=0"]


def planned(*overrides: str, multirun: bool = True):
    return make([*BASE, *overrides], multirun=multirun).rows


def test_budgets_below_one_step_are_the_jobs_errors_and_a_short_ladder_warns_of_its_warm_up():
    # One sweep, one count: a ladder whose smallest rung ends before its warm-up takes a step, one whose
    # smallest rung branches before the trunk's first step, a budget below one step, and a long budget.
    rows = planned("train.warmup_fraction=0.2", "budget.ladder=[2e9,2e10],[1e5,1e10],[1e5],null")
    short, branch, below, long = rows
    assert short.status == "planned" and any("of its smallest rung's" in w for w in short.warnings)
    # The ladder trains its trunk and each cool-down once, and transfers each of its two rungs.
    assert short.pretrain_flops == short.steps * short.flops_per_step < 2.2e10
    assert short.transfer_flops == 2 * long.transfer_flops and short.budget == "ladder [2e9,2e10]"
    assert branch.status == "error" and "branches before the trunk's first step" in branch.error
    assert below.status == "error" and "smaller than one training step" in below.error
    assert long.status == "planned" and not any("warm-up" in w for w in long.warnings)


def test_the_warnings_fire_on_configs_made_to_trigger_them():
    # A handful of steps: the lr's warm-up (10% of 3 steps) is over after the first; BYOL's teacher under
    # each start rule; a batch of 16 on 3 GPUs does not split.
    rows = planned("method=cpu/byol", "budget.flops=3e9", "train.warmup_fraction=0.1", "plan.gpus=3",
                   "method.momentum_rule=published,budget_aware,floor")  # fmt: skip
    published, aware, floor = (" | ".join(r.warnings) for r in rows)
    assert all(r.status == "planned" and r.steps < 10 for r in rows)
    assert "the lr warm-up (train.warmup_fraction=0.1 of the run's" in published
    assert "under method.momentum_rule=published the start stays 0.99" in published
    assert "train.batch_size=16 is the global batch and is not divisible by the job's 3 GPUs" in published
    assert "transfer.batch_size=16" in published
    assert "the budget-aware start takes over: the teacher starts at" in aware
    assert "held at the floor 0.99" in floor


def test_an_unknown_device_lists_the_valid_ones_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.main([*BASE, "plan.device=h100"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "plan.device='h100' is not in the peak table" in err
    assert all(name in err for name in ACCELERATORS)
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.main([*BASE, "plan.mfu=1.5"])
    assert exit_info.value.code == 2 and "plan.mfu must be in (0, 1]" in capsys.readouterr().err


def record(folder, method, mfu, budget, miou):
    """A completed record of a run on an H100 in bf16, as budgetssl-run writes its fields."""
    folder.mkdir(parents=True)
    flat = {"status": "completed", "method": method, "dataset": "synthetic", "backbone": "vit_nano",
            "budget_flops": budget, "train_flops": budget, "transfer_flops": 1e10,
            "total_flops": budget + 1e10, "miou": miou, "precision": "bf16", "mfu": mfu,
            "peak_flops_per_s": 989.5e12, "environment": {"device": "NVIDIA H100 80GB HBM3"},
            "hardware_model": {"pue": 1.2, "grid_kg_per_kwh": 0.5}}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(flat))


def test_the_mfu_is_the_median_of_matching_records_and_the_report_prices_at_it(tmp_path):
    runs = tmp_path / "runs"
    for i, (mfu, budget, miou) in enumerate([(0.3, 1e12, 30.0), (0.45, 2e12, 34.0), (0.5, 4e12, 36.0)]):
        record(runs / f"sup{i}", "supervised", mfu, budget, miou)
    record(runs / "mae", "mae", 0.2, 1e12, 25.0)
    args = ["train.precision=bf16", "plan.device=h100_sxm", f"plan.from_runs={runs}", "budget.flops=3e9",
            "method=supervised,cpu/byol", "plan.mfu=null,0.25",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    rows = planned(*args)
    # A sweep over a config group too: the folders Hydra's own multirun makes, job for job.
    assert [Path(r.folder) for r in rows] == hydra_job_folders(["--multirun", *BASE, *args])
    row, given, other, _ = rows
    assert row.mfu == 0.45 and row.mfu_records == 3 and "median of 3 completed record(s)" in row.mfu_source
    # GPU-hours at that MFU of the H100's dense bf16 peak, energy at its 700 W board power and the PUE.
    hours = row.total_flops / (989.5e12 * 0.45) / 3600
    assert row.gpu_hours == pytest.approx(hours) and row.energy_kwh == pytest.approx(hours * 0.7 * 1.1)
    assert given.mfu == 0.25 and given.mfu_source == "plan.mfu"
    assert other.mfu == 0.4 and other.mfu_records == 0 and "assumed" in other.mfu_source  # no byol record

    report.main([str(runs), "--out", str(tmp_path / "out"), "--predict-at", "1e15"])
    line = cost_line((tmp_path / "out" / "report.md").read_text(), "supervised / synthetic / vit_nano")
    expected = 1e15 / (989.5e12 * 0.45) / 3600
    assert f"{expected:.3g} device-hours on h100_sxm" in line and "of 3 run(s)" in line
    assert f"{expected * 0.7 * 1.2:.3g} kWh" in line and "PUE 1.2" in line
