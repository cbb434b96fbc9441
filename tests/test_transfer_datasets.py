"""Segmentation datasets in their real layouts (ADE20K's ADEChallengeData2016, PASCAL VOC 2012), written tiny
with real JPEGs and PNG masks: right images and masks (ADE's zero label ignored, VOC's palette indices read
raw), the transfer views on them, unreadable files, wrong layouts, and runs end to end through
budgetssl-run (in this process) on tiny copies of the pretraining and the transfer data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from budgetssl.errors import ConfigError, DataError
from budgetssl.transfer.base import build_segmentation
from budgetssl.transfer.sets.ade20k import CLASSES as ADE_CLASSES
from budgetssl.transfer.sets.voc import CLASSES as VOC_CLASSES
from budgetssl.transfer.views import eval_view, train_view
from conftest import run_config, run_in_process, small, summary
from layouts import colour, write_ade20k, write_imagenet, write_shards, write_voc

pytestmark = pytest.mark.usefixtures("one_thread")


def segmentation(*overrides: str, split: str = "train"):
    return build_segmentation(run_config(*overrides).transfer, split)


def ade(tmp_path, *extra: str):
    return ("transfer=ade20k", f"transfer.root={tmp_path / 'ade'}", *extra)


def voc(tmp_path, *extra: str):
    return ("transfer=voc", f"transfer.root={tmp_path / 'voc'}", *extra)


def assert_pixels_match_mask(image: torch.Tensor, mask: torch.Tensor, ignore: int) -> None:
    """Each labelled region of the tiny images is painted colour(its class id)."""
    for value in mask.unique().tolist():
        if value == ignore:
            continue
        ys, xs = torch.nonzero(mask == value, as_tuple=True)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        pixel = image[:, y, x].float()
        assert torch.allclose(pixel, torch.tensor(colour(value), dtype=torch.float32), atol=24), (
            value,
            pixel,
        )


def test_ade20k_ignores_label_zero_and_shifts_the_150_classes_down(tmp_path):
    write_ade20k(tmp_path / "ade", train=4, val=2)
    train = segmentation(*ade(tmp_path))
    val = segmentation(*ade(tmp_path), split="val")
    assert len(train) == 4 and len(val) == 2
    assert train.info.num_classes == 150 == len(ADE_CLASSES) and train.info.ignore_index == 255
    assert train.info.background_index is None  # "other" is ignored: every scored class is an object
    assert ADE_CLASSES[0] == "wall" and ADE_CLASSES[-1] == "flag"
    for k in range(4):
        sample = train[k]
        stored = np.array(Image.open(train.masks[k]))
        assert set(np.unique(stored).tolist()) == {0, 1 + k, 150}
        mask = sample["mask"]
        assert mask.dtype == torch.int64 and mask.shape == sample["image"].shape[-2:]
        assert set(mask.unique().tolist()) == {k, 149, 255}  # 1 + k -> k, 150 -> 149, 0 -> ignore
        assert_pixels_match_mask(sample["image"], mask, 255)


def test_voc_reads_palette_indices_not_colours(tmp_path):
    write_voc(tmp_path / "voc", train=4, val=2)
    train = segmentation(*voc(tmp_path))
    val = segmentation(*voc(tmp_path), split="val")
    assert len(train) == 4 and len(val) == 2 and train.info.num_classes == 21 == len(VOC_CLASSES)
    assert VOC_CLASSES[train.info.background_index] == "background"
    assert Image.open(train.masks[0]).mode == "P"
    for k in range(4):
        mask = train[k]["mask"]
        assert set(mask.unique().tolist()) == {0, 1 + k, 255}
        assert_pixels_match_mask(train[k]["image"], mask, 255)
    assert set(val[1]["mask"].unique().tolist()) == {0, 6, 255}


def test_voc_reads_the_augmented_greyscale_masks_and_split_lists(tmp_path):
    root = write_voc(tmp_path / "voc", train=3, val=1)
    (root / "SegmentationClassAug").mkdir()
    for png in (root / "SegmentationClass").iterdir():
        Image.fromarray(np.array(Image.open(png))).save(root / "SegmentationClassAug" / png.name)  # greyscale
    ids = (root / "ImageSets" / "Segmentation" / "trainval.txt").read_text()
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(ids)
    aug = segmentation(
        *voc(tmp_path, "transfer.mask_dir=SegmentationClassAug", "transfer.train_split=train_aug")
    )
    assert len(aug) == 4 and set(aug[3]["mask"].unique().tolist()) == {0, 4, 255}


def test_voc_colour_masks_are_refused(tmp_path):
    root = write_voc(tmp_path / "voc", train=1, val=1)
    png = sorted((root / "SegmentationClass").iterdir())[0]
    Image.open(png).convert("RGB").save(png)
    with pytest.raises(DataError, match="not colours"):
        segmentation(*voc(tmp_path))[0]


@pytest.mark.parametrize("kind", ["ade20k", "voc"])
def test_transfer_views_crop_flip_and_resize_image_and_mask_together(tmp_path, kind):
    if kind == "ade20k":
        write_ade20k(tmp_path / "ade", train=2, val=1, size=(30, 40))
        ds = segmentation(*ade(tmp_path))
    else:
        write_voc(tmp_path / "voc", train=2, val=1, size=(30, 40))
        ds = segmentation(*voc(tmp_path))
    sample = ds[1]
    allowed = set(sample["mask"].unique().tolist())
    for view in (train_view(ds.info, 16), eval_view(ds.info, 16)):
        out = view(sample)
        assert out["image"].shape == (3, 16, 16) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (16, 16) and set(out["mask"].unique().tolist()) <= allowed


def _corrupt_ade_image(root):
    ade_root = write_ade20k(root, train=3, val=1)
    bad = sorted((ade_root / "images" / "training").iterdir())[0]
    bad.write_bytes(b"not a jpeg at all")
    return bad


def test_an_unreadable_image_names_the_file_or_is_skipped(tmp_path):
    bad = _corrupt_ade_image(tmp_path / "ade")
    with pytest.raises(DataError) as info:
        segmentation(*ade(tmp_path))[0]
    assert str(bad) in str(info.value) and "transfer.skip_corrupt=true" in str(info.value)
    lenient = segmentation(*ade(tmp_path, "transfer.skip_corrupt=true"))
    with pytest.warns(UserWarning, match="skipped"):
        sample = lenient[0]
    assert sample["data_skipped"] == 1 and set(sample["mask"].unique().tolist()) == {1, 149, 255}


def test_an_image_and_mask_of_different_sizes_are_refused(tmp_path):
    root = write_ade20k(tmp_path / "ade", train=1, val=1)
    png = root / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(png)
    with pytest.raises(DataError, match="its mask"):
        segmentation(*ade(tmp_path))[0]


def _remove(path):
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: None, "does not exist"),
        (
            lambda r: _remove(write_ade20k(r) / "annotations" / "training"),
            "has no folder annotations/training/",
        ),
        (
            lambda r: (write_ade20k(r) / "annotations/training/ADE_train_00000002.png").unlink(),
            "have no mask",
        ),
        (lambda r: [p.unlink() for p in (write_ade20k(r) / "images/training").iterdir()], "split is empty"),
    ],
)
def test_ade20k_layout_errors(tmp_path, setup, message):
    setup(tmp_path / "ade")
    with pytest.raises(ConfigError) as info:
        segmentation(*ade(tmp_path))
    assert message in str(info.value) and "transfer.root" in str(info.value)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: r.mkdir(), "has no folder JPEGImages/"),
        (
            lambda r: (write_voc(r) / "ImageSets/Segmentation/train.txt").unlink(),
            "ImageSets/Segmentation/train.txt",
        ),
        (lambda r: (write_voc(r) / "SegmentationClass/2007_000001.png").unlink(), "have no mask"),
        (lambda r: (write_voc(r) / "ImageSets/Segmentation/train.txt").write_text("\n"), "split is empty"),
    ],
)
def test_voc_layout_errors(tmp_path, setup, message):
    setup(tmp_path / "voc")
    with pytest.raises(ConfigError) as info:
        segmentation(*voc(tmp_path))
    assert message in str(info.value)


RUN = [
    "dataset.image_size=16",
    "train.batch_size=8",
    "train.progress=false",
    "energy.track=false",
    "logger.wandb.mode=disabled",
    "transfer.steps=3",
    "transfer.batch_size=4",
    "transfer.eval_batch_size=4",
]


def test_imagenet1k_pretraining_then_ade20k_transfer_end_to_end(tmp_path):
    write_imagenet(tmp_path / "in", classes=3, per_class=4, size=(20, 28, 20, 28))
    write_ade20k(tmp_path / "ade", train=4, val=2, size=(20, 28, 20, 28))
    code = run_in_process(
        "budgetssl-run",
        "dataset=imagenet1k",
        f"dataset.root={tmp_path / 'in'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "transfer=ade20k",
        f"transfer.root={tmp_path / 'ade'}",
        "backbone=vit_nano",
        "method=supervised",
        "budget.flops=1.5e9",
        *RUN,
        folder=tmp_path / "run",
    )
    assert code == 0
    record = summary(tmp_path / "run")
    assert (
        record["status"] == "completed"
        and record["dataset"] == "imagenet1k"
        and record["transfer"] == "ade20k"
    )
    assert record["steps"] >= 2 and record["transfer_steps"] == 3 and record["data_skipped"] == 0
    assert 0 <= record["miou"] <= 100
    scores = json.loads((tmp_path / "run" / record["transfer_scores"]).read_text())
    assert scores["class_names"] == list(ADE_CLASSES) and scores["ignore_index"] == 255


def test_clip_on_webdataset_shards_then_voc_transfer_end_to_end(tmp_path):
    write_shards(tmp_path / "wds", shards=2, per_shard=8, size=(20, 28, 20, 28), corrupt=["0000003"])
    write_voc(tmp_path / "voc", train=4, val=2, size=(20, 28, 20, 28))
    with pytest.warns(UserWarning, match="skipped sample .*0000003: cannot decode image"):
        code = run_in_process(
            "budgetssl-run",
            "dataset=webdataset",
            f"dataset.root={tmp_path / 'wds'}",
            "dataset.shards='shard-{000..001}.tar'",
            "dataset.shuffle_buffer=4",
            "transfer=voc",
            f"transfer.root={tmp_path / 'voc'}",
            *small("clip"),
            "budget.flops=1.6e9",
            *RUN,
            folder=tmp_path / "run",
        )
    assert code == 0
    record = summary(tmp_path / "run")
    assert (
        record["status"] == "completed" and record["dataset"] == "webdataset" and record["transfer"] == "voc"
    )
    assert record["steps"] >= 2 and record["data_skipped"] >= 1  # the undecodable image, once per pass
    scores = json.loads((tmp_path / "run" / record["transfer_scores"]).read_text())
    assert scores["class_names"] == list(VOC_CLASSES) and 0 <= record["miou"] <= 100
