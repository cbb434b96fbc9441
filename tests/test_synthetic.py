"""The built-in synthetic dataset: deterministic, its masks agree with its pictures and captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from budgetssl.data.base import build_dataset
from budgetssl.data.sets.synthetic import SPLITS, scene
from budgetssl.data.shapes import COLOURS, DISTRACTOR_RADIUS, IGNORE, MAIN_RADIUS, SHAPES, shape_region
from conftest import run_config


def test_same_seed_same_sample_other_seed_other_sample():
    cfg = run_config().dataset
    a, b = build_dataset(cfg)[7], build_dataset(cfg)[7]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["caption"] == b["caption"] and a["label"] == b["label"]
    other = build_dataset(run_config("dataset.data_seed=1").dataset)[7]
    assert not torch.equal(a["image"], other["image"])


def test_sample_fields_and_types():
    ds = build_dataset(run_config("dataset.image_size=24").dataset)
    s = ds[0]
    assert s["image"].shape == (3, 24, 24) and s["image"].dtype == torch.uint8
    assert s["mask"].shape == (24, 24)
    assert 0 <= s["label"] < len(SHAPES) == ds.info.num_classes
    assert s["caption"].startswith("a ")


def test_splits_never_share_a_scene():
    images = {split: {scene(0, split, i, 16, 3).image.tobytes() for i in range(50)} for split in SPLITS}
    splits = list(images)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not images[a] & images[b]


def test_masks_match_images_and_captions():
    for index in range(40):
        s = scene(3, "train", index, 32, 3)
        n = 2 * 32
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
        main = s.objects[-1]
        # The main object is drawn last: every pixel fully inside it carries its class in the mask
        # and its colour (within the colour noise) in the image.
        inside = shape_region(main, xs, ys).reshape(32, 2, 32, 2).all(axis=(1, 3))
        assert inside.any()
        assert (s.mask[inside] == 1 + SHAPES.index(main.kind)).all()
        colour = np.asarray(COLOURS[main.colour], dtype=float)
        mean_error = np.abs(s.image[inside].astype(float) - colour).mean()
        assert mean_error < 8
        # Pixels no object touches are background; mixed pixels are ignored.
        touched = np.zeros((n, n), bool)
        for obj in s.objects:
            touched |= shape_region(obj, xs, ys)
        blocks = touched.reshape(32, 2, 32, 2)
        assert (s.mask[~blocks.any(axis=(1, 3))] == 0).all()
        assert set(np.unique(s.mask)) <= {0, IGNORE, *range(1, len(SHAPES) + 1)}
        assert s.label == SHAPES.index(main.kind)
        words = s.caption.split(" and ")
        assert words[0] == f"a {main.colour} {main.kind}"
        assert sorted(words) == sorted(f"a {o.colour} {o.kind}" for o in s.objects)


def test_the_labelled_object_is_the_largest_and_fills_much_of_the_frame():
    # What lets a small ViT learn the shapes within the demo's budgets (data/shapes.py MAIN_RADIUS).
    assert MAIN_RADIUS[0] > DISTRACTOR_RADIUS[1]
    for index in range(40):
        s = scene(0, "train", index, 16, 3)
        n = 2 * 16
        main, others = s.objects[-1], s.objects[:-1]
        assert MAIN_RADIUS[0] * n <= main.radius <= MAIN_RADIUS[1] * n
        assert all(o.radius < main.radius for o in others)
        assert (s.mask == 1 + SHAPES.index(main.kind)).mean() > 0.08  # a small triangle: about 0.1


def test_rendered_scenes_are_stored_once_and_read_back_as_they_were(tmp_path, monkeypatch):
    from budgetssl.data.sets import synthetic

    first = synthetic.SceneCache(folder=tmp_path)
    got = first(0, "train", 130, 16, 3)
    expected = scene(0, "train", 130, 16, 3)
    assert np.array_equal(got.image, expected.image) and np.array_equal(got.mask, expected.mask)
    assert (got.label, got.caption) == (expected.label, expected.caption)
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and files[0].name == f"{128:09d}.npz"  # the chunk of scenes 128-255
    # Another process (a fresh cache) reads the file and renders nothing.
    monkeypatch.setattr(synthetic.Chunk, "render", classmethod(lambda *a: pytest.fail("rendered again")))
    again = synthetic.SceneCache(folder=tmp_path)(0, "train", 131, 16, 3)
    assert np.array_equal(again.image, scene(0, "train", 131, 16, 3).image)
    monkeypatch.undo()
    # Other settings are another file; a damaged file is rendered and written again.
    synthetic.SceneCache(folder=tmp_path)(0, "train", 130, 24, 3)
    assert len(list(tmp_path.rglob("*.npz"))) == 2
    files[0].write_bytes(b"not an npz")
    healed = synthetic.SceneCache(folder=tmp_path)(0, "train", 130, 16, 3)
    assert np.array_equal(healed.image, expected.image)
    assert synthetic.Chunk.load(files[0], 16) is not None
