"""budgetssl-verify: a real run folder verifies; each kind of tampering fails the check it should, with the
line saying so; the meta-tensor count equals the real step of every method and the published ViT-B/L
counts at batch 4096; budgetssl-report --verify marks a failing run."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from math import floor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from budgetssl.cli import flops as flops_cli
from budgetssl.cli import report
from budgetssl.cli import verify as verify_cli
from budgetssl.config.compose import compose_config
from budgetssl.data.base import build_dataset
from budgetssl.record.identity import identity_of
from budgetssl.record.sections import Outcome, Pretraining, Provenance, Record
from budgetssl.record.summary import write_summary
from budgetssl.record.weights import PROVENANCE, WEIGHTS, file_sha256
from budgetssl.verify.accounting import check_ladder
from budgetssl.verify.checks import verify
from budgetssl.verify.digest import check_weights
from budgetssl.verify.flops import count, derive
from budgetssl.verify.folder import open_run
from budgetssl.verify.naming import check_config_hash
from conftest import METHOD_NAMES, TINY, TINY_BUDGET, cli, hydra_folder, run_config, run_in_process, small
from real_step import measure

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One real pretraining and transfer (with the probe), as budgetssl-run writes it."""
    overrides = [*TINY, *small("supervised"), TINY_BUDGET, "transfer.probe=true"]
    folder = hydra_folder(tmp_path_factory.mktemp("runs"), "run", overrides)
    assert run_in_process("budgetssl-run", *overrides, folder=folder) == 0
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    """The run folder under another parent, with its own name (its hash still holds)."""
    return Path(shutil.copytree(folder, tmp_path / "copy" / folder.name))


def edit_record(folder: Path, **changes) -> None:
    path = folder / "summary.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, **changes}))


def lines_of(folder: Path, capsys) -> tuple[int, list[str]]:
    """budgetssl-verify's exit status and printed lines for `folder`, in this process."""
    try:
        verify_cli.main([str(folder)])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().out.splitlines()


def test_a_real_run_verifies(real_run, capsys):
    code, lines = lines_of(real_run, capsys)
    assert code == 0, "\n".join(lines)
    by_name = {line[5:].split(":")[0]: line[:4].strip() for line in lines[:-1]}
    assert by_name == {
        "status": "ok",
        "config_hash": "ok",
        "identity": "ok",
        "flops_per_step": "ok",
        "flops_per_image": "ok",
        "budget": "ok",
        "weights": "ok",
        "metrics": "ok",
        "transfer": "ok",
        "probe": "ok",
        "ladder": "skip",
    }
    assert lines[-1].startswith(f"{real_run}: verified")
    record = json.loads((real_run / "summary.json").read_text())
    assert record["backbone_weights_sha256"] == file_sha256(real_run / WEIGHTS)
    assert record["data_classes"] == build_dataset(run_config(*TINY).dataset).info.num_classes


def test_the_console_script_exits_0_for_a_run_and_2_for_a_folder_that_is_not_one(real_run, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("budgetssl-verify", str(real_run), str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2
    assert "ok   flops_per_step:" in proc.stdout and f"{real_run}: verified" in proc.stdout
    assert "is not a run folder: it has no summary.json" in proc.stderr


def test_a_transfer_of_another_run_verifies_its_own_cost_and_points_at_the_source(real_run, tmp_path, capsys):
    overrides = [*TINY, f"transfer.from_run={real_run}"]
    folder = hydra_folder(tmp_path, "transfer", overrides)
    assert run_in_process("budgetssl-transfer", *overrides, folder=folder) == 0
    code, lines = lines_of(folder, capsys)
    assert code == 0, "\n".join(lines)
    assert f"skip flops_per_step: pretrained in {real_run.resolve()}: verify that folder" in lines
    assert any(line.startswith("ok   transfer: 5 x ") for line in lines)
    assert any(line.startswith("ok   config_hash: transfer_") for line in lines)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_last_pretrain_row(folder: Path) -> None:
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    last = max(i for i, line in enumerate(rows) if json.loads(line)["stage"] == "pretrain")
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for i, line in enumerate(rows) if i != last))


