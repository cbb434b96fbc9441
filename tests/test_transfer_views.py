"""The transfer's training view batched on the device (transfer/views.py BatchTrainView) against the
per-sample TrainView, the reference (itself torchvision's v2 pipeline bit for bit: test_transfer_eval.py).

Exact where the arithmetic is the same: given one box and flip, the mask is F.resized_crop's NEAREST
output pixel for pixel, the image v2's antialiased bilinear resize to float rounding (and to one grey
level of its uint8 kernel, which rounds twice). In distribution where both draw at random (crop boxes,
flips, the views' pixels and labels), with the tests and false-alarm rates of test_augment_batched.py
(about 1e-4 per statistic, fixed seeds, so a pass or a failure is deterministic).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from budgetssl.data.info import SegInfo
from budgetssl.data.loader import IMAGE_SIZE, BatchFetch, Position
from budgetssl.engine.distributed import World
from budgetssl.errors import DataError
from budgetssl.methods import batched
from budgetssl.methods.batched import OnDevice, nearest_indices
from budgetssl.readout.segmentation import probe_views
from budgetssl.transfer.base import build_segmentation
from budgetssl.transfer.finetune import training_batches
from budgetssl.transfer.views import BatchTrainView, PairLoaderPart, batch_train_view, train_view
from conftest import TINY, run_config, run_in_process, summary
from test_augment_batched import assert_rate, assert_same_categorical, assert_same_continuous

pytestmark = pytest.mark.usefixtures("one_thread")

INFO = SegInfo(image_size=16, class_names=("background", "a", "b", "c", "d", "e"), ignore_index=255)
# v2's uint8 antialiased resize (torch's native uint8 kernel) rounds to a grey level after each of its
# two separable passes: within one level of the float resize (on average 0.06 of a level above it,
# measured on random 16-px images and boxes; the views' means below allow for the whole level).
UINT8_ROUNDING = 1 / 255
# train.augment_on=device is refused for the default method's RandAugment (pretraining's views, which
# only run per sample): these runs take a method whose views batch.
VIEWS_BATCH = ["method=cpu/mae"]


def pair(height: int, width: int, generator: torch.Generator, labels: int = 6) -> dict:
    """A random uint8 image and a mask of labels 0..labels-1 with some ignored pixels, as datasets give."""
    mask = torch.randint(0, labels, (height, width), generator=generator)
    mask[torch.rand(height, width, generator=generator) < 0.1] = 255
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)}


def collated(info: SegInfo, samples: list[dict]) -> dict:
    """`samples` batched as the loader batches them under augment_on=device, one by one."""
    part = PairLoaderPart(info)
    return part.collate([part(s) for s in samples])


def batched_views(view: BatchTrainView, samples: list[dict], seed: int) -> dict:
    """The views of `samples` as the fine-tuning makes them under augment_on=device: collated by the
    loader's PairLoaderPart, viewed on the batch by OnDevice."""
    batch = collated(INFO, samples)
    return OnDevice(view, torch.device("cpu"), seed)(batch, Position())


def per_sample_views(samples: list[dict], seed: int, info: SegInfo = INFO) -> dict:
    torch.manual_seed(seed)
    view = train_view(info, 16)
    out = [view(dict(s)) for s in samples]
    return {"image": torch.stack([o["image"] for o in out]), "mask": torch.stack([o["mask"] for o in out])}


# Exact: the nearest picks, and the view of one given box and flip.


@pytest.mark.parametrize("out", [7, 16, 24, 33])
def test_nearest_indices_pick_the_pixels_torchs_nearest_resize_picks(out):
    lengths = torch.arange(1, 80)
    picked = nearest_indices(torch.zeros_like(lengths), lengths, out)
    for n, row in zip(lengths.tolist(), picked, strict=True):
        source = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n)
        expected = F.interpolate(source, size=(1, out), mode="nearest").view(out).long()
        assert torch.equal(row, expected), f"{n} -> {out}"


