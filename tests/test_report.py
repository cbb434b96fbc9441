"""budgetssl-report and budgetssl-plot over hand-written records, including a failed and a corrupt one."""

from __future__ import annotations

import json

from conftest import cli


def write(folder, name, record):
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps(record) if isinstance(record, dict) else record)


def make_runs(root):
    base = {"status": "completed", "dataset": "synthetic", "backbone": "vit_nano", "energy_kwh": 1e-4,
            "co2_kg": 4e-5, "co2_kg_estimated": 1e-7, "transfer_flops": 1e11}  # fmt: skip
    for i, (budget, miou) in enumerate([(1e12, 30.0), (2e12, 35.5)]):
        write(root, f"sup{i}", {**base, "method": "supervised", "budget_flops": budget, "train_flops": budget,
                                "total_flops": budget + 1e11, "miou": miou})  # fmt: skip
    write(root, "random", {**base, "method": "random_init", "budget_flops": 0.0, "train_flops": 0,
                           "total_flops": 1e11, "miou": 25.0})  # fmt: skip
    write(root, "failed", {"status": "failed", "error": "boom", "method": "supervised"})
    write(root, "corrupt", '{"status": "compl')


def test_report_tables_completed_runs_and_counts_the_rest(tmp_path):
    make_runs(tmp_path / "runs")
    proc = cli("budgetssl-report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert "3 completed run(s); ignored 1 failed or unfinished and 1 unreadable" in proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 3
    assert rows[0].startswith("| random_init |")
    assert "| 35.50 |" in rows[2] and "| 2e+12 |" in rows[2]
    figure = tmp_path / "out" / "miou_vs_flops.png"
    assert figure.stat().st_size > 10_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_chosen_axes_and_empty_folder(tmp_path):
    make_runs(tmp_path / "runs")
    out = tmp_path / "energy.png"
    cli("budgetssl-plot", str(tmp_path / "runs"), "--x", "train_flops", "--y", "miou", "--out", str(out))
    assert out.stat().st_size > 10_000
    (tmp_path / "empty").mkdir()
    proc = cli("budgetssl-report", str(tmp_path / "empty"), check=False)
    assert proc.returncode == 1 and "nothing to report" in proc.stderr
