"""Supervised pretraining beats a random init once fine-tuned, on linear_accuracy and on the frozen probe
(tests/gain.py says why and how)."""

from __future__ import annotations

import pytest

from budgetssl.stages import commands
from gain import NEW_PROBE_MARGIN, PRETRAIN, SUPERVISED_LINEAR_MARGIN, SUPERVISED_MARGIN, random_init, run


@pytest.mark.slow
def test_supervised_pretraining_beats_random_init(tmp_path):
    baseline = random_init(tmp_path / "random", "transfer.probe=true")
    # Measured: 33.81 fine-tuned mIoU against 20.88 from random init (+12.9), 668 steps.
    overrides = ["method=cpu/supervised", *PRETRAIN, "transfer.probe=true"]
    pretrained = run(commands.pretrain_then_transfer, tmp_path / "pretrained", *overrides)
    assert pretrained["steps"] == 668
    assert pretrained["collapse"] is None, pretrained["monitor_final"]  # learns, and is not flagged
    assert pretrained["transfer_flops"] == baseline["transfer_flops"]  # same transfer, same cost
    assert pretrained["miou"] >= baseline["miou"] + SUPERVISED_MARGIN, (
        pretrained["miou"],
        baseline["miou"],
    )
    assert pretrained["val_accuracy"] > 40  # 5 shapes: chance is 20%
    # The frozen pooled features classify the held-out scenes better than random init's.
    assert pretrained["linear_accuracy"] >= baseline["linear_accuracy"] + SUPERVISED_LINEAR_MARGIN
    # The probe's head converged on both, and the pretrained features segment better frozen.
    assert pretrained["probe_protocol"]["converged"] and baseline["probe_protocol"]["converged"]
    assert pretrained["probe_miou"] >= baseline["probe_miou"] + NEW_PROBE_MARGIN