# Boxes (top, left, height, width) in a 20 x 28 image: shrinking, enlarging, the same size, twice it.
BOXES = [(0, 0, 20, 28), (3, 5, 11, 13), (2, 1, 16, 16), (4, 6, 8, 8), (1, 0, 19, 9), (0, 12, 17, 16)]


def test_given_a_box_and_a_flip_the_mask_is_torchvisions_nearest_and_the_image_its_bilinear():
    g = torch.Generator().manual_seed(0)
    # Images of two sizes in one padded batch: each box lies in its own image (the 20 x 28 one or the
    # 20 x 17 one, for the boxes that fit it).
    sizes = [(20, 28) if left + width > 17 else (20, 17) for _, left, _, width in BOXES]
    samples = [pair(h, w, g) for h, w in sizes] * 2
    flips = torch.tensor([False] * len(BOXES) + [True] * len(BOXES))
    batch = collated(INFO, samples)
    assert (
        batch["image"].shape == (len(samples), 3, 20, 28)
        and batch[IMAGE_SIZE].tolist() == [[*hw] for hw in sizes] * 2
    )
    assert (20, 17) in sizes
    boxes = tuple(torch.tensor(column * 2) for column in zip(*BOXES, strict=True))
    view = BatchTrainView(INFO, 16)
    got = view.apply(batch["image"], batch["mask"], boxes, flips)
    assert got["mask"].dtype == torch.int64 and got["image"].dtype == torch.float32
    std = torch.tensor(INFO.std).view(3, 1, 1)
    for i, (sample, flip) in enumerate(zip(samples, flips.tolist(), strict=True)):
        box = BOXES[i % len(BOXES)]
        mask = TF.resized_crop(sample["mask"], *box, [16, 16], InterpolationMode.NEAREST)
        float_image = TF.resized_crop(sample["image"].float() / 255, *box, [16, 16], antialias=True)
        uint8_image = TF.to_dtype(
            TF.resized_crop(sample["image"], *box, [16, 16], antialias=True), scale=True
        )
        if flip:
            mask, float_image, uint8_image = mask.flip(-1), float_image.flip(-1), uint8_image.flip(-1)
        assert torch.equal(got["mask"][i], mask.as_subclass(torch.Tensor)), f"mask of box {box}, flip {flip}"
        ours = got["image"][i] * std + torch.tensor(INFO.mean).view(3, 1, 1)  # back to [0, 1]
        torch.testing.assert_close(ours, float_image.as_subclass(torch.Tensor), atol=1e-5, rtol=0)
        assert float((ours - uint8_image).abs().max()) <= UINT8_ROUNDING + 1e-5, f"image of box {box}"


def test_the_batched_view_never_waits_for_the_device():
    """On fake CUDA tensors (no GPU needed) any read of the device's data on the host raises
    (DataDependentOutputException): the batched view reads none; the label check happens before it, on
    the host, in the loader's part (PairLoaderPart)."""
    n = 8
    view = BatchTrainView(INFO, 16)
    batched.constant.cache_clear()  # its copies made under the fake mode must not outlive it
    try:
        with FakeTensorMode():
            images = torch.empty(n, 3, 20, 24, dtype=torch.uint8, device="cuda")
            masks = torch.empty(n, 20, 24, dtype=torch.uint8, device="cuda")
            sizes = torch.empty(n, 2, dtype=torch.int64, device="cuda")

            def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
                return torch.rand(n, *shape, dtype=dtype, device="cuda")

            boxes, flip = view.params(sizes, rand)
            out = view.apply(images, masks, boxes, flip)
            assert out["image"].shape == (n, 3, 16, 16) and out["image"].is_cuda
            assert out["mask"].shape == (n, 16, 16) and out["mask"].dtype == torch.int64
    finally:
        batched.constant.cache_clear()


# The loader's collate: padding, the label check, the masks' bytes.