TAMPERING = {
    "train_flops edited": (
        lambda f: edit_record(f, train_flops=json.loads((f / "summary.json").read_text())["train_flops"] - 1),
        "budget",
        "vs train_flops",
    ),
    "weights corrupted": (lambda f: flip_a_byte(f / WEIGHTS), "weights", "hashes to"),
    "digest missing": (
        lambda f: edit_record(f, backbone_weights_sha256=None),
        "weights",
        "no digest in the record (written by budgetssl 0.1.0, before",
    ),
    "last pretraining row missing": (drop_last_pretrain_row, "metrics", "last 'pretrain' row at step"),
    "transfer cost edited": (lambda f: edit_record(f, transfer_flops=1), "transfer", "vs transfer_flops 1"),
    "probe cost edited": (lambda f: edit_record(f, probe_flops=1), "probe", "vs probe_flops 1"),
    "probe epochs edited": (
        lambda f: edit_record(
            f, probe_epochs=json.loads((f / "summary.json").read_text())["probe_epochs"] + 1
        ),
        "probe",
        "probe_feature_flops + probe_steps x probe_flops_per_step + probe_epochs x",
    ),
    "budget edited in the record": (lambda f: edit_record(f, budget_flops=2e10), "identity", "budget_flops="),
    "folder renamed": (lambda f: f.rename(f.with_name(f.name[:-1] + "x")), "config_hash", "folder named"),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_tampering_fails_its_check_and_the_line_says_so(real_run, tmp_path, capsys, tampering):
    change, check, says = TAMPERING[tampering]
    folder = copy_of(real_run, tmp_path)
    change(folder)
    if not folder.exists():  # renamed
        folder = next(folder.parent.iterdir())
    code, lines = lines_of(folder, capsys)
    assert code == 1
    failed = [line for line in lines if line.startswith(f"FAIL {check}:")]
    assert failed and says in failed[0], "\n".join(lines)
    assert "FAILED" in lines[-1] and check in lines[-1]


def test_a_folder_without_its_saved_config_is_not_a_run_folder(real_run, tmp_path, capsys):
    folder = copy_of(real_run, tmp_path)
    shutil.rmtree(folder / ".hydra")
    with pytest.raises(SystemExit) as exit:
        verify_cli.main([str(folder)])
    assert exit.value.code == 2
    assert "it has no .hydra/config.yaml" in capsys.readouterr().err


def test_report_verify_marks_the_run_that_fails_and_keeps_it(real_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    good = Path(shutil.copytree(real_run, runs / "good" / real_run.name))
    edited = Path(shutil.copytree(real_run, runs / "edited" / real_run.name))
    edit_record(edited, train_flops=json.loads((edited / "summary.json").read_text())["train_flops"] + 1)
    report.main([str(runs), "--out", str(tmp_path / "out"), "--verify"])
    text = (tmp_path / "out" / "report.md").read_text()
    table = [
        line for line in text.splitlines() if line.startswith("| supervised | synthetic | vit_nano | adamw |")
    ]
    assert len(table) == 2  # both runs still listed
    assert sorted(line.rsplit("|", 2)[1].strip().split(":")[0] for line in table) == ["FAIL", "yes"]
    assert "| verified |" in text and "1 of 2 run(s) verified." in text
    failed = [line for line in text.splitlines() if line.startswith("- `")]
    assert len(failed) == 1 and str(edited) in failed[0] and "budget (" in failed[0]
    assert str(good) not in "\n".join(failed)


@pytest.mark.parametrize(
    "overrides",
    [small(m) for m in METHOD_NAMES] + [[*small("supervised"), "backbone=resnet18", "dataset.image_size=32"]],
    ids=[*METHOD_NAMES, "supervised-resnet18"],
)
def test_the_meta_count_is_the_real_steps(overrides):
    """One real step (measure) and the count on meta tensors (derive, and count: budgetssl-flops) agree."""
    run = run_config(*TINY, "train.batch_size=4", "train.num_workers=0", *overrides)
    real = measure(run)
    classes = build_dataset(run.dataset).info.num_classes
    derived = derive(run, Record(pretraining=Pretraining(data_classes=classes)))
    assert derived.flops_per_step == real["flops_per_step"]
    assert derived.breakdown == real["breakdown"]
    assert derived.flops_per_image == real["flops_per_image"]
    assert count(run) == real  # what budgetssl-flops prints (on meta tensors) is the real step's object


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_budgetssl_flops_prices_every_methods_reference_recipe_without_training(method, capsys):
    """budgetssl-flops on each registered method's reference config (configs/method/<name>.yaml: its full
    heads, crops and text tower): one step counted on meta tensors, its passes summing to it, the plan
    the budget buys, and the backbone among the priced parts."""
    flops_cli.main([f"method={method}"])
    got = json.loads(capsys.readouterr().out)
    assert got["method"] == method and got["flops_per_step"] > got["flops_per_image"] > 0
    assert got["flops_per_step"] == sum(p["total"] for p in got["breakdown"].values())
    assert got["planned_steps"] == floor(got["budget_flops"] / got["flops_per_step"])
    assert "backbone" in got["breakdown"]["forward"]


def claimed_run(
    parent: Path, overrides: list[str], flops_per_step: int, flops_per_image: int, classes: int
) -> Path:
    """A pretraining run folder as budgetssl-pretrain would leave it, with the cost it claims given here
    (from published counts) instead of trained for: its config, record, metrics rows, and a stand-in weights
    file (its digest and metadata in the record; the size of the file does not change what is checked)."""
    folder = hydra_folder(parent, "pretrain", overrides)
    cfg = compose_config(overrides)
    steps = floor(Fraction(cfg.budget.flops) / flops_per_step)
    spent = steps * flops_per_step
    meta = {PROVENANCE: json.dumps({"steps": steps, "train_flops": spent})}
    save_file({"stand_in": torch.zeros(1)}, str(folder / WEIGHTS), metadata=meta)
    pretraining = Pretraining(
        flops_per_step=flops_per_step,
        flops_per_image=flops_per_image,
        planned_steps=steps,
        steps=steps,
        train_flops=spent,
        data_classes=classes,
    )
    record = Record(
        identity=identity_of(cfg),
        outcome=Outcome(command="budgetssl-pretrain", status="completed"),
        pretraining=pretraining,
        provenance=Provenance(
            backbone_weights=WEIGHTS, backbone_weights_sha256=file_sha256(folder / WEIGHTS)
        ),
    )
    write_summary(folder, record)
    rows = [{"stage": "pretrain", "step": s, "flops": s * flops_per_step} for s in (1, steps)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize(
    "backbone,timm_name", [("vit_base", "vit_base_patch16_224"), ("vit_large", "vit_large_patch16_224")]
)
def test_vit_b_and_l_at_batch_4096_verify_against_the_published_counts(
    backbone, timm_name, reference_flops, tmp_path
):
    """A supervised ImageNet-1K run at 224 px and batch 4096 claims the published forward-and-backward
    count per image (tests/data/reference_flops.json) times 4096, plus its 1000-way classifier (forward
    2 B D C, backward twice that); the verifier re-derives exactly that without the data or a real step."""
    ref = reference_flops[timm_name]
    width = {"vit_base": 768, "vit_large": 1024}[backbone]
    batch = 4096
    head = 2 * batch * width * 1000
    claimed = batch * ref["forward_backward_flops"] + 3 * head
    overrides = [
        "method=supervised",
        f"backbone={backbone}",
        "dataset=imagenet1k",
        "dataset.root=/data/imagenet",  # not here: the verifier needs no data
        "dataset.image_size=224",
        f"train.batch_size={batch}",
        "budget.flops=1e21",
        "energy.track=false",
        "logger.wandb.mode=disabled",
    ]
    folder = claimed_run(tmp_path, overrides, claimed, ref["forward_flops"], classes=1000)
    checks = {c.name: c for c in verify(folder)}
    assert not [c.line() for c in checks.values() if c.failed]
    assert checks["flops_per_step"].status == "ok" and str(claimed) in checks["flops_per_step"].detail


def ladder_of(folder: Path, tmp_path: Path, cooldown_flops_off_by: int = 0) -> tuple[Path, Path]:
    """The real run made by hand into a consistent ladder as stages/ladder.py lays one out: the run's
    folder as the trunk (its record's `ladder` role trunk) and a copy of it as a rung under
    <trunk>/rungs/<budget>/, naming its trunk "../..". Returns (trunk, rung)."""
    trunk = copy_of(folder, tmp_path)
    record = json.loads((trunk / "summary.json").read_text())
    steps, per_step = record["steps"], record["flops_per_step"]
    branch = steps - 2
    rung = Path(shutil.copytree(folder, trunk / "rungs" / "5e9"))
    ladder = {
        "role": "rung",
        "trunk": "../..",
        "rungs": [record["budget_flops"]],
        "cooldown_fraction": 0.2,
        "branch_step": branch,
        "shared_flops": branch * per_step,
        "cooldown_steps": 2,
        "cooldown_flops": 2 * per_step + cooldown_flops_off_by,
    }
    edit_record(rung, ladder=ladder)
    edit_record(trunk, ladder={"role": "trunk", "trunk_steps": branch + 5})
    return trunk, rung


def test_a_ladder_rungs_share_of_its_trunk(real_run, tmp_path):
    trunk, rung = ladder_of(real_run, tmp_path / "a")
    assert check_ladder(open_run(rung)).status == "ok"
    named = check_config_hash(open_run(rung))  # the ladder's folder carries the hash
    assert named.status == "ok" and named.detail.startswith("a rung of the ladder at ../..")
    assert check_weights(open_run(trunk)).status == "skip"  # the trunk keeps no weights
    _, broken = ladder_of(real_run, tmp_path / "b", cooldown_flops_off_by=1)
    failed = check_ladder(open_run(broken))
    assert failed.failed and failed.detail.startswith("cooldown_flops = cooldown_steps x flops_per_step")
