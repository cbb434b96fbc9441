"""The supervised method learns: on a small fixed set of synthetic images its loss falls well below chance."""

from __future__ import annotations

import json
import math

from budgetssl.engine.loop import train
from budgetssl.meter.budget import plan_for_budget
from budgetssl.pretrain import build, loop_settings
from budgetssl.record.metrics import MetricsLog
from conftest import run_config


def test_supervised_loss_falls_below_chance(tmp_path):
    run = run_config(
        "dataset.image_size=16",
        "dataset.num_train=64",
        "train.batch_size=32",
        "train.lr=2e-3",
        "method.label_smoothing=0",
        "train.progress=false",
    )
    method, batches = build(run)
    settings = loop_settings(run)
    settings.log_every = 1
    log = MetricsLog(tmp_path / "metrics.jsonl")
    train(method, batches, settings, lambda fps: plan_for_budget(150 * fps, fps), log)
    losses = [json.loads(line)["loss"] for line in log.path.read_text().splitlines()]
    chance = math.log(5)
    assert sum(losses[:10]) / 10 > 0.95 * chance
    assert sum(losses[-10:]) / 10 < 0.6 * chance
