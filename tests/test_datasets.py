"""Pretraining datasets in their real on-disk layouts (ImageNet-1K/-21K, COCO, WebDataset shards), written
tiny with real JPEGs, tar shards and COCO JSON: right images, labels and captions, the cached file index,
shards split without duplicates, unreadable files, and a message for each wrong layout."""

from __future__ import annotations

import os
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info

from budgetssl.data.base import build_dataset
from budgetssl.data.loader import endless_batches
from budgetssl.data.shards import buffer_shuffle, epoch_order, expand_shards, share
from budgetssl.errors import ConfigError, DataError
from budgetssl.methods.zoo.supervised import LabelledView
from conftest import run_config, run_in_process, small, summary
from layouts import (
    NAMES,
    WNIDS,
    colour,
    write_coco,
    write_imagenet,
    write_imagenet_flat,
    write_shards,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def dataset(*overrides: str, split: str = "train"):
    """The dataset as configured (with a method that needs no labels, so any dataset passes the check)."""
    return build_dataset(run_config("method=simclr", *overrides).dataset, split)


def assert_coloured(image: torch.Tensor, label: int) -> None:
    """The image is the flat colour of `label` (JPEG and noise move it a few levels)."""
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    mean = image.float().mean(dim=(1, 2))
    assert torch.allclose(mean, torch.tensor(colour(label), dtype=torch.float32), atol=8), (mean, label)


def imagenet(tmp_path, *extra: str, name: str = "imagenet1k"):
    return (
        f"dataset={name}",
        f"dataset.root={tmp_path / 'in'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        *extra,
    )


def test_imagenet1k_reads_class_folders_with_labels_from_sorted_folder_names(tmp_path):
    write_imagenet(tmp_path / "in", classes=3, per_class=4, val_per_class=2)
    train = dataset(*imagenet(tmp_path))
    assert len(train) == 12
    assert train.info.class_names == NAMES[:3]  # human names from LOC_synset_mapping.txt
    assert train.class_ids == WNIDS[:3]
    for i in range(len(train)):
        sample = train[i]
        assert sample["label"] == WNIDS.index(train.path(i).parent.name)
        assert_coloured(sample["image"], sample["label"])
    val = dataset(*imagenet(tmp_path), split="val")
    assert len(val) == 6 and Counter(int(val[i]["label"]) for i in range(6)) == {0: 2, 1: 2, 2: 2}
    (tmp_path / "in" / "LOC_synset_mapping.txt").unlink()
    assert (
        dataset(*imagenet(tmp_path, "dataset.cache_dir=" + str(tmp_path / "c2"))).info.class_names
        == WNIDS[:3]
    )


def test_the_file_index_is_cached_and_walked_again_only_when_a_folder_changes(tmp_path):
    write_imagenet(tmp_path / "in", classes=2, per_class=3)
    first = dataset(*imagenet(tmp_path))
    assert not first.from_cache and len(first) == 6
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    # A file slipped in with its folder's mtime put back: an unchanged key means no walk, so it is unseen.
    folder = tmp_path / "in" / "train" / WNIDS[0]
    stat = folder.stat()
    (folder / f"{WNIDS[0]}_new.JPEG").write_bytes((folder / f"{WNIDS[0]}_0.JPEG").read_bytes())
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = dataset(*imagenet(tmp_path))
    assert second.from_cache and len(second) == 6
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the folder changed: walk again
    third = dataset(*imagenet(tmp_path))
    assert not third.from_cache and len(third) == 7


def test_imagenet21k_flat_layout_takes_labels_from_the_class_list(tmp_path):
    write_imagenet_flat(tmp_path / "in", classes=3, per_class=2)
    train = dataset(*imagenet(tmp_path, "dataset.class_list=classes.txt", name="imagenet21k"))
    order = list(WNIDS[:3])[::-1]  # the class list's order, not sorted
    assert train.class_ids == tuple(order) and len(train) == 6
    for i in range(len(train)):
        sample = train[i]
        assert sample["label"] == order.index(train.path(i).name.split("_")[0])
        assert_coloured(sample["image"], sample["label"])


def test_imagenet21k_also_reads_class_folders(tmp_path):
    write_imagenet(tmp_path / "in", classes=2, per_class=2, names=False)
    train = dataset(*imagenet(tmp_path, name="imagenet21k"))
    assert len(train) == 4 and train.info.class_names == WNIDS[:2]


def _loose_images(root):
    write_imagenet(root, classes=1, per_class=1)
    (root / "train" / "stray.JPEG").write_bytes(b"x")


@pytest.mark.parametrize(
    ("name", "setup", "extra", "message"),
    [
        ("imagenet1k", lambda r: None, (), "does not exist"),
        ("imagenet1k", lambda r: (r / "val").mkdir(parents=True), (), "has no folder train/"),
        ("imagenet1k", lambda r: (r / "train" / WNIDS[0]).mkdir(parents=True), (), "split is empty"),
        ("imagenet1k", _loose_images, (), "outside class folders"),
        ("imagenet21k", lambda r: write_imagenet_flat(r), (), "set dataset.class_list"),
        (
            "imagenet21k",
            lambda r: write_imagenet_flat(r),
            ("dataset.class_list=wnids.txt",),
            "no file wnids.txt",
        ),
        (
            "imagenet21k",
            lambda r: (write_imagenet_flat(r), (r / "classes.txt").write_text(f"{WNIDS[0]}\n")),
            ("dataset.class_list=classes.txt",),
            "is not in",
        ),
    ],
)
def test_imagenet_layout_errors_say_what_was_expected(tmp_path, name, setup, extra, message):
    setup(tmp_path / "in")
    with pytest.raises(ConfigError) as info:
        dataset(*imagenet(tmp_path, *extra, name=name))
    assert message in str(info.value) and str(tmp_path / "in") in str(info.value)


def _corrupt_first_image(root):
    write_imagenet(root, classes=2, per_class=4)
    bad = sorted((root / "train" / WNIDS[0]).iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return bad


def test_an_unreadable_indexed_image_is_an_error_naming_it_or_skipped_and_counted(tmp_path):
    bad = _corrupt_first_image(tmp_path / "in")
    strict = dataset(*imagenet(tmp_path))
    with pytest.raises(DataError) as info:
        strict[0]
    assert str(bad) in str(info.value) and "dataset.skip_corrupt=true" in str(info.value)
    lenient = dataset(*imagenet(tmp_path, "dataset.skip_corrupt=true"))
    with pytest.warns(UserWarning, match="skipped"):
        sample = lenient[0]
    assert sample["data_skipped"] == 1 and sample["label"] == 0 and lenient[1]["data_skipped"] == 0
    view = LabelledView(lambda image: image.float())
    with pytest.warns(UserWarning):
        batches = endless_batches(lenient, view, batch_size=8, seed=0)
        first = next(batches)  # one epoch: the bad file was met once
    assert batches.skipped == 1 and "data_skipped" not in first and first["label"].shape == (8,)


def coco(tmp_path, *extra: str):
    return (
        "dataset=coco",
        f"dataset.root={tmp_path / 'coco'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        *extra,
    )


def test_coco_yields_every_caption_of_an_image_and_largest_area_labels(tmp_path):
    expected = write_coco(tmp_path / "coco", images=7, captions=3)
    captioned = dataset(*coco(tmp_path))
    assert len(captioned) == 7
    for i, name in enumerate(sorted(expected)):
        sample = captioned[i]
        assert sample["caption"] == expected[name]["captions"] and "label" not in sample
        assert_coloured(sample["image"], expected[name]["label"] or 0)
    labelled = dataset(*coco(tmp_path, "dataset.labels=true"))
    assert labelled.info.class_names == ("person", "car", "dog")
    assert len(labelled) == 6  # the image without instance annotations is left out
    for i, name in enumerate(sorted(expected)[:6]):
        assert labelled[i]["label"] == expected[name]["label"]
        assert labelled[i]["caption"] == expected[name]["captions"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # parsed annotations cached per mode


def test_coco_labels_are_asked_for_at_config_time(tmp_path):
    write_coco(tmp_path / "coco", images=2)
    with pytest.raises(ConfigError) as info:
        run_config(*coco(tmp_path), "method=supervised")
    assert "needs label" in str(info.value) and "dataset.labels=true" in str(info.value)
    run_config(*coco(tmp_path), "method=supervised", "dataset.labels=true")
    run_config(*coco(tmp_path), "method=clip")


@pytest.mark.parametrize(
    ("remove", "extra", "message"),
    [
        ("train2017", (), "has no folder train2017/"),
        ("annotations/captions_train2017.json", (), "has no file annotations/captions_train2017.json"),
        ("annotations/instances_train2017.json", ("dataset.labels=true",), "instances_train2017.json"),
    ],
)
def test_coco_layout_errors_name_the_missing_folder_or_file(tmp_path, remove, extra, message):
    write_coco(tmp_path / "coco", images=2)
    target = tmp_path / "coco" / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(ConfigError) as info:
        dataset(*coco(tmp_path, *extra))
    assert message in str(info.value)


def test_coco_annotations_that_are_not_coco_are_a_data_error(tmp_path):
    write_coco(tmp_path / "coco", images=2)
    (tmp_path / "coco" / "annotations" / "captions_train2017.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="no annotations field"):
        dataset(*coco(tmp_path))


def shards(tmp_path, *extra: str, pattern: str = "shard-{000..003}.tar"):
    return ("dataset=webdataset", f"dataset.root={tmp_path / 'wds'}", f"dataset.shards='{pattern}'", *extra)


def one_pass(ds, seed: int = 0, epoch: int = 0) -> tuple[list[dict], int]:
    """The samples of one pass over a stream and the number it skipped."""
    skipped: list[int] = []
    samples = list(ds.stream(seed, epoch, skipped.append))
    return samples, sum(skipped)


def test_webdataset_streams_every_good_sample_once_and_counts_the_bad(tmp_path):
    expected = write_shards(tmp_path / "wds", shards=4, per_shard=5, corrupt=["0010002"])
    ds = dataset(*shards(tmp_path, "dataset.label_key=cls", "dataset.num_classes=3"))
    assert ds.provided(ds.cfg) == {"image", "caption", "label"}
    with pytest.warns(UserWarning, match="0010002"):
        samples, skipped = one_pass(ds)
    keys = [s["key"] for s in samples]
    assert sorted(keys) == sorted(k for k in expected if not k.endswith("0010002")) and skipped == 1
    for s in samples:
        assert s["caption"] == expected[s["key"]]["caption"] and s["label"] == expected[s["key"]]["label"]
        assert_coloured(s["image"], s["label"])
    with pytest.warns(UserWarning):
        again = [s["key"] for s in one_pass(ds, epoch=0)[0]]
        other = [s["key"] for s in one_pass(ds, epoch=1)[0]]
    assert again == keys and other != keys and sorted(other) == sorted(keys)  # seeded; reshuffled per epoch


def test_webdataset_json_fields_and_out_of_range_labels(tmp_path):
    expected = write_shards(tmp_path / "wds", shards=1, per_shard=6, num_classes=3)
    json_keys = ("dataset.caption_key=json:caption", "dataset.label_key=json:label", "dataset.num_classes=2")
    ds = dataset(*shards(tmp_path, *json_keys, "dataset.shuffle_buffer=0", pattern="shard-000.tar"))
    with pytest.warns(UserWarning, match="outside 0..1"):
        samples, skipped = one_pass(ds)
    assert [s["label"] for s in samples] == [0, 1, 0, 1] and skipped == 2  # label 2: outside num_classes=2
    assert all(s["caption"] == expected[s["key"]]["caption"] for s in samples)


def test_two_workers_read_disjoint_shards_and_together_all_of_them(tmp_path):
    expected = write_shards(tmp_path / "wds", shards=4, per_shard=3)
    ds = dataset(*shards(tmp_path))
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, collate_fn=lambda s: (s["key"], get_worker_info().id)
    )
    seen = list(loader)
    keys = [k for k, _ in seen]
    assert sorted(keys) == sorted(expected) and len(set(keys)) == len(keys)
    by_worker = {w: {k.split("/")[0] for k, wid in seen if wid == w} for w in (0, 1)}
    assert len(by_worker[0]) == len(by_worker[1]) == 2 and not by_worker[0] & by_worker[1]


def test_shards_are_dealt_to_ranks_and_workers_without_overlap():
    names = [f"{i:05d}.tar" for i in range(10)]
    order = epoch_order(names, seed=3, epoch=1)
    assert order == epoch_order(names, seed=3, epoch=1) and order != epoch_order(names, seed=3, epoch=2)
    parts = [share(order, rank, 2, worker, 2) for rank in range(2) for worker in range(2)]
    flat = [s for p in parts for s in p]
    assert sorted(flat) == names and len(flat) == len(set(flat))
    mixed = list(buffer_shuffle(range(100), 10, np.random.default_rng(0)))
    assert sorted(mixed) == list(range(100)) and mixed != list(range(100))


def test_brace_expansion_resolves_against_the_root_and_names_missing_shards(tmp_path):
    write_shards(tmp_path / "wds", shards=3, per_shard=1)
    got = expand_shards("shard-{000..001}.tar::shard-002.tar", tmp_path / "wds")
    assert got == [str(tmp_path / "wds" / f"shard-00{i}.tar") for i in range(3)]
    assert expand_shards("pipe:cat x.tar::https://host/{a,b}.tar", None) == [
        "pipe:cat x.tar", "https://host/a.tar", "https://host/b.tar"]  # fmt: skip
    with pytest.raises(ConfigError) as info:
        dataset(*shards(tmp_path, pattern="shard-{000..004}.tar"))
    assert "2 of the 5 shards" in str(info.value) and "shard-003.tar" in str(info.value)


def test_webdataset_without_labels_is_refused_for_supervised_with_the_fix(tmp_path):
    write_shards(tmp_path / "wds", shards=1, per_shard=1)
    with pytest.raises(ConfigError) as info:
        run_config(*shards(tmp_path, pattern="shard-000.tar"), "method=supervised")
    assert "dataset.label_key=cls" in str(info.value)
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        dataset(*shards(tmp_path, "dataset.label_key=cls", pattern="shard-000.tar"))


def test_a_broken_shard_is_skipped_counted_and_the_stream_goes_on(tmp_path):
    write_shards(tmp_path / "wds", shards=2, per_shard=3)
    good = (tmp_path / "wds" / "shard-000.tar").read_bytes()
    (tmp_path / "wds" / "shard-000.tar").write_bytes(good[: len(good) // 2])  # cut short
    ds = dataset(*shards(tmp_path, pattern="shard-{000..001}.tar"))
    with pytest.warns(UserWarning, match="unreadable shard"):
        samples, skipped = one_pass(ds)
    assert {s["key"].split("/")[0] for s in samples} >= {"shard-001.tar"} and skipped >= 1


def test_a_stream_too_small_for_one_batch_is_an_error_not_a_hang(tmp_path):
    write_shards(tmp_path / "wds", shards=1, per_shard=3)
    ds = dataset(*shards(tmp_path, pattern="shard-000.tar"))
    batches = endless_batches(ds, lambda s: {"image": s["image"][:, :8, :8].float()}, batch_size=4, seed=0)
    with pytest.raises(DataError, match="no full batch of 4"):
        next(batches)


def test_webdataset_batches_across_workers_count_skipped_images(tmp_path):
    write_shards(tmp_path / "wds", shards=2, per_shard=4, corrupt=["0000001", "0010003"])
    ds = dataset(*shards(tmp_path, pattern="shard-{000..001}.tar"))
    batches = endless_batches(
        ds, lambda s: {"image": s["image"][:, :8, :8].float()}, 3, seed=0, num_workers=2
    )
    for _ in range(2):  # each worker holds one shard of 3 good samples: one batch each per pass
        assert next(batches)["image"].shape == (3, 3, 8, 8)
    assert batches.skipped == 2


def test_a_real_tar_shard_holds_the_webdataset_members(tmp_path):
    write_shards(tmp_path / "wds", shards=1, per_shard=2)
    with tarfile.open(tmp_path / "wds" / "shard-000.tar") as tar:
        assert tar.getnames()[:4] == ["0000000.jpg", "0000000.txt", "0000000.cls", "0000000.json"]


def test_coco_clip_pretraining_runs_on_the_tiny_copy(tmp_path):
    write_coco(tmp_path / "coco", images=12, size=(20, 28, 20, 28))
    code = run_in_process(
        "budgetssl-pretrain",
        *coco(tmp_path),
        *small("clip"),
        "dataset.image_size=16",
        "train.batch_size=4",
        "train.progress=false",
        "energy.track=false",
        "logger.wandb.mode=disabled",
        "budget.flops=8e8",
        folder=tmp_path / "run",
    )
    assert code == 0
    record = summary(tmp_path / "run")
    assert record["status"] == "completed" and record["dataset"] == "coco" and record["steps"] >= 2
    assert record["data_skipped"] == 0


def test_a_missing_root_fails_the_command_with_exit_code_2_and_a_record(tmp_path, capsys):
    overrides = ["dataset=imagenet1k", f"dataset.root={tmp_path / 'nowhere'}", "energy.track=false"]
    assert run_in_process("budgetssl-pretrain", *overrides, folder=tmp_path / "run") == 2
    assert "does not exist" in capsys.readouterr().err
    record = summary(tmp_path / "run")
    assert record["status"] == "failed" and record["error_type"] == "ConfigError"
    assert str(tmp_path / "nowhere") in record["error"] and "dataset.root" in record["error"]


def test_the_study_private_sets_read_labelled_and_captioned_shards(tmp_path):
    expected = write_shards(tmp_path / "wds", shards=1, per_shard=4)
    (tmp_path / "wds" / "names.txt").write_text("tench\ngoldfish\nshark\n")
    where = (f"dataset.root={tmp_path / 'wds'}", "dataset.shards=shard-000.tar")
    jft = run_config("dataset=jft300m", *where, "dataset.class_list=names.txt", "dataset.num_classes=3")
    assert jft.method.name == "supervised" and jft.dataset.label_key == "cls"
    labelled, _ = one_pass(build_dataset(jft.dataset))
    assert all(s["label"] == expected[s["key"]]["label"] and "caption" not in s for s in labelled)
    assert build_dataset(jft.dataset).info.class_names == ("tench", "goldfish", "shark")
    align = run_config("dataset=align", *where, "method=clip")
    captioned, _ = one_pass(build_dataset(align.dataset))
    assert all(s["caption"] == expected[s["key"]]["caption"] and "label" not in s for s in captioned)
    with pytest.raises(ConfigError, match="needs label"):
        run_config("dataset=align", *where, "method=supervised")
