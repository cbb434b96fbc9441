"""The commands end to end on the synthetic data: records, budgets, weights, failures. budgetssl-run and
budgetssl-transfer run once each through their console scripts; the other runs call the same commands in
this process (conftest.run_in_process)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import timm
import torch
from safetensors.torch import load_file, safe_open, save_file

from budgetssl.errors import BudgetSSLError
from budgetssl.record.weights import load_backbone
from conftest import TINY, TINY_BUDGET, cli, run_in_process, summary

CONTRACT = {
    "status", "method", "dataset", "backbone", "seed", "budget_flops", "flops_per_step", "steps",
    "train_flops", "wall_seconds", "energy_kwh", "co2_kg", "co2_kg_estimated", "miou", "transfer_flops",
    "final_loss", "convention", "total_flops", "backbone_timm", "backbone_weights",
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One budgetssl-run, with codecarbon on, shared by the tests below."""
    folder = tmp_path_factory.mktemp("run")
    start = time.perf_counter()
    cli(
        "budgetssl-run",
        *TINY,
        TINY_BUDGET,
        "energy.track=true",
        "energy.measure_power_secs=1",
        f"hydra.run.dir={folder}",
    )
    return folder, time.perf_counter() - start


def transfer(folder, *overrides: str) -> int:
    """budgetssl-transfer on the tiny settings, in this process."""
    return run_in_process("budgetssl-transfer", *TINY, *overrides, folder=folder)


def test_run_record_holds_the_contract(pretrained):
    folder, seconds = pretrained
    record = summary(folder)
    assert CONTRACT <= set(record), CONTRACT - set(record)
    assert record["status"] == "completed"
    assert record["convention"] == "fma=2"
    assert record["train_flops"] == record["steps"] * record["flops_per_step"]
    assert record["train_flops"] <= record["budget_flops"] < record["train_flops"] + record["flops_per_step"]
    assert record["total_flops"] == record["train_flops"] + record["transfer_flops"]
    assert record["transfer_flops"] == 5 * record["transfer_flops_per_step"]
    assert 0 <= record["miou"] <= 100
    assert record["energy_kwh"] > 0 and record["co2_kg"] > 0
    assert record["energy_method"] in ("RAPL", "NVML", "estimate") and "codecarbon" in record["energy_detail"]
    assert record["co2_kg_estimated"] > 0 and record["hardware_model"]["name"]
    # Where the pretraining's time went, and how much of the CPU's measured peak it used.
    wall = record["pretrain_wall_seconds"]
    assert 0 <= record["data_wait_share"] < 1
    assert 0 < record["meter_seconds"] < wall
    assert record["checkpoint_count"] == 1 and 0 < record["checkpoint_seconds"] < wall
    assert record["achieved_flops_per_s"] == pytest.approx(record["train_flops"] / wall)
    assert record["peak_source"].startswith("measured") and "1 thread" in record["peak_source"]
    assert record["mfu"] == pytest.approx(record["achieved_flops_per_s"] / record["peak_flops_per_s"])
    assert 0 < record["mfu"] < 1
    scores = json.loads((folder / record["transfer_scores"]).read_text())
    assert len(scores["per_class_iou"]) == len(scores["class_names"]) == 6
    assert (folder / ".hydra" / "config.yaml").is_file()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"pretrain", "transfer"}
    assert seconds < 60


def test_weights_load_strictly_into_plain_timm(pretrained):
    folder, _ = pretrained
    record = summary(folder)
    spec = record["backbone_timm"]
    model = timm.create_model(spec["name"], num_classes=0, **spec["kwargs"]).eval()
    model.load_state_dict(load_file(str(folder / record["backbone_weights"])), strict=True)
    ours = load_backbone(folder, image_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))


def test_transfer_from_run_and_from_random_init(pretrained, tmp_path):
    folder, _ = pretrained
    cli("budgetssl-transfer", *TINY, f"transfer.from_run={folder}", f"hydra.run.dir={tmp_path / 'from_run'}")
    assert transfer(tmp_path / "random") == 0
    scored, baseline = summary(tmp_path / "from_run"), summary(tmp_path / "random")
    source = summary(folder)
    assert scored["status"] == baseline["status"] == "completed"
    assert scored["method"] == "supervised" and scored["train_flops"] == source["train_flops"]
    assert scored["transfer_init"].startswith("weights:")
    assert scored["total_flops"] == source["train_flops"] + scored["transfer_flops"]
    assert baseline["method"] == "random_init" and baseline["train_flops"] == 0
    assert baseline["transfer_init"] == "random"
    assert baseline["total_flops"] == baseline["transfer_flops"] > 0


