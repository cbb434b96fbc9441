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
        ("mae", "vit_small", 1e12, 0, 31.6), ("mae", "vit_small", 1e12, 1, 32.4),
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
    # The noise: mae's two seeds at 1e12 (31.6, 32.4) give the pooled std 0.57, which every single-seed
    # point borrows: two single seeds tie within 2 * sqrt(0.32 + 0.32) = 1.6.
    assert (
        "pooled within-configuration std, 0.57 (from 1 configuration(s) with several seeds, 2 runs)"
        in markdown
    )
    front = [r.split(" | ") for r in section(markdown, "### Pareto front")[1:6]]
    assert [(r[0], r[2], r[3], r[-1]) for r in front] == [
        ("| random_init", "vit_small", "-", "1 seed |"),
        ("| mae", "vit_small", "1e+12", "- |"),
        ("| supervised", "vit_small", "1e+13", "tied with mae/vit_small@1e+13; 1 seed |"),
        ("| mae", "vit_small", "1e+13", "tied with supervised/vit_small@1e+13; 1 seed |"),
        ("| supervised", "vit_large", "1e+14", "1 seed |"),
    ]
    best = [r.split(" | ") for r in section(markdown, "### Pareto front") if r.startswith("| 1e+1")]
    assert [(r[0], r[1], r[3], r[4], r[5], r[6]) for r in best] == [
        ("| 1e+12", "mae", "vit_small", "32.00", "2", "best |"),
        (
            "| 1e+13",
            "supervised",
            "vit_small",
            "36.00",
            "1",
            "best, tied with 1 other(s) (rests on one seed) |",
        ),
        ("| 1e+13", "mae", "vit_small", "35.00", "1", "tied with the best; 1 seed |"),
        ("| 1e+14", "supervised", "vit_large", "42.00", "1", "best (rests on one seed) |"),
    ]
    # Large minus small on a log axis: -2 at 1e13, +4 at 1e14, so zero a third of the decade in; the small
    # one is ahead beyond the noise at 1e12 and the large one at 1e14.
    crossing = section(markdown, "### Where a larger backbone overtakes")[1:]
    assert len(crossing) == 1 and crossing[0].startswith("| supervised | synthetic | vit_small | vit_large |")
    assert crossing[0].endswith(
        f"| {1e13 * 10 ** (1 / 3):.3g} | beyond noise: small ahead at 1e+12, large ahead at 1e+14 "
        "(rests on one seed) |"
    )
    assert "| mae | synthetic | vit_small | 1e+12 | 2 | 32.00 | 0.57 |" in markdown
    assert "failed or unfinished: `" in markdown and "unreadable: `" in markdown
    for name in ("miou_vs_flops", "miou_vs_co2", "miou_vs_flops_facets", "miou_vs_co2_facets"):
        image = tmp_path / "out" / f"{name}.png"
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000
        assert f"]({name}.png)" in markdown
    assert "random init (vit_large): mIoU 18.00 (1 seed)" in printed.out


def run(root, name, method, budget, miou, seed=0, backbone="vit_nano", total=None, **extra):
    """One completed run's record; its total FLOPs (pretraining + the 1e10 of fine-tuning) default to the
    budget, or to 1e10 for random init."""
    transfer = 1e10
    total = total or (budget if method != "random_init" else transfer)
    write(root, name, {"status": "completed", "method": method, "dataset": None if method == "random_init"
                       else "synthetic", "backbone": backbone, "seed": seed, "budget_flops": budget,
                       "train_flops": total - transfer, "transfer_flops": transfer, "miou": miou,
                       "co2_kg": 1e-6, **extra})  # fmt: skip


