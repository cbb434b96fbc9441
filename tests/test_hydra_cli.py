"""Hydra around the commands: Hydra's own options (--cfg) working after overrides (every sweep's config
kept: tests/test_sweeps.py)."""

from __future__ import annotations

from conftest import cli


def test_cfg_job_after_overrides_prints_the_job_config_and_creates_no_run_folder(tmp_path):
    proc = cli("budgetssl-run", "budget.flops=5e9", "method=mae", "--cfg", "job", cwd=tmp_path)
    assert "flops: 5000000000.0" in proc.stdout and "name: mae" in proc.stdout
    assert "hydra:" not in proc.stdout  # the job's config, not Hydra's
    assert list(tmp_path.iterdir()) == []