def test_padding_is_ignored_and_never_read():
    g = torch.Generator().manual_seed(1)
    samples = [pair(h, w, g, labels=3) for h, w in [(10, 14), (16, 9), (12, 12)]]
    for s in samples:
        s["mask"][s["mask"] == 255] = 0  # no ignored pixel of their own: any 255 in a view is padding
    batch = collated(INFO, samples)
    assert batch["mask"].shape == (3, 16, 14) and batch["mask"].dtype == torch.uint8
    for i, s in enumerate(samples):
        h, w = s["mask"].shape
        padding = torch.ones(16, 14, dtype=torch.bool)
        padding[:h, :w] = False
        assert bool((batch["mask"][i][padding] == INFO.ignore_index).all())  # ignored, never class 0
        assert torch.equal(batch["mask"][i, :h, :w].long(), s["mask"].as_subclass(torch.Tensor))
    # Other padding values give the same views: the padding has weight 0 in the image and is never
    # picked for the mask.
    other = {k: v.clone() for k, v in batch.items()}
    for i, (h, w) in enumerate(batch[IMAGE_SIZE].tolist()):
        for key, value in (("image", 255), ("mask", 1)):
            other[key][i, ..., h:, :] = value
            other[key][i, ..., :, w:] = value
    view = BatchTrainView(INFO, 8)
    for seed in range(20):
        a = OnDevice(view, torch.device("cpu"), seed)(batch, Position())
        b = OnDevice(view, torch.device("cpu"), seed)(other, Position())
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])
        assert not bool((a["mask"] == INFO.ignore_index).any())


def test_a_label_outside_the_class_list_is_refused_once_per_batch_on_the_host():
    g = torch.Generator().manual_seed(2)
    samples = [pair(12, 12, g) for _ in range(4)]
    part = PairLoaderPart(INFO)
    whole = {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
    }
    assert part.collate(samples)["mask"].dtype == part.batch(whole, [])["mask"].dtype == torch.uint8  # fine
    samples[2]["mask"][3, 4] = 7
    whole["mask"][2, 3, 4] = 7
    for made in (lambda: part.collate(samples), lambda: part.batch(whole, [])):
        with pytest.raises(DataError, match=r"holds label 7, but the transfer dataset has 6 classes"):
            made()
    # Labels that do not fit in a byte stay int64.
    wide = SegInfo(image_size=16, class_names=tuple(f"c{i}" for i in range(300)), ignore_index=-1)
    samples[2]["mask"][3, 4] = 299
    for s in samples:
        s["mask"][s["mask"] == 255] = -1
    assert PairLoaderPart(wide).collate(samples)["mask"].dtype == torch.int64
    with pytest.raises(DataError, match="must be the same size"):
        part.collate([{"image": samples[0]["image"], "mask": samples[0]["mask"][:10]}])


def test_the_synthetic_sets_whole_batch_is_its_pairs_collated():
    train_set = build_segmentation(run_config(*TINY).transfer, "train")
    part = PairLoaderPart(train_set.info)
    at = [5, 0, 63, 5, 17]
    whole = part.batch(train_set.batch(at), [])
    one_by_one = part.collate([part(train_set[i]) for i in at])
    assert whole.keys() == one_by_one.keys() == {"image", "mask", IMAGE_SIZE}
    for key in whole:
        assert torch.equal(whole[key], one_by_one[key]) and whole[key].dtype == one_by_one[key].dtype, key
    with pytest.raises(IndexError, match="index 64 outside the 64 pairs"):
        train_set.batch([3, 64])


# In distribution: boxes, flips, pixels and labels of the views.

H, W = 12, 20  # a non-square image, so that the aspect-ratio draws show


def kept(index: torch.Tensor) -> list[tuple[int, int]]:
    """Per view, the first and last source row (or column) its pixels come from."""
    return [tuple(pair) for pair in torch.stack((index.amin((1, 2)), index.amax((1, 2))), 1).tolist()]