def test_transfer_from_a_folder_without_weights_is_a_clear_error(tmp_path, capsys):
    assert transfer(tmp_path / "out", f"transfer.from_run={tmp_path}") == 2
    assert "has no backbone weights" in capsys.readouterr().err
    assert summary(tmp_path / "out")["status"] == "failed"


def test_pretrain_alone_writes_weights_and_no_transfer(tmp_path):
    # In this process: budgetssl-pretrain's console script runs in test_resume.py (killed, and stopped by
    # SIGTERM with its record), test_lock.py and test_sweeps.py.
    assert run_in_process("budgetssl-pretrain", *TINY, TINY_BUDGET, folder=tmp_path) == 0
    record = summary(tmp_path)
    assert record["status"] == "completed" and "miou" not in record
    assert (tmp_path / "backbone.safetensors").is_file()


def test_transfer_from_the_bare_weights_file_keeps_the_pretraining_cost(pretrained, tmp_path):
    folder, _ = pretrained
    file = tmp_path / "moved.safetensors"
    shutil.copy(folder / "backbone.safetensors", file)  # the file alone, away from its run folder
    assert transfer(tmp_path / "out", f"transfer.from_run={file}") == 0
    r, source = summary(tmp_path / "out"), summary(folder)
    assert r["status"] == "completed" and r["transfer_init"] == f"weights:{file.resolve()}"
    assert (r["method"], r["backbone"], r["train_flops"]) == ("supervised", "vit_nano", source["train_flops"])
    assert r["total_flops"] == source["train_flops"] + r["transfer_flops"]


def timm_file(tmp_path, name: str, **kwargs) -> str:
    """A state dict saved from a plain timm model, as a timm user would: no budgetssl metadata."""
    model = timm.create_model(name, **kwargs)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_transfer_from_a_plain_timm_state_dict_with_its_classifier(pretrained, tmp_path):
    folder, _ = pretrained
    spec = summary(folder)["backbone_timm"]
    file = timm_file(tmp_path, spec["name"], num_classes=10, **spec["kwargs"])  # head.* is dropped
    assert transfer(tmp_path / "out", f"transfer.from_run={file}") == 0
    r = summary(tmp_path / "out")
    assert r["status"] == "completed" and r["method"] == "external" and r["backbone"] == "vit_nano"
    assert r["train_flops"] is None and r["total_flops"] is None and r["transfer_flops"] > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        # A bare file of another architecture, loaded into the configured backbone=vit_nano.
        (lambda p: timm_file(p, "resnet18", num_classes=0), "set backbone=<name> to the architecture"),
        # A file that is not safetensors at all.
        (
            lambda p: (p / "w.safetensors").write_text("not weights") and str(p / "w.safetensors"),
            "cannot read",
        ),
    ],
)
def test_transfer_from_weights_that_do_not_fit_is_a_clear_error(tmp_path, capsys, make, message):
    file = make(tmp_path)
    assert transfer(tmp_path / "out", f"transfer.from_run={file}") == 2
    err = capsys.readouterr().err
    assert message in err and str(file) in err
    record = summary(tmp_path / "out")
    assert record["status"] == "failed" and message in record["error"]


def test_weights_naming_their_architecture_but_holding_another_are_refused(pretrained, tmp_path):
    folder, _ = pretrained
    state = load_file(str(folder / "backbone.safetensors"))
    with safe_open(str(folder / "backbone.safetensors"), framework="pt") as f:
        meta = f.metadata()
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:, :8].contiguous()
    del state["fc_norm.bias"]
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(BudgetSSLError) as info:
        load_backbone(tmp_path / "bad.safetensors", image_size=16)
    text = str(info.value)
    assert "do not fit the architecture vit_tiny_patch16_224" in text
    assert "1 missing (e.g. fc_norm.bias)" in text and "blocks.0.attn.qkv.weight: file (288, 8)" in text
