"""Hydra around the commands: every sweep's config kept, and Hydra's own options (--cfg) working after
overrides."""

from __future__ import annotations

from conftest import cli


def test_two_sweeps_into_one_sweep_dir_keep_both_sweep_configs(tmp_path):
    # A config error fails each run at once: the sweep's bookkeeping is what is tested here.
    for precision in ("fp63", "fp64"):
        sweep = ["--multirun", f"train.precision={precision}"]
        proc = cli("budgetssl-pretrain", *sweep, cwd=tmp_path, check=False)
        assert "RunFailed" in proc.stderr, proc.stderr[-3000:]
    sweep_dir = tmp_path / "results" / "runs"
    kept = sorted(sweep_dir.glob("multirun_*.yaml"))
    assert len(kept) == 2
    assert "train.precision=fp63" in kept[0].read_text() and "train.precision=fp64" in kept[1].read_text()
    assert (sweep_dir / "multirun.yaml").read_text() == kept[1].read_text()  # Hydra's: the latest


def test_cfg_job_after_overrides_prints_the_job_config_and_creates_no_run_folder(tmp_path):
    proc = cli("budgetssl-run", "budget.flops=5e9", "method=mae", "--cfg", "job", cwd=tmp_path)
    assert "flops: 5000000000.0" in proc.stdout and "name: mae" in proc.stdout
    assert "hydra:" not in proc.stdout  # the job's config, not Hydra's
    assert list(tmp_path.iterdir()) == []