def test_differences_within_the_seeds_noise_are_ties_and_one_seed_verdicts_are_flagged(tmp_path):
    """clip and supervised at 1e12 differ by 0.5 with a std of 1 over three seeds each: tied (within
    2 * sqrt(1/3 + 1/3) = 1.63); mae's one seed, 8.5 below, is beaten; supervised's one seed at 4e12 leads."""
    root = tmp_path / "runs"
    for seed, (rand, sup, clip) in enumerate([(20.0, 29.0, 29.5), (21.0, 30.0, 30.5), (19.0, 31.0, 31.5)]):
        run(root, f"random{seed}", "random_init", 0.0, rand, seed)
        run(root, f"sup{seed}", "supervised", 1e12, sup, seed)
        run(root, f"clip{seed}", "clip", 1e12, clip, seed, total=1.01e12)
    run(root, "mae", "mae", 1e12, 22.0)
    run(root, "sup_4e12", "supervised", 4e12, 40.0)
    report.main([str(root), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "- random init (vit_nano): mIoU 20.00 ± 1.00 over 3 seeds" in markdown
    assert "tie when their means differ by less than 2 standard errors of the difference" in markdown
    assert (
        "pooled within-configuration std, 1.00 (from 3 configuration(s) with several seeds, 9 runs)"
        in markdown
    )
    front = [r.split(" | ") for r in section(markdown, "### Pareto front")[1:]]
    front = front[: next(i for i, r in enumerate(front) if r[0] == "| budget (FLOPs)")]
    assert [(r[0], r[3], r[6], r[7]) for r in front] == [
        ("| random_init", "-", "3", "- |"),
        ("| supervised", "1e+12", "3", "tied with clip/vit_nano@1e+12 |"),
        ("| clip", "1e+12", "3", "tied with supervised/vit_nano@1e+12 |"),
        ("| supervised", "4e+12", "1", "1 seed |"),
    ]
    best = [
        r.split(" | ") for r in section(markdown, "### Pareto front") if r.startswith(("| 1e+12", "| 4e+12"))
    ]
    assert [(r[0], r[1], r[4], r[5], r[6]) for r in best] == [
        ("| 1e+12", "clip", "30.50", "3", "best, tied with 1 other(s) |"),
        ("| 1e+12", "supervised", "30.00", "3", "tied with the best |"),
        ("| 4e+12", "supervised", "40.00", "1", "best (rests on one seed) |"),
    ]


def law(c):
    """A saturating law in total FLOPs: 25 at 1e11, rising towards 45."""
    return 45.0 - 39905.0 * c**-0.3


def test_scaling_fits_predict_back_test_and_say_when_there_are_too_few_budgets(tmp_path, capsys):
    from budgetssl.analysis.aggregate import aggregate
    from budgetssl.analysis.collect import collect
    from budgetssl.analysis.fits import fit_law

    root, budgets, offsets = tmp_path / "runs", (1e11, 1e12, 1e13, 1e14), (0.0, 0.2, -0.1, 0.4)
    for c, d in zip(budgets, offsets, strict=True):
        for seed, noise in enumerate((-0.3, 0.3)):
            run(root, f"mae_{c:g}_{seed}", "mae", c, law(c) + d + noise, seed)
        run(root, f"sup_{c:g}", "supervised", c, law(c) - 2.0)  # exact, one seed
    for c in budgets[:2]:
        run(root, f"byol_{c:g}", "byol", c, 20.0 + c / 1e12)
    out = tmp_path / "out"
    report.main([str(root), "--out", str(out)])
    markdown = (out / "report.md").read_text()
    assert (
        "- byol / synthetic / vit_nano: too few budgets (2; a fit needs 3): not fitted, not drawn."
        in markdown
    )
    assert "1000 resamples of the seeds within each budget (RNG seed 0)" in markdown
    assert "Predicted at F = 1e+15 total FLOPs (the default: 10x the largest budget" in markdown
    rows = {
        r.split(" | ")[0][2:]: [c.strip() for c in r.strip("|").split("|")]
        for r in section(markdown, "## Scaling fits")[1:]
    }
    assert set(rows) == {"mae", "supervised"}
    # The back-test: a fit of the three smaller budgets' means, asked for 1e14, beside the measured mean.
    three = fit_law(list(budgets[:3]), [law(c) + d for c, d in zip(budgets[:3], offsets[:3], strict=True)])
    predicted, measured = float(three(1e14)), law(1e14) + 0.4
    mae = rows["mae"]
    assert mae[3:5] == ["4", "2,2,2,2"] and mae[10] == "1e+14"
    assert mae[11].startswith(f"{predicted:.2f} [") and mae[12] == f"{measured:.2f}"
    assert mae[13] == f"{abs(predicted - measured):.2f}"
    # One seed per budget: the law is found (it is exact), without an interval.
    assert rows["supervised"][9] == f"{law(1e15) - 2.0:.2f} (no interval: one seed per budget)"
    assert float(rows["supervised"][8]) == pytest.approx(0.3, abs=1e-3)
    # --predict-at moves the prediction along the law.
    report.main([str(root), "--out", str(out), "--predict-at", "1e17"])
    again = (out / "report.md").read_text()
    assert "Predicted at F = 1e+17 total FLOPs (`--predict-at`)." in again
    assert f"| {law(1e17) - 2.0:.2f} (no interval: one seed per budget) |" in again
    assert f"| {law(1e15) - 2.0:.2f} (no interval" not in again
    # The best at F: mae (2 above supervised), whose interval supervised has none to overlap.
    assert (
        "### Predicted best at 1e+17 FLOPs" in again and "- best: mae / synthetic / vit_nano: mIoU" in again
    )
    assert "- not judged (one seed per budget, no interval): supervised / synthetic / vit_nano" in again
    # Only the fits with a law are drawn.
    _, curves = report.scaling_fits(aggregate(collect(root).records, "total_flops", "miou"), {}, None)
    assert sorted(c.fit.method for c in curves) == ["mae", "supervised"]
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(root), "--out", str(out), "--predict-at", "-1"])
    assert exit_info.value.code == 2
    assert "'-1' is not a positive number of FLOPs (e.g. 1e15)" in capsys.readouterr().err


