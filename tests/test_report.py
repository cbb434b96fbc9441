"""budgetssl-report and budgetssl-plot over hand-written records, including a failed and a corrupt one (each
command once through its console script, the rest in this process)."""

from __future__ import annotations

import json

import pytest

from budgetssl.cli import report
from conftest import cli


def write(folder, name, record):
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps(record) if isinstance(record, dict) else record)


def section(report: str, title: str) -> list[str]:
    """The table rows (header included, rule excluded) under a heading of the report."""
    lines = report.split("\n" + title, 1)[1].splitlines()
    rows = []
    for line in lines[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| "):
            rows.append(line)
    return rows


def make_runs(root):
    base = {"status": "completed", "dataset": "synthetic", "backbone": "vit_nano", "energy_kwh": 1e-4,
            "co2_kg": 4e-5, "co2_kg_estimated": 1e-7, "transfer_flops": 1e11}  # fmt: skip
    recipe = {"optimizer": "lars", "lr": 1.2e-4, "base_lr": 1e-4}
    for i, (budget, miou, probe) in enumerate([(1e12, 30.0, 22.0), (2e12, 35.5, 27.0)]):
        write(root, f"sup{i}", {**base, "method": "supervised", "budget_flops": budget, "train_flops": budget,
                                "total_flops": budget + 1e11, "miou": miou, "miou_objects": miou - 10,
                                "probe_miou": probe, "probe_flops": 4e10, "recipe": recipe})  # fmt: skip
    write(root, "random", {**base, "method": "random_init", "budget_flops": 0.0, "train_flops": 0,
                           "total_flops": 1e11, "miou": 25.0, "miou_objects": 12.0, "probe_miou": 20.0,
                           "probe_flops": 4e10})  # fmt: skip
    write(root, "failed", {"status": "failed", "error": "boom", "method": "supervised"})
    write(root, "corrupt", '{"status": "compl')


def test_report_tables_completed_runs_and_counts_the_rest(tmp_path):
    make_runs(tmp_path / "runs")
    proc = cli("budgetssl-report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert "3 completed run(s); ignored 1 failed or unfinished and 1 unreadable" in proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    rows = section(report, "## Runs")[1:]
    assert len(rows) == 3
    assert rows[0].startswith("| random_init |")
    assert "| 35.50 |" in rows[2] and "| 2e+12 |" in rows[2]
    figure = tmp_path / "out" / "miou_vs_flops.png"
    assert figure.stat().st_size > 10_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_by_another_metric_writes_its_own_files_beside_the_default(tmp_path, capsys):
    make_runs(tmp_path / "runs")
    out = tmp_path / "out"
    report.main([str(tmp_path / "runs"), "--out", str(out)])
    report.main([str(tmp_path / "runs"), "--out", str(out), "--metric", "probe_miou"])
    default, probe = (out / "report.md").read_text(), (out / "report_probe_miou.md").read_text()
    for name in ("miou_vs_flops", "probe_miou_vs_flops", "miou_vs_co2", "probe_miou_vs_co2"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](probe_miou_vs_flops.png)" in probe and "probe_miou_vs_flops" not in default
    # The findings rank by the chosen metric: random init's probe 20.00, supervised's best probe 27.00.
    assert "- random init (vit_nano): probe mIoU 20.00" in probe
    assert "- random init (vit_nano): mIoU 25.00" in default
    assert "| 2e+12 | supervised | synthetic | vit_nano | 27.00 |" in probe
    assert "| 2e+12 | supervised | synthetic | vit_nano | 35.50 |" in default
    # The table of runs is the same in both: the recipe and every score, "-" where a record has none.
    header, *rows = section(probe, "## Runs")
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = {r.split(" | ")[0][2:]: [c.strip() for c in r.strip("|").split("|")] for r in rows}
    at = {
        name: columns.index(name) for name in ("optimizer", "lr (scaled)", "probe mIoU %", "objects mIoU %")
    }
    assert [cells["random_init"][at[c]] for c in at] == ["-", "-", "20.00", "12.00"]
    assert (
        cells["supervised"][at["optimizer"]] == "lars" and cells["supervised"][at["lr (scaled)"]] == "0.00012"
    )
    assert section(default, "## Runs") == [header, *rows]
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "runs"), "--metric", "accuracy"])
    assert "invalid choice: 'accuracy'" in capsys.readouterr().err


