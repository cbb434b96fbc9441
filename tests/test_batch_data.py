"""The batched data path (augment_on=device on the synthetic set): one gather of the stored scenes and
the fields made per batch give the per-sample path's batches, value for value, on every rank, every
epoch and after a restore mid-epoch."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from budgetssl.data.info import DataInfo
from budgetssl.data.loader import BatchFetch, collate_images, endless_batches
from budgetssl.data.sampler import EpochBatchSampler, EpochSampler, Seeded, mix, seeded
from budgetssl.data.sets.synthetic import CHUNK, SceneCache, SyntheticShapes, Whole
from budgetssl.data.shapes import SHAPES
from budgetssl.methods import batched, captions
from budgetssl.methods.augment import MultiView, fields_batch, ssl_crop
from budgetssl.methods.captions import CaptionView
from budgetssl.methods.zoo.ibot import MaskedMultiView, Masking
from budgetssl.methods.zoo.supervised import LabelledView
from conftest import TINY, run_config

DATA = DataInfo(image_size=16, class_names=SHAPES)
CROP = ssl_crop(DATA, 8, (0.25, 1.0))
MASKING = Masking(grid=4, crops=2, ratios=(0.3,), ratio_vars=(0.2,), aspect=(0.3, 3.3), shape="block")
VIEWS = {
    "multi-crop, no fields": lambda: MultiView(
        {"global": [CROP, CROP], "local": [ssl_crop(DATA, 4, (0.1, 0.3))]}
    ),
    "label (supervised)": lambda: LabelledView(CROP),
    "caption tokens (CLIP, SigLIP)": lambda: CaptionView(CROP, SHAPES, "auto", context_length=12),
    "pseudo-caption tokens": lambda: CaptionView(CROP, SHAPES, "label", context_length=12),
    "masks drawn per sample (iBOT)": lambda: MaskedMultiView({"global": [CROP, CROP]}, MASKING),
}
BATCH, WORLD = 4, 2  # per rank; 24 samples -> 3 global batches an epoch


@functools.cache
def dataset(num_train: int = 24) -> SyntheticShapes:
    return SyntheticShapes(run_config(*TINY, f"dataset.num_train={num_train}").dataset)  # type: ignore[arg-type]


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The same keys in the same order, tensors of the same dtype, shape and values, lists equal."""
    assert list(a) == list(b)
    for key in a:
        if torch.is_tensor(a[key]):
            assert b[key].dtype == a[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def streams(views, rank: int, workers: int = 0):
    """The per-sample stream (LoaderPart, collated) and the batched one (the device path's loader
    part, which takes batches where the views' fields do) of rank `rank` of WORLD."""
    split = batched.on_device(views)
    assert split is not None and isinstance(split.loader, batched.BatchLoaderPart)

    def stream(view):
        return endless_batches(
            dataset(),
            view,
            BATCH,
            seed=5,
            rank=rank,
            world=WORLD,
            num_workers=workers,
            collate=collate_images,
        )

    return stream(batched.LoaderPart(views)), stream(split.loader)


@pytest.mark.parametrize("name", VIEWS)
def test_batches_are_the_per_sample_paths_on_both_ranks_over_epochs_and_after_a_restore(name):
    views = VIEWS[name]()  # one tokeniser to load, not four
    for rank in range(WORLD):
        per_sample, whole = streams(views, rank)
        assert isinstance(per_sample.loader.dataset, Seeded) and isinstance(whole.loader.dataset, BatchFetch)
        expected = [next(per_sample) for _ in range(9)]  # three epochs
        for want in expected:
            assert_same(want, next(whole))
        assert whole.state() == per_sample.state() == {"epoch": 2, "batches_in_epoch": 3}
        assert not torch.equal(expected[0]["image"], expected[3]["image"])  # a new order each epoch
        _, resumed = streams(views, rank)
        resumed.restore({"epoch": 1, "batches_in_epoch": 2})
        for want in expected[5:]:
            assert_same(want, next(resumed))


def test_a_worker_prefetches_whole_batches_the_same():
    views = VIEWS["caption tokens (CLIP, SigLIP)"]()
    _, in_process = streams(views, rank=1)
    _, in_worker = streams(views, rank=1, workers=1)
    assert isinstance(in_worker.loader.sampler, EpochBatchSampler) and in_worker.loader.batch_size is None
    for _ in range(4):  # across an epoch's end
        assert_same(next(in_process), next(in_worker))


def test_the_batch_sampler_groups_the_per_sample_order():
    sampler, grouped = EpochSampler(24, BATCH, 5, 1, WORLD), EpochBatchSampler(24, BATCH, 5, 1, WORLD)
    sampler.set_epoch(2, 1), grouped.set_epoch(2, 1)
    batches = list(grouped)
    assert len(batches) == len(grouped) == 2 and all(len(b) == BATCH for b in batches)
    assert [key for b in batches for key in b] == list(sampler)


def test_a_synthetic_batch_is_its_samples_stacked():
    ds = dataset(2 * CHUNK)
    indices = [CHUNK + 2, 3, CHUNK - 1, 3, CHUNK]  # two chunks, out of order, a repeat
    batch = ds.batch(indices)
    samples = [ds[i] for i in indices]
    assert batch["image"].shape == (5, 3, 16, 16) and batch["image"].dtype == torch.uint8
    for key in ("image", "mask"):
        stacked = torch.stack([s[key].as_subclass(torch.Tensor) for s in samples])
        assert batch[key].dtype == stacked.dtype and torch.equal(batch[key], stacked)
    assert batch["label"].tolist() == [s["label"] for s in samples] and batch["label"].dtype == torch.int64
    assert batch["caption"] == [s["caption"] for s in samples]
    assert all(type(c) is str for c in batch["caption"])
    with pytest.raises(IndexError, match=f"index {2 * CHUNK} outside the {2 * CHUNK} samples"):
        ds.batch([0, 2 * CHUNK])
    with pytest.raises(IndexError, match="index -1"):
        ds.batch([-1])
    with pytest.raises(ValueError, match="non-empty list of indices"):
        ds.batch([])


def test_a_batch_is_the_same_from_the_whole_streams_arrays_and_from_its_chunks(tmp_path):
    """A stream that fits is gathered from one set of arrays (SceneCache.whole), one that does not chunk by
    chunk: the same scenes either way, chunks kept already or read from the store."""
    indices = np.array([CHUNK + 2, 3, 2 * CHUNK + 5, CHUNK - 1, 3, CHUNK])  # three chunks, a repeat
    length = 3 * CHUNK
    by_chunk = SceneCache(folder=tmp_path).rows(0, "train", indices, 16, 3)  # no length: chunk by chunk
    roomy = SceneCache(folder=tmp_path)
    roomy.chunk((0, "train", CHUNK, 16, 3))  # one chunk kept already, the others read from the store
    whole = roomy.rows(0, "train", indices, 16, 3, length)
    assert roomy.wholes and all(w is not None for w in roomy.wholes.values())
    assert (
        roomy.rows(0, "train", indices[::-1], 16, 3, length).labels.tolist() == by_chunk.labels.tolist()[::-1]
    )
    tight = SceneCache(max_bytes=Whole.size(length, 16) - 1, folder=tmp_path)
    chunked = tight.rows(0, "train", indices, 16, 3, length)
    assert list(tight.wholes.values()) == [None]  # did not fit: chunk by chunk
    for got in (whole, chunked):
        assert np.array_equal(got.images, by_chunk.images) and np.array_equal(got.masks, by_chunk.masks)
        assert got.labels.tolist() == by_chunk.labels.tolist()
        assert got.captions.tolist() == by_chunk.captions.tolist()


def test_several_captions_draw_one_per_sample_with_its_seed_as_the_per_sample_path():
    view = CaptionView(CROP, SHAPES, "auto", context_length=12)
    captions = [["a red ring", "a blue circle", "a green cross"], "one caption", ["two", "captions"]] * 20
    batch = {"caption": captions, "label": torch.zeros(len(captions), dtype=torch.int64)}
    seeds = [mix(5, 0, position) for position in range(len(captions))]
    tokens = view.batch_fields(batch, seeds)["tokens"]
    each = [
        seeded(s, functools.partial(view.fields, {"caption": c}))
        for c, s in zip(captions, seeds, strict=True)
    ]
    assert torch.equal(tokens, torch.stack([f["tokens"] for f in each]))
    drawn = {tuple(tokens[i].tolist()) for i in range(0, len(captions), 3)}
    assert len(drawn) == 3  # every caption of the first image drawn by some sample
    assert torch.equal(view.batch_fields(batch, seeds)["tokens"], tokens)  # seeded: the same again


def test_views_whose_fields_only_run_per_sample_keep_the_per_sample_path():
    class Extra(LabelledView):  # a user's fields without a batch_fields
        def fields(self, sample):
            return {"label": torch.tensor(sample["label"]), "twice": torch.tensor(2 * sample["label"])}

    assert fields_batch(LabelledView(CROP)) and fields_batch(MultiView({"v": [CROP]}))
    assert not fields_batch(Extra(CROP))
    split = batched.on_device(Extra(CROP))
    assert split is not None and not isinstance(split.loader, batched.BatchLoaderPart)
    stream = endless_batches(dataset(), split.loader, BATCH, seed=5, collate=collate_images)
    assert isinstance(stream.loader.dataset, Seeded)
    batch = next(stream)
    assert torch.equal(batch["twice"], 2 * batch["label"])


def test_tokens_kept_from_earlier_batches_are_the_tokenisers_and_the_kept_ones_are_bounded(monkeypatch):
    monkeypatch.setattr(captions, "KNOWN_TEXTS", 2)
    view = CaptionView(CROP, SHAPES, "auto", context_length=12)
    texts = ["a red ring", "a blue circle", "a red ring", "a green cross and a red ring", "a blue circle"]
    for start in range(len(texts) - 1):
        batch = {"caption": texts[start : start + 2]}
        tokens = view.batch_fields(batch, [0, 0])["tokens"]
        assert torch.equal(tokens, view.tokenizer(texts[start : start + 2]))
        assert list(view.known) == texts[start : start + 2]  # the two latest kept, an older one dropped
