"""mIoU against a direct computation, and against torchmetrics' Jaccard index."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from budgetssl.transfer.metrics import SegmentationScore

IGNORE = 255


def reference_miou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, list]:
    keep = target != IGNORE
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ious.append(inter / union if union else math.nan)
    return 100 * np.nanmean(ious), ious


def hand_made():
    # 4 classes: class 3 never occurs anywhere; class 2 occurs in the target but is never predicted;
    # ignore pixels carry wrong predictions that must not count.
    target = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [IGNORE, IGNORE, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1], [3, 3, 1, 0]])  # class 3 only on ignored pixels
    return pred, target


def test_miou_equals_direct_computation():
    pred, target = hand_made()
    score = SegmentationScore(4, IGNORE)
    score.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = score.compute()
    expected, ious = reference_miou(pred, target, 4)
    # By hand: class 0: inter 2, union 6; class 1: inter 4, union 6; class 2: never predicted -> 0;
    # class 3: predicted only where the target is ignored -> absent, left out of the mean.
    assert ious[0] == pytest.approx(2 / 6) and ious[1] == pytest.approx(4 / 6) and ious[2] == 0
    assert math.isnan(ious[3])
    assert result["miou"] == pytest.approx(expected)
    assert result["miou"] == pytest.approx(100 * (2 / 6 + 4 / 6 + 0) / 3)
    assert result["per_class_iou"][3] is None
    assert result["pixel_accuracy"] == pytest.approx(100 * 6 / 10)


def test_accumulates_over_batches_like_one_big_batch():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, size=(6, 8, 8))
    target = rng.integers(0, 5, size=(6, 8, 8))
    target[rng.random(target.shape) < 0.1] = IGNORE
    score = SegmentationScore(5, IGNORE)
    for i in range(6):
        score.update(torch.from_numpy(pred[i]), torch.from_numpy(target[i]))
    expected, _ = reference_miou(pred, target, 5)
    assert score.compute()["miou"] == pytest.approx(expected)
    jaccard = MulticlassJaccardIndex(5, average="macro", ignore_index=IGNORE)
    assert score.compute()["miou"] == pytest.approx(
        100 * float(jaccard(torch.from_numpy(pred), torch.from_numpy(target)))
    )


def test_a_class_outside_the_range_is_an_error_naming_it():
    score = SegmentationScore(3, IGNORE)
    with pytest.raises(ValueError, match="outside 0-2"):
        score.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    score.update(torch.tensor([0, 1]), torch.tensor([IGNORE, 1]))  # an ignored pixel is not checked
    assert score.compute()["miou"] == pytest.approx(100.0)
