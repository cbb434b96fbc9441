"""Evaluation: sliding windows at full resolution against the resize protocol, and masks checked."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torchvision import tv_tensors

from budgetssl.backbones.backbone import build_backbone
from budgetssl.data.info import SegInfo
from budgetssl.errors import DataError
from budgetssl.transfer.base import build_segmentation
from budgetssl.transfer.evaluate import slide_logits, window_starts
from budgetssl.transfer.finetune import score
from budgetssl.transfer.heads import Segmenter
from budgetssl.transfer.metrics import scores_from_confusion
from budgetssl.transfer.views import eval_view, full_view, reference_train_view, train_view
from conftest import TINY, run_config, run_in_process, summary

pytestmark = pytest.mark.usefixtures("one_thread")


def model_and_config():
    run = run_config(*TINY)
    torch.manual_seed(0)
    model = Segmenter(build_backbone(run.backbone, 16), "linear", 6, 255, image_size=16).eval()
    return model, run.transfer


@pytest.mark.parametrize(("size", "window", "stride"), [(16, 16, 10), (40, 16, 10), (41, 16, 16), (7, 16, 5)])
def test_windows_cover_every_pixel_and_stay_inside(size, window, stride):
    starts = window_starts(size, window, stride)
    covered = torch.zeros(max(size, window), dtype=torch.bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered[:size].all() and starts[0] == 0
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    assert starts[-1] + window == max(size, window)


def test_slide_at_the_training_resolution_equals_resize():
    model, cfg = model_and_config()
    val = build_segmentation(cfg, "val")
    resized = score(cfg, model, val)
    slid = score(replace(cfg, eval_mode="slide"), model, val)
    assert slid == resized


def test_slide_logits_tile_and_average_windows():
    model, _ = model_and_config()
    image = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        tiled = slide_logits(model, image, window=16, stride=16)
        expected = torch.cat(
            [
                torch.cat([model.logits(image[..., y : y + 16, x : x + 16]) for x in (0, 16, 32)], -1)
                for y in (0, 16)
            ],
            -2,
        )
        assert tiled.shape == (1, 6, 32, 48)
        torch.testing.assert_close(tiled, expected)
        # Overlap: columns 8..15 are seen by windows at x=0 and x=8, and get their mean.
        overlapped = slide_logits(model, image[..., :16, :24], window=16, stride=8)
        left, right = model.logits(image[..., :16, :16]), model.logits(image[..., :16, 8:24])
        torch.testing.assert_close(overlapped[..., 8:16], (left[..., 8:16] + right[..., :8]) / 2)
        torch.testing.assert_close(overlapped[..., :8], left[..., :8])
        # An image smaller than a window is padded, and the prediction cropped back.
        assert slide_logits(model, image[..., :10, :12], window=16, stride=10).shape == (1, 6, 10, 12)


def test_sliding_window_evaluation_at_full_resolution_end_to_end(tmp_path):
    code = run_in_process(
        "budgetssl-transfer", *TINY, "transfer.eval_mode=slide", "transfer.val_image_size=40", folder=tmp_path
    )
    assert code == 0
    r = summary(tmp_path)
    assert r["status"] == "completed"
    assert r["transfer_eval_mode"] == "slide" and r["transfer_eval_stride"] == 10  # 2/3 of 16
    scores = json.loads((tmp_path / r["transfer_scores"]).read_text())
    assert scores["eval_mode"] == "slide" and 0 <= scores["miou"] <= 100
    val = build_segmentation(run_config(*TINY, "transfer.val_image_size=40").transfer, "val")
    sample = full_view(val.info)(val[0])
    assert sample["image"].shape[-2:] == sample["mask"].shape == (40, 40)


def test_a_mask_label_outside_the_class_list_is_a_clear_error():
    info = SegInfo(image_size=16, class_names=("background", "a", "b"), ignore_index=255)
    mask = torch.zeros(16, 16, dtype=torch.int64)
    mask[3, 3] = 255  # ignored: fine
    sample = {
        "image": tv_tensors.Image(torch.zeros(3, 16, 16, dtype=torch.uint8)),
        "mask": tv_tensors.Mask(mask),
    }
    assert eval_view(info, 16)(sample)["mask"].max() == 255
    mask[5:9, 5:9] = 7
    for view in (train_view(info, 16), eval_view(info, 16), full_view(info)):
        with pytest.raises(DataError, match=r"holds label 7, but the transfer dataset has 3 classes"):
            view(sample)


def test_miou_objects_leaves_the_background_out():
    # Rows: target, columns: prediction. Background (0) is easy, the two objects are not.
    cm = torch.tensor([[90.0, 5.0, 5.0], [4.0, 4.0, 2.0], [6.0, 0.0, 4.0]])
    iou = [90 / (100 + 100 - 90), 4 / (10 + 9 - 4), 4 / (10 + 11 - 4)]
    with_background = scores_from_confusion(cm, background_index=0)
    assert with_background["miou"] == pytest.approx(100 * sum(iou) / 3)
    assert with_background["miou_objects"] == pytest.approx(100 * (iou[1] + iou[2]) / 2)
    assert with_background["miou_objects"] < with_background["miou"]  # the easy background lifts mIoU
    none = scores_from_confusion(cm, background_index=None)  # e.g. ADE20K: every class is scored
    assert none["miou_objects"] == none["miou"] == with_background["miou"]
    # A class absent from targets and predictions is left out of both means, as in mIoU.
    sparse = scores_from_confusion(torch.tensor([[5.0, 0, 0], [0, 0, 0], [0, 0, 3.0]]), background_index=0)
    assert sparse["miou_objects"] == pytest.approx(100.0) and sparse["per_class_iou"][1] is None


@pytest.mark.parametrize("height,width,mask_dtype", [(16, 16, torch.uint8), (20, 28, torch.int64)])
def test_the_fine_tuning_view_is_the_v2_pipeline_bit_for_bit(height, width, mask_dtype):
    """TrainView's kernels draw the same random numbers as the v2 pipeline and give the same tensors
    (square synthetic scenes with uint8 masks; a non-square image with an int64 mask, as files decode)."""
    info = SegInfo(image_size=16, class_names=("background", "a", "b"), ignore_index=255)
    g = torch.Generator().manual_seed(0)
    samples = [
        {
            "image": tv_tensors.Image(
                torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
            ),
            "mask": tv_tensors.Mask(torch.randint(0, 3, (height, width), generator=g).to(mask_dtype)),
        }
        for _ in range(40)
    ]
    torch.manual_seed(5)
    reference = [reference_train_view(info, 16)(dict(s)) for s in samples]
    torch.manual_seed(5)
    fast = [train_view(info, 16)(dict(s)) for s in samples]
    differing = 0
    for r, f in zip(reference, fast, strict=True):
        assert torch.equal(r["image"], f["image"]) and torch.equal(r["mask"], f["mask"])
        assert f["mask"].dtype == torch.int64 and f["image"].shape == (3, 16, 16)
    torch.manual_seed(5)
    for s in samples:  # the crops differ from sample to sample: the comparison saw random views
        differing += int(train_view(info, 16)(dict(s))["image"].sum() != reference[0]["image"].sum())
    assert differing > 30