def test_crop_boxes_and_flips_follow_the_per_sample_view():
    """Each mask pixel holds its own position (label r W + c), so a view's mask tells which source
    rows and columns its crop kept and whether it was flipped."""
    n = 1500
    info = SegInfo(image_size=16, class_names=tuple(str(i) for i in range(H * W)), ignore_index=255)
    mask = torch.arange(H * W).view(H, W)
    sample = {
        "image": tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8)),
        "mask": tv_tensors.Mask(mask),
    }
    loader = per_sample_views([sample] * n, seed=0, info=info)["mask"]
    batch = collated(info, [sample] * n)
    device = OnDevice(BatchTrainView(info, 16), torch.device("cpu"), 3)(batch, Position())["mask"]
    found = {}
    for path, masks in (("loader", loader), ("device", device)):
        rows, cols = masks // W, masks % W
        flip = cols[:, 0, 0] > cols[:, 0, -1]
        assert_rate(flip, 0.5, f"flip on the {path} path")
        found[path] = {
            "rows kept (first, last)": kept(rows),
            "columns kept (first, last)": kept(cols),
            "flip": flip.tolist(),
        }
    for what in found["loader"]:
        assert_same_categorical(found["loader"][what], found["device"][what], what)


@functools.cache
def transfer_scenes(n: int = 64) -> list[dict]:
    """The synthetic transfer's training pairs: shapes on a background, boundaries ignored."""
    ds = build_segmentation(run_config(*TINY).transfer, "train")
    return [ds[i] for i in range(n)]


def test_views_pixels_and_labels_agree_in_distribution():
    scenes = transfer_scenes()
    n = 384
    samples = [scenes[i % len(scenes)] for i in range(n)]
    loader = per_sample_views(samples, seed=0)
    device = batched_views(BatchTrainView(INFO, 16), samples, seed=1)
    assert loader["image"].shape == device["image"].shape == (n, 3, 16, 16)
    assert loader["mask"].shape == device["mask"].shape == (n, 16, 16)
    at = (torch.arange(n) * 37) % 256  # one pixel per view, at a position that moves from view to view
    for c in range(3):
        a, b = loader["image"][:, c].flatten(1), device["image"][:, c].flatten(1)
        for stat, (x, y) in {"mean": (a.mean(1), b.mean(1)), "std": (a.std(1), b.std(1))}.items():
            error = math.sqrt(float(x.var() + y.var()) / n)
            gap = abs(float(x.mean() - y.mean()))
            assert gap <= 4 * error + UINT8_ROUNDING / INFO.std[c], (
                f"channel {c} {stat} {gap:.3f} (se {error:.3f})"
            )
            assert_same_continuous(x, y, f"channel {c} {stat}")
        assert_same_continuous(a[torch.arange(n), at], b[torch.arange(n), at], f"channel {c} pixels")
    for path, masks in (("loader", loader["mask"]), ("device", device["mask"])):
        assert set(masks.unique().tolist()) <= {*range(INFO.num_classes), INFO.ignore_index}, path
    a, b = loader["mask"].flatten(1), device["mask"].flatten(1)
    assert_same_categorical(a[torch.arange(n), at].tolist(), b[torch.arange(n), at].tolist(), "labels")
    for label in (0, INFO.ignore_index):  # each view's share of background and of ignored pixels
        assert_same_continuous(
            (a == label).float().mean(1), (b == label).float().mean(1), f"share of {label}"
        )


def test_two_ranks_view_their_halves_of_a_batch_as_one_process_views_the_whole():
    samples = transfer_scenes()[:8]
    batch = collated(INFO, samples)
    view = BatchTrainView(INFO, 16)
    where = Position(epoch=2, in_epoch=3)
    one = OnDevice(view, torch.device("cpu"), seed=5)(batch, where)
    for rank in range(2):
        half = {k: v[4 * rank : 4 * rank + 4] for k, v in batch.items()}
        mine = OnDevice(view, torch.device("cpu"), seed=5, rank=rank, world=2)(half, where)
        torch.testing.assert_close(
            mine, {k: v[4 * rank : 4 * rank + 4] for k, v in one.items()}, atol=0, rtol=0
        )