def test_the_report_predicts_where_a_large_backbone_overtakes_a_small_one(tmp_path):
    """small: 40 - 10 t, large: 60 - 40 t with t = (C / 1e12)^-0.5: the curves cross at C = 2.25e12."""
    root = tmp_path / "runs"
    for c in (1e11, 1e12, 1e13, 1e14):
        t = (c / 1e12) ** -0.5
        run(root, f"small_{c:g}", "supervised", c, 40 - 10 * t, backbone="vit_small", params=22e6)
        run(root, f"large_{c:g}", "supervised", c, 60 - 40 * t, backbone="vit_large", params=300e6)
    report.main([str(root), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "report.md").read_text()
    (row,) = section(markdown, "### Predicted crossover")[1:]
    assert row.startswith(
        "| supervised | synthetic | vit_small | vit_large | large overtakes small at 2.25e+12 |"
    )


def test_crossings_within_the_noise_are_ties():
    from budgetssl.analysis.aggregate import Point
    from budgetssl.analysis.frontier import crossings
    from budgetssl.analysis.noise import noise_of

    def point(backbone, budget, values):
        m = sum(values) / len(values)
        s = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return Point("mae", "synthetic", backbone, budget, budget, m, s, len(values), values=tuple(values))

    # Large - small: -0.5 then +0.5, with seeds spread by 1: the means cross, the seeds cannot tell.
    pts = [
        point("vit_small", 1e12, (30.0, 31.0, 32.0)),
        point("vit_large", 1e12, (29.5, 30.5, 31.5)),
        point("vit_small", 1e13, (33.0, 34.0, 35.0)),
        point("vit_large", 1e13, (33.5, 34.5, 35.5)),
    ]
    (found,) = crossings(pts, {"vit_small": 1.0, "vit_large": 2.0}, noise_of(pts))
    assert found.flops == pytest.approx(10**12.5)
    assert found.verdict.startswith(
        "within noise: no crossing the seeds can tell apart (tied at 1e+12, 1e+13"
    )
    assert not found.single_seed


def test_a_wsd_rung_is_its_own_configuration(tmp_path):
    from budgetssl.analysis.aggregate import aggregate
    from budgetssl.analysis.collect import collect

    root = tmp_path / "runs"
    run(root, "cosine", "mae", 1e12, 30.0)
    run(root, "older", "mae", 1e12, 31.0, seed=1, schedule=None)  # before train.schedule: cosine
    run(root, "wsd", "mae", 1e12, 20.0, schedule="wsd")
    found = aggregate(collect(root).records, "total_flops", "miou")
    assert sorted((p.label, p.seeds, p.y) for p in found.points) == [("mae", 2, 30.5), ("mae (wsd)", 1, 20.0)]


def test_the_report_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import budgetssl.cli.report, budgetssl.analysis.fits"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# Collapsed runs, the findings of methods that do not learn, the classification metrics.
COLLAPSED = {"rule": "rank_ratio", "values": {"rank_ratio": 0.31, "kl": 0.5},
             "thresholds": {"rank_ratio": 0.5, "kl": 0.1}, "rules": ["rank_ratio"]}  # fmt: skip


def fit_rows(markdown):
    return {
        r.split(" | ")[0][2:]: [c.strip() for c in r.strip("|").split("|")]
        for r in section(markdown, "## Scaling fits")[1:]
    }


def test_a_collapsed_run_is_marked_listed_and_left_out_of_the_front_best_and_fits(tmp_path):
    """mae follows the law exactly; byol scores 2 above it at every budget but collapsed at 1e13: left out,
    mae is the best there and on the front; --include-collapsed puts byol's point back, marked."""
    root = tmp_path / "runs"
    run(root, "random", "random_init", 0.0, 20.0, collapse=None)
    for c in (1e11, 1e12, 1e13, 1e14):
        run(root, f"mae_{c:g}", "mae", c, law(c), collapse=None)
        run(root, f"byol_{c:g}", "byol", c, law(c) + 2.0, collapse=COLLAPSED if c == 1e13 else None)
    out = tmp_path / "out"
    report.main([str(root), "--out", str(out)])
    markdown = (out / "report.md").read_text()
    # Listed with its rule and values; the rule for partly collapsed points is stated.
    (listed,) = [
        line for line in markdown.splitlines() if line.startswith("- byol / synthetic / vit_nano at")
    ]
    assert listed.startswith("- byol / synthetic / vit_nano at 1e+13 FLOPs, seed 0 (`")
    assert listed.endswith("`): `rank_ratio`: rank_ratio 0.31 (threshold 0.5), kl 0.5 (threshold 0.1)")
    assert "marked collapsed when any of its seeds is; its mean stays over all its seeds" in markdown
    # The runs table marks it in its `collapsed` column; runs.csv has the rule as a column.
    header, *rows = section(markdown, "## Runs")
    at = [c.strip() for c in header.strip("|").split("|")].index("collapsed")
    marks = sorted([c.strip() for c in r.strip("|").split("|")][at] for r in rows)
    assert marks == ["-"] * 8 + ["rank_ratio"]
    csv_rows = list(__import__("csv").DictReader((out / "runs.csv").open()))
    assert sorted(r["collapse.rule"] for r in csv_rows) == [""] * 8 + ["rank_ratio"]
    # Out of the front and the best per budget: mae is there at 1e13.
    front = [r.split(" | ")[:4] for r in section(markdown, "### Pareto front")[1:5]]
    assert [(r[0], r[3]) for r in front] == [
        ("| random_init", "-"), ("| byol", "1e+11"), ("| byol", "1e+12"), ("| mae", "1e+13")
    ]  # fmt: skip
    best = [r.split(" | ")[:2] for r in section(markdown, "### Pareto front") if r.startswith("| 1e+1")]
    assert best == [["| 1e+11", "byol"], ["| 1e+12", "byol"], ["| 1e+13", "mae"], ["| 1e+14", "byol"]]
    # Out of the fits: byol is fitted on its three other budgets, and the section says what it left out.
    assert fit_rows(markdown)["byol"][3] == "3"
    assert (
        "- left out of the fits as collapsed (`--include-collapsed` fits them): byol/vit_nano@1e+13"
        in markdown
    )
    # The means table marks it (one seed: no such table); the figure is drawn.
    assert (out / "miou_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report.main([str(root), "--out", str(out), "--include-collapsed"])
    again = (out / "report.md").read_text()
    assert "`--include-collapsed`: collapsed runs are in every verdict and fit below, marked." in again
    front = [r.split(" | ")[:4] for r in section(again, "### Pareto front")[1:5]]
    assert front[3][0] == "| byol (collapsed: rank_ratio)" and front[3][3] == "1e+13"
    best = [r.split(" | ")[:2] for r in section(again, "### Pareto front") if r.startswith("| 1e+13")]
    assert best == [["| 1e+13", "byol (collapsed: rank_ratio)"]]
    fitted = fit_rows(again)
    assert fitted["byol (collapsed at 1e+13: rank_ratio)"][3] == "4" and "left out of the fits" not in again


def test_the_figure_draws_a_collapsed_point_with_its_marker_and_never_on_the_front():
    import matplotlib.pyplot as plt
    from matplotlib.markers import MarkerStyle

    from budgetssl.analysis.aggregate import Point
    from budgetssl.analysis.figure import COLLAPSED as MARKER
    from budgetssl.analysis.figure import _draw

    points = [
        Point("mae", "synthetic", "vit_nano", 1e12, 1e12, 30.0, 0.0, 1),
        Point("byol", "synthetic", "vit_nano", 2e12, 2e12, 40.0, 0.0, 1, collapsed=1, rules=("kl",)),
        Point("mae", "synthetic", "vit_nano", 4e12, 4e12, 35.0, 0.0, 1),
    ]
    colours = {"mae": "red", "byol": "blue"}
    for include, on_front in ((False, [(1e12, 30.0), (4e12, 35.0)]), (True, [(1e12, 30.0), (2e12, 40.0)])):
        fig, ax = plt.subplots()
        _draw(ax, points, [], colours, include_collapsed=include)
        (step,) = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
        assert list(zip(*step.get_data(), strict=True)) == on_front
        style = MarkerStyle(MARKER)
        cross = style.get_path().transformed(style.get_transform()).vertices.tolist()
        drawn = [
            c for c in ax.collections if len(c.get_offsets()) and c.get_paths()[0].vertices.tolist() == cross
        ]
        assert [tuple(c.get_offsets()[0]) for c in drawn] == [(2e12, 40.0)]
        assert any(label.startswith("collapsed (") for label in ax.get_legend_handles_labels()[1])
        plt.close(fig)


def test_a_collapsed_backbone_point_is_left_out_of_the_crossings_and_the_fitted_crossover(tmp_path):
    """small: 40 - 10 t, large: 60 - 40 t, t = (C / 1e12)^-0.5; the large backbone collapsed at every budget
    but the first: no crossing can be judged; --include-collapsed finds the crossover at 2.25e12."""
    root = tmp_path / "runs"
    for c in (1e12, 3e12, 1e13, 3e13):
        t = (c / 1e12) ** -0.5
        run(root, f"small_{c:g}", "supervised", c, 40 - 10 * t, backbone="vit_small", params=22e6)
        run(root, f"large_{c:g}", "supervised", c, 60 - 40 * t, backbone="vit_large", params=300e6,
            collapse=COLLAPSED if c > 1e12 else None)  # fmt: skip
    out = tmp_path / "out"
    report.main([str(root), "--out", str(out)])
    markdown = (out / "report.md").read_text()
    (row,) = section(markdown, "### Where a larger backbone overtakes")[1:]
    assert row.startswith("| supervised | synthetic | vit_small | vit_large | needs two budgets each |")
    assert "### Predicted crossover" not in markdown
    report.main([str(root), "--out", str(out), "--include-collapsed"])
    again = (out / "report.md").read_text()
    (row,) = section(again, "### Where a larger backbone overtakes")[1:]
    assert row.startswith(
        "| supervised (collapsed at 3e+12, 1e+13, 3e+13: rank_ratio) | synthetic | vit_small |"
    )
    (fitted,) = section(again, "### Predicted crossover")[1:]
    assert fitted.startswith("| supervised (collapsed at 3e+12, 1e+13, 3e+13: rank_ratio) | synthetic |")
    assert "| large overtakes small at 2.25e+12 |" in fitted


def test_the_findings_name_a_method_below_random_init_and_one_falling_with_budget_beyond_noise(tmp_path):
    """Three seeds everywhere, spread 1: the noise margin is 2 * sqrt(1/3 + 1/3) = 1.63. byol is below random
    init (20) at every budget and falls from 1e12 to 2e12 by 3 (beyond noise), from 2e12 to 4e12 by 0.5
    (within); simclr at 1e12 is 0.5 below random init (within: not named); mae's 2e12 point has one
    collapsed seed: marked, left out of the best."""
    root = tmp_path / "runs"
    scores = {
        ("random_init", 0.0): 20.0, ("byol", 1e12): 16.0, ("byol", 2e12): 13.0, ("byol", 4e12): 12.5,
        ("simclr", 1e12): 19.5, ("simclr", 2e12): 25.0, ("mae", 1e12): 30.0, ("mae", 2e12): 34.0,
    }  # fmt: skip
    for (method, budget), mean in scores.items():
        for seed, d in enumerate((0.0, 1.0, -1.0)):
            bad = (
                COLLAPSED | {"rule": "kl", "rules": ["kl"]}
                if (method, budget, seed) == ("mae", 2e12, 2)
                else None
            )
            run(root, f"{method}_{budget:g}_{seed}", method, budget, mean + d, seed, collapse=bad)
    out = tmp_path / "out"
    report.main([str(root), "--out", str(out)])
    markdown = (out / "report.md").read_text()
    learned = markdown.split("### Methods that do not beat random init, or lose mIoU with budget", 1)[1]
    learned = learned.split("\n#", 1)[0].strip().splitlines()
    assert learned == [
        "- byol / synthetic / vit_nano is below random init beyond the seeds' noise at "
        "1e+12 FLOPs (16.00 against random init 20.00: 4.00 below, noise margin 1.63); "
        "2e+12 FLOPs (13.00 against random init 20.00: 7.00 below, noise margin 1.63); "
        "4e+12 FLOPs (12.50 against random init 20.00: 7.50 below, noise margin 1.63)",
        "- byol / synthetic / vit_nano falls with budget beyond the seeds' noise at "
        "2e+12 FLOPs (13.00 against 1e+12 FLOPs' 16.00: 3.00 below, noise margin 1.63)",
    ]
    # The partly collapsed point: marked in the means table, out of the best at 2e12 (simclr's there).
    assert (
        "| mae | synthetic | vit_nano | 2e+12 | 3 | 34.00 | 1.00 | collapsed in 1 of 3 seeds: kl |"
        in markdown
    )
    assert "| mae | synthetic | vit_nano | 1e+12 | 3 | 30.00 | 1.00 | - |" in markdown
    best = [r.split(" | ")[:2] for r in section(markdown, "### Pareto front") if r.startswith("| 2e+12")]
    assert best == [["| 2e+12", "simclr"]]
    # byol is below random init at its largest budget and falls: marked `did not learn`, with both reasons;
    # simclr (25 at 2e12) and mae beat random init where they end and never fall beyond the noise.
    unlearned = markdown.split("### Methods that did not learn (mIoU)", 1)[1].split("\n#", 1)[0]
    assert [line for line in unlearned.splitlines() if line.startswith("- ")] == [
        "- byol / synthetic / vit_nano: not above random init beyond the seeds' noise at its largest budget, "
        "4e+12 FLOPs (12.50 against 20.00, noise margin 1.63); falls with budget beyond the seeds' noise at "
        "2e+12 FLOPs (13.00 against 16.00)"
    ]


def test_a_method_that_does_not_beat_random_init_where_it_ends_or_falls_is_marked_and_left_out(tmp_path):
    """Three seeds, spread 1 (noise margin 1.63), random init 20. simclr scores 21 at both budgets: at its
    largest it ties random init, so it did not learn, although at 1e12 it is 2 above mae (beyond the noise)
    and would be the best there. dino beats random init everywhere but falls 30 -> 26: marked too. mae
    rises 19 -> 30: it learned. Marked points are tabled but out of the front, the best and the fits;
    --include-unlearned puts them back, marked."""
    root = tmp_path / "runs"
    scores = {
        ("random_init", 0.0): 20.0, ("simclr", 1e12): 21.0, ("simclr", 2e12): 21.0, ("dino", 1e12): 30.0,
        ("dino", 2e12): 26.0, ("mae", 1e12): 19.0, ("mae", 2e12): 30.0, ("mae", 4e12): 33.0,
    }  # fmt: skip
    for (method, budget), mean in scores.items():
        for seed, d in enumerate((0.0, 1.0, -1.0)):
            run(root, f"{method}_{budget:g}_{seed}", method, budget, mean + d, seed, collapse=None)
    out = tmp_path / "out"
    report.main([str(root), "--out", str(out)])
    markdown = (out / "report.md").read_text()
    unlearned = markdown.split("### Methods that did not learn (mIoU)", 1)[1].split("\n#", 1)[0]
    assert "left out of the Pareto front, the best method per budget, the crossings and the fits" in unlearned
    assert [line for line in unlearned.splitlines() if line.startswith("- ")] == [
        "- dino / synthetic / vit_nano: falls with budget beyond the seeds' noise at 2e+12 FLOPs (26.00 "
        "against 30.00)",
        "- simclr / synthetic / vit_nano: not above random init beyond the seeds' noise at its largest "
        "budget, 2e+12 FLOPs (21.00 against 20.00, noise margin 1.63)",
    ]
    best = [r.split(" | ")[:2] for r in section(markdown, "### Pareto front") if r.startswith("| 1e+12")]
    assert best == [["| 1e+12", "mae"]]
    front = [r.split(" | ")[0] for r in section(markdown, "### Pareto front")[1:] if " | " in r]
    assert "| simclr" not in front and "| dino" not in front
    assert "| simclr | synthetic | vit_nano | 1e+12 | 3 | 21.00 | 1.00 | did not learn |" in markdown
    assert (
        "- left out of the fits as methods that did not learn (`--include-unlearned` fits them): " in markdown
    )
    assert "| mae | synthetic | vit_nano | 3 |" in markdown  # mae's three budgets are fitted
    # Back in every verdict with --include-unlearned, marked.
    again_out = tmp_path / "again"
    report.main([str(root), "--out", str(again_out), "--include-unlearned"])
    again = (again_out / "report.md").read_text()
    best = [r.split(" | ")[:2] for r in section(again, "### Pareto front") if r.startswith("| 1e+12")]
    assert best == [["| 1e+12", "dino (did not learn)"]]
    assert "they stay in every verdict, marked, because of `--include-unlearned`" in again
    assert "left out of the fits as methods that did not learn" not in again


def test_the_findings_say_none_when_every_method_learns(tmp_path):
    make_runs(tmp_path / "runs")
    report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "- no method's mean mIoU is below random init's beyond the seeds' noise" in markdown
    assert "- no method's mean mIoU falls with budget beyond the seeds' noise" in markdown
    # Records written before the verdict existed: nothing is marked or left out, and the report says so.
    assert "No record carries a verdict (`collapse`: written before it existed)" in markdown


@pytest.mark.parametrize(("metric", "label"), [("knn_accuracy", "k-NN accuracy"),
                                               ("linear_accuracy", "linear accuracy")])  # fmt: skip
def test_the_classification_metrics_report_with_random_init_from_its_records(tmp_path, capsys, metric, label):
    root = tmp_path / "runs"
    run(root, "random", "random_init", 0.0, 20.0, **{metric: 31.0})
    run(root, "mae", "mae", 1e12, 30.0, **{metric: 45.0})
    run(root, "byol", "byol", 1e12, 28.0, **{metric: 25.0})
    out = tmp_path / "out"
    report.main([str(root), "--out", str(out), "--metric", metric])
    markdown = (out / f"report_{metric}.md").read_text()
    assert markdown.startswith(f"# budgetssl report: {label} (`{metric}`)")
    assert f"- random init (vit_nano): {label} 31.00 (1 seed)" in markdown
    assert "| 1e+12 | mae | synthetic | vit_nano | 45.00 |" in markdown
    assert (
        "- byol / synthetic / vit_nano is below random init beyond the seeds' noise at 1e+12 FLOPs (25.00"
        in markdown
    )
    for name in (f"{metric}_vs_flops", f"{metric}_vs_co2"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({metric}_vs_flops.png)" in markdown
    # A folder whose records lack the metric: an error that says what to run.
    bare = tmp_path / "bare"
    run(bare, "mae", "mae", 1e12, 30.0)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(bare), "--metric", metric])
    assert exit_info.value.code == 1
    assert (
        f"no completed run has '{metric}' (k-NN and linear accuracy are measured on the labelled held-out "
        "split" in capsys.readouterr().err
    )


def test_a_malformed_collapse_verdict_is_a_clear_error(tmp_path, capsys):
    run(tmp_path / "runs", "mae", "mae", 1e12, 30.0, collapse="yes")
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "runs")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "summary.json: 'collapse' is 'yes'; expected null, or an object {'rule': <name>" in err


def test_a_budget_where_every_point_collapsed_has_no_best_method(tmp_path):
    root = tmp_path / "runs"
    run(root, "mae", "mae", 1e12, 30.0, collapse=None)
    run(root, "byol", "byol", 2e12, 40.0, collapse=COLLAPSED)
    run(root, "dino", "dino", 2e12, 35.0, collapse=COLLAPSED | {"rule": "kl", "rules": ["kl", "rank_ratio"]})
    report.main([str(root), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert (
        "- at 2e+12 FLOPs every point is collapsed: no best method (`--include-collapsed` to rank them)"
        in markdown
    )
    assert [r.split(" | ")[1] for r in section(markdown, "### Pareto front") if r.startswith("| 2e+12")] == []
    (dino,) = [line for line in markdown.splitlines() if line.startswith("- dino / synthetic / vit_nano at")]
    assert dino.endswith(
        "`): `kl`: rank_ratio 0.31 (threshold 0.5), kl 0.5 (threshold 0.1); also fired: rank_ratio"
    )
    # budgetssl-plot takes the same option.
    out = tmp_path / "plot.png"
    cli("budgetssl-plot", str(root), "--out", str(out), "--include-collapsed")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
