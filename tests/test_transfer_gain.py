"""The point of pretraining, checked on the synthetic data: it must beat a random init after transfer."""

from __future__ import annotations

import pytest

from conftest import cli, summary

SETTINGS = [
    "dataset.image_size=16",
    "train.batch_size=32",
    "train.progress=false",
    "energy.track=false",
    "transfer.batch_size=32",
    "transfer.num_train=512",
    "transfer.num_val=128",
    "transfer.steps=100",
]
# Measured with seed 0 on a 2-core CPU: supervised 24.24 mIoU against random init 21.18 (+3.05), with
# per-sample seeded augmentation; before it, 25.57 against 21.37 (+4.2), and with seed 1 +4.7.
MARGIN = 2.0


@pytest.mark.slow
def test_supervised_pretraining_beats_random_init(tmp_path):
    cli(
        "budgetssl-run",
        *SETTINGS,
        "method=supervised",
        "budget.flops=6e11",
        f"hydra.run.dir={tmp_path / 'pre'}",
    )
    cli("budgetssl-transfer", *SETTINGS, f"hydra.run.dir={tmp_path / 'random'}")
    pretrained, random = summary(tmp_path / "pre"), summary(tmp_path / "random")
    assert pretrained["steps"] == 401 and random["method"] == "random_init"
    assert pretrained["transfer_flops"] == random["transfer_flops"]  # same transfer, same cost
    assert pretrained["miou"] >= random["miou"] + MARGIN, (pretrained["miou"], random["miou"])
