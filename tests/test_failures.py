"""Failure records: a non-finite loss, a crash, unusable or hostile checkpoints; a completed record is
never overwritten by a later failure."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from budgetssl.record.sections import Outcome, Record
from budgetssl.record.summary import completed_record, write_summary
from conftest import TINY, TINY_BUDGET, run_in_process, summary

pytestmark = pytest.mark.usefixtures("one_thread")


def pretrain(folder: Path, *extra: str) -> int:
    return run_in_process(
        "budgetssl-pretrain", *TINY, TINY_BUDGET, "train.checkpoint_every_steps=2", *extra, folder=folder
    )


class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_non_finite_loss_fails_the_run_at_its_step(tmp_path):
    # A learning rate no model survives: the first update blows the weights up, the next loss is nan.
    assert pretrain(tmp_path, "train.lr=1e30") == 2
    record = summary(tmp_path)
    assert record["status"] == "failed" and record["error_type"] == "NonFiniteLoss"
    assert record["failed_step"] == 1 and "loss is nan at step 1" in record["error"]


def test_a_crash_leaves_a_failed_record_with_the_error(tmp_path, monkeypatch):
    # An error budgetssl does not anticipate (here: the optimizer factory breaks): re-raised, and recorded.
    import budgetssl.engine.trainer as trainer

    def broken(*args, **kwargs):
        raise RuntimeError("optimizer factory broke")

    monkeypatch.setattr(trainer, "create_optimizer_v2", broken)
    with pytest.raises(RuntimeError, match="factory broke"):
        pretrain(tmp_path)
    record = summary(tmp_path)
    assert record["status"] == "failed" and record["error_type"] == "RuntimeError"
    assert "factory broke" in record["error"]


def test_an_unknown_optimizer_is_a_config_error(tmp_path):
    assert pretrain(tmp_path, "train.optimizer=nosuchopt") == 2
    record = summary(tmp_path)
    assert record["status"] == "failed" and record["error_type"] == "ConfigError"
    assert "train.optimizer 'nosuchopt'" in record["error"]


def test_a_completed_record_is_never_replaced_by_a_failure(tmp_path):
    assert pretrain(tmp_path) == 0
    done = summary(tmp_path)
    # The same folder, another config: refused (its checkpoint is another run's), recorded nowhere.
    assert pretrain(tmp_path, "train.lr=1e30") != 0
    assert summary(tmp_path) == done == completed_record(tmp_path)
    for status in ("failed", "interrupted"):
        write_summary(tmp_path, Record(outcome=Outcome(status=status, error="later")))
        assert summary(tmp_path) == done


def test_an_unreadable_checkpoint_with_nothing_older_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "checkpoints" / "step_000000002.pt"
    bad.parent.mkdir()
    torch.save({"format": 1, "x": torch.zeros(1000)}, bad)
    bad.write_bytes(bad.read_bytes()[:300])  # cut short, as by a full disk
    assert pretrain(tmp_path) == 2
    record = summary(tmp_path)
    assert record["status"] == "failed" and record["error_type"] == "CheckpointError"
    assert (
        f"checkpoint {bad} is unreadable" in record["error"]
        and "no older usable checkpoint" in record["error"]
    )


def test_a_hostile_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    with (folder / "step_000000002.pt").open("wb") as f:
        pickle.dump({"format": 1, "model": Payload(marker)}, f)  # a bare pickle
    torch.save({"format": 1, "model": Payload(marker)}, folder / "step_000000004.pt")  # torch's zip format
    assert pretrain(tmp_path / "run") == 2
    error = summary(tmp_path / "run")["error"]
    for name in ("step_000000002.pt", "step_000000004.pt"):
        assert f"refused checkpoint {folder / name}" in error
    assert not marker.exists()


def test_records_never_hold_credentials(tmp_path):
    record = Record(outcome=Outcome(status="completed"))
    record.extra["logger"] = {"wandb_api_key": "k", "tokens": 77, "token": "t"}
    write_summary(tmp_path, record)
    assert summary(tmp_path)["logger"] == {"wandb_api_key": "<redacted>", "tokens": 77, "token": "<redacted>"}