# The fine-tuning's stream and whole runs on both paths.


def test_augment_on_chooses_the_path_and_either_stream_gives_the_same_batch_shapes():
    cpu = torch.device("cpu")
    assert batch_train_view(INFO, 16, "loader", cpu, 0) is None
    assert batch_train_view(INFO, 16, "device", cpu, 2) is not None
    assert batch_train_view(INFO, 16, "auto", cpu, 0) is not None
    assert batch_train_view(INFO, 16, "auto", cpu, 2) is None  # CPU workers make the views beside the step
    got = {}
    for where in ("loader", "device"):
        run = run_config(*TINY, *VIEWS_BATCH, "train.num_workers=0", f"train.augment_on={where}")
        train_set = build_segmentation(run.transfer, "train")
        batches = training_batches(run.transfer, train_set, run.train, run.seed, World())
        batch = next(batches)
        got[where] = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
        # The synthetic set's batches are fetched whole where the views are made on the batch.
        assert isinstance(batches.loader.dataset, BatchFetch) == (where == "device")
    assert (
        got["loader"]
        == got["device"]
        == {
            "image": ((16, 3, 16, 16), torch.float32),
            "mask": ((16, 16, 16), torch.int64),
        }
    )


def test_the_probes_views_are_drawn_once_batched_and_seeded():
    run = run_config(*TINY, *VIEWS_BATCH)
    train_set = build_segmentation(run.transfer, "train")
    indices = list(range(0, 60, 2))

    def views(seed: int, augment_on: str = "auto") -> list[tuple[torch.Tensor, torch.Tensor]]:
        train = replace(run.train, augment_on=augment_on)
        return list(probe_views(run.transfer, train_set, indices, seed, 12, train, torch.device("cpu")))

    first = views(0)
    assert [tuple(m.shape) for _, m in first] == [(12, 16, 16), (12, 16, 16), (6, 16, 16)]
    assert [tuple(x.shape) for x, _ in first] == [(12, 3, 16, 16), (12, 3, 16, 16), (6, 3, 16, 16)]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, views(0), strict=True)
    )
    assert not torch.equal(first[0][0], views(1)[0][0])  # the run's seed draws them
    # The reference path gives the same images in the same order, in other crops.
    reference = views(0, "loader")
    assert [tuple(m.shape) for _, m in reference] == [tuple(m.shape) for _, m in first]
    assert not torch.equal(reference[0][0], first[0][0])


def test_a_transfer_and_its_probe_run_on_either_path(tmp_path):
    records = {}
    for path in ("loader", "device"):
        folder = tmp_path / path
        overrides = [
            *VIEWS_BATCH,
            "transfer.steps=3",
            "transfer.probe=true",
            "readout.classify=false",
            "readout.probe_images=32",
        ]
        assert (
            run_in_process("budgetssl-transfer", *TINY, *overrides, f"train.augment_on={path}", folder=folder)
            == 0
        )
        records[path] = summary(folder)
        assert records[path]["status"] == "completed"
        assert 0 <= records[path]["miou"] <= 100 and 0 <= records[path]["probe_miou"] <= 100
    assert records["loader"]["probe_protocol"]["views"].endswith("per sample")
    assert records["device"]["probe_protocol"]["views"].endswith("batched on the device")
    for key in ("transfer_flops_per_step", "transfer_flops", "probe_feature_flops", "probe_images"):
        assert records["device"][key] == records["loader"][key], key  # the views are data work, not FLOPs
    # The two paths drew different views: the losses differ.
    assert records["device"]["transfer_final_loss"] != records["loader"]["transfer_final_loss"]
