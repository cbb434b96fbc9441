"""The run record: typed sections written as summary.json, read back through the analysis; older
records (written before the sections existed, by the demo of the previous release) still load."""

from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path

import pytest

from budgetssl.analysis.aggregate import aggregate
from budgetssl.analysis.collect import collect
from budgetssl.analysis.runs_csv import write_runs_csv
from budgetssl.analysis.table import markdown_table
from budgetssl.cli import report
from budgetssl.record import sections as s
from budgetssl.record.summary import read_record, write_summary

OLD = Path(__file__).parent / "data" / "records"


def a_record(method: str = "mae", seed: int = 0, miou: float = 31.5) -> s.Record:
    return s.Record(
        identity=s.Identity(
            method=method,
            dataset="synthetic",
            backbone="vit_nano",
            seed=seed,
            budget_flops=1e12,
            batch_size=64,
            image_size=16,
        ),  # fmt: skip
        outcome=s.Outcome(command="budgetssl-run", status="completed"),
        pretraining=s.Pretraining(
            flops_per_step=3_000, steps=333, train_flops=999_000, recipe={"optimizer": "adamw", "lr": 6e-4}
        ),  # fmt: skip
        energy=s.Energy(co2_kg=2e-5, co2_kg_estimated=1e-7),
        provenance=s.Provenance(params=123_456),
        transfer=s.Transfer(transfer_flops=500, miou=miou, transfer_co2_kg=1e-5),
        extra={"a_user_methods_field": 7},
    )


def test_every_field_has_a_unit_entry_and_no_field_is_in_two_sections():
    names = [f.name for _, cls in s.SECTIONS for f in fields(cls)]
    assert len(names) == len(set(names))
    assert set(s.units()) == set(names) | set(s.DERIVED)
    assert s.units()["train_flops"] == s.FLOPS and s.units()["miou"] == s.PERCENT
    assert s.units()["knn_accuracy"] == s.units()["linear_accuracy"] == s.PERCENT


def test_the_section_list_is_record_s_fields():
    """SECTIONS and ALWAYS are read off Record: every section class once, in Record's order, and the two
    with a default (identity, outcome) present even in a record read from a file without their keys."""
    assert [name for name, _ in s.SECTIONS] == [f.name for f in fields(s.Record) if f.name != "extra"]
    assert [cls for _, cls in s.SECTIONS][:3] == [s.Identity, s.Outcome, s.Pretraining]
    assert s.ALWAYS == ("identity", "outcome")
    back = s.Record.from_json({"miou": 30.0})
    assert back.identity == s.Identity() and back.outcome == s.Outcome() and back.pretraining is None
    assert back.transfer == s.Transfer(miou=30.0)


def test_the_monitors_section_and_its_collapse_verdict_round_trip(tmp_path):
    collapse = {"rule": "prototype_kl", "rules": ["prototype_kl"], "values": {"kl_teacher_student": 0.01},
                "thresholds": {"prototype_kl": 0.1}}  # fmt: skip
    record = a_record()
    record.monitors = s.Monitors(monitor_init={"rank_features": 20.0}, monitor_flops=10, collapse=collapse)
    write_summary(tmp_path, record)
    flat = json.loads((tmp_path / "summary.json").read_text())
    assert flat["collapse"] == collapse and flat["monitor_init"] == {"rank_features": 20.0}
    back = read_record(tmp_path)
    assert back == record and back.value("collapse.rule") == "prototype_kl"
    assert s.units()["monitor_flops"].startswith(s.FLOPS)


def test_total_flops_is_derived_once_and_round_trips(tmp_path):
    record = a_record()
    assert record.total_flops == 999_500  # pretraining + fine-tuning, not the probe
    assert record.total_co2_kg == pytest.approx(3e-5)
    write_summary(tmp_path, record)
    flat = json.loads((tmp_path / "summary.json").read_text())
    assert flat["total_flops"] == 999_500 and flat["a_user_methods_field"] == 7
    assert "total_co2_kg" not in flat  # derived where it is read (runs.csv), not part of summary.json
    assert "probe_miou" not in flat  # an absent section writes nothing
    back = read_record(tmp_path)
    assert back == record
    assert back.value("recipe.lr") == 6e-4 and back.value("recipe.nothing") is None
    # Without a pretraining cost (weights from elsewhere) there is no total; random init costs its transfer.
    back.pretraining.train_flops = None  # type: ignore[union-attr]
    assert back.total_flops is None
    assert (
        s.Record(pretraining=s.Pretraining(train_flops=0), transfer=s.Transfer(transfer_flops=5)).total_flops
        == 5
    )


def test_a_record_written_is_read_back_by_the_analysis(tmp_path):
    for i, (method, seed, miou) in enumerate([("mae", 0, 30.0), ("mae", 1, 33.0), ("supervised", 0, 40.0)]):
        write_summary(tmp_path / f"r{i}", a_record(method, seed, miou))
    found = collect(tmp_path)
    assert found.describe().startswith("3 completed run(s)")
    by_flops = aggregate(found.records, "total_flops", "miou")
    mae = next(p for p in by_flops.points if p.method == "mae")
    assert (mae.x, mae.y, mae.seeds) == (999_500, 31.5, 2) and mae.spread == pytest.approx(2.1213, abs=1e-3)
    assert by_flops.baselines == []
    table = markdown_table(found.records)
    assert "| mae | synthetic | vit_nano | adamw | 0.0006 |" in table.replace("6e-04", "0.0006")
    rows = list(csv.DictReader(write_runs_csv(found.runs, tmp_path / "runs.csv").open()))
    assert len(rows) == 3 and rows[0]["recipe.lr"] == "0.0006" and rows[0]["total_flops"] == "999500"
    assert rows[0]["path"].endswith("r0") and rows[0]["a_user_methods_field"] == "7"
    assert float(rows[0]["total_co2_kg"]) == pytest.approx(3e-5)  # derived from the read-back record
    header = next(csv.reader((tmp_path / "runs.csv").open()))
    assert header[:3] == ["method", "dataset", "backbone"] and header[-1] == "path"


@pytest.mark.parametrize("name", ["dino_before_sections", "random_init_before_sections"])
def test_records_written_before_the_sections_still_load(name):
    flat = json.loads((OLD / f"{name}.json").read_text())
    record = s.Record.from_json(flat)
    assert record.extra == {}  # every key the old writer wrote has its section
    assert record.total_flops == flat["total_flops"]  # the one rule agrees with what the old one wrote
    again = record.to_json()
    assert all(again[k] == v for k, v in flat.items())


def test_the_report_reads_old_records_writes_runs_csv_and_prints_empty_baseline_fields_as_dashes(tmp_path):
    runs = tmp_path / "runs"
    for name in ("dino_before_sections", "random_init_before_sections"):
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text((OLD / f"{name}.json").read_text())
    report.main([str(runs), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    baseline_row = next(r for r in text.splitlines() if r.startswith("| random_init |"))
    assert "None" not in text and "| 0.00 |" not in baseline_row
    assert baseline_row.startswith("| random_init | - | vit_nano | - | - | - | - |")
    assert "Every point has one seed" in text and "### Mean over seeds" not in text
    rows = list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))
    assert {r["method"] for r in rows} == {"dino", "random_init"}
    assert all(float(r["total_flops"]) > 0 for r in rows)