def test_a_metric_no_run_has_is_a_clear_error(tmp_path, capsys):
    write(
        tmp_path / "runs", "old", {"status": "completed", "method": "mae", "miou": 30.0, "total_flops": 1e12}
    )
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "runs"), "--metric", "probe_miou"])
    assert exit_info.value.code == 1
    assert (
        "no completed run has 'probe_miou' (run the transfer with transfer.probe=true)"
        in capsys.readouterr().err
    )


def test_plot_chosen_axes_and_empty_folder(tmp_path, capsys):
    make_runs(tmp_path / "runs")
    out = tmp_path / "energy.png"
    cli("budgetssl-plot", str(tmp_path / "runs"), "--x", "train_flops", "--y", "miou", "--out", str(out))
    assert out.stat().st_size > 10_000
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "empty")])
    assert exit_info.value.code == 1 and "nothing to report" in capsys.readouterr().err


def make_grid(root):
    """Two backbones, two methods, three budgets, two seeds of one configuration, random init per backbone."""
    base = {"status": "completed", "dataset": "synthetic", "energy_kwh": 1e-4, "transfer_flops": 1e11}
    params = {"vit_small": 22e6, "vit_large": 300e6}
    grid = [
        ("supervised", "vit_small", 1e12, 0, 30.0), ("supervised", "vit_small", 1e13, 0, 36.0),
        ("supervised", "vit_small", 1e14, 0, 38.0), ("supervised", "vit_large", 1e12, 0, 25.0),
        ("supervised", "vit_large", 1e13, 0, 34.0), ("supervised", "vit_large", 1e14, 0, 42.0),
        ("mae", "vit_small", 1e12, 0, 31.0), ("mae", "vit_small", 1e12, 1, 33.0),
        ("mae", "vit_small", 1e13, 0, 35.0),
    ]  # fmt: skip
    for i, (method, backbone, budget, seed, miou) in enumerate(grid):
        write(root, f"run{i}", {**base, "method": method, "backbone": backbone, "budget_flops": budget,
                                "seed": seed, "train_flops": budget - 1e11, "total_flops": budget,
                                "miou": miou, "co2_kg": budget * 1e-16,
                                "params": params[backbone]})  # fmt: skip
    for backbone, miou in (("vit_small", 20.0), ("vit_large", 18.0)):
        write(root, f"random_{backbone}", {**base, "method": "random_init", "backbone": backbone,
                                           "dataset": None, "budget_flops": 0.0, "train_flops": 0,
                                           "total_flops": 1e11, "miou": miou,
                                           "transfer_co2_kg": 1e-5})  # fmt: skip
    write(root, "failed", {"status": "failed", "error": "boom", "method": "dino"})
    write(root, "corrupt", "{not json")


def test_report_finds_the_front_the_best_method_per_budget_and_the_crossing(tmp_path, capsys):
    make_grid(tmp_path / "runs")
    report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr()
    assert "11 completed run(s); ignored 1 failed or unfinished and 1 unreadable" in printed.err
    markdown = (tmp_path / "out" / "report.md").read_text()
    front = [r.split(" | ")[:3] for r in section(markdown, "### Pareto front")[1:5]]
    assert front == [
        ["| random_init", "-", "vit_small"],
        ["| mae", "synthetic", "vit_small"],
        ["| supervised", "synthetic", "vit_small"],
        ["| supervised", "synthetic", "vit_large"],
    ]
    best = [r.split(" | ") for r in section(markdown, "### Pareto front") if r.startswith("| 1e+1")]
    assert [(r[1], r[3], r[4]) for r in best] == [
        ("mae", "vit_small", "32.00 |"),
        ("supervised", "vit_small", "36.00 |"),
        ("supervised", "vit_large", "42.00 |"),
    ]
    # Large minus small on a log axis: -2 at 1e13, +4 at 1e14, so zero a third of the decade in.
    crossing = section(markdown, "### Where a larger backbone overtakes")[1:]
    assert len(crossing) == 1 and crossing[0].startswith("| supervised | synthetic | vit_small | vit_large |")
    assert crossing[0].endswith(f"| {1e13 * 10 ** (1 / 3):.3g} |")
    assert "| mae | synthetic | vit_small | 1e+12 | 2 | 32.00 | 1.41 |" in markdown
    assert "failed or unfinished: `" in markdown and "unreadable: `" in markdown
    for name in ("miou_vs_flops", "miou_vs_co2", "miou_vs_flops_facets", "miou_vs_co2_facets"):
        image = tmp_path / "out" / f"{name}.png"
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000
        assert f"]({name}.png)" in markdown
    assert "random init (vit_large): mIoU 18.00" in printed.out
