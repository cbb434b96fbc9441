"""train.augment_on=device: the batched views (methods/batched.py) against torchvision's per-sample ones.

Exact where the arithmetic is the same (the antialiased resample, each colour op, the blur); in
distribution where both draw at random: the two paths see the same images, and each statistic is
compared with a test whose false-alarm rate is about 1e-4 at the sample size used (chi-square,
Kolmogorov-Smirnov, 4 standard errors), with fixed seeds, so a pass or a failure is deterministic.

The loader path works in uint8 and truncates after each colour op (torchvision's uint8 kernels), the
device path stays in float32: measured on 3000 views each, the loader's views are darker by 1-2 grey
levels where colour jitter runs (up to five truncations of half a level on average), which the mean
comparisons allow for (QUANTISATION) on top of their sampling error.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from budgetssl.data.info import DataInfo
from budgetssl.data.loader import (
    IMAGE_SIZE,
    BatchFetch,
    LoaderOptions,
    Position,
    collate_images,
    endless_batches,
)
from budgetssl.data.sets.synthetic import SyntheticShapes
from budgetssl.errors import ConfigError
from budgetssl.methods import batched
from budgetssl.methods.augment import CROP_RATIO, Augment, MultiView, SingleView, resized_crop, ssl_crop
from budgetssl.methods.batched import Draws, OnDevice, crop_boxes, device_views
from budgetssl.stages.pretrain import build
from conftest import METHOD_NAMES, TINY, run_config, run_in_process, small, summary

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = DataInfo(image_size=16)
Z_CHI2 = 3.719  # the standard normal's 1 - 1e-4 quantile
KS_C = 2.226  # Kolmogorov-Smirnov at alpha 1e-4: D > c * sqrt((n + m) / (n m)) rejects
QUANTISATION = 3 / 255  # the uint8 path's truncation bias allowed in a mean, in [0, 1] units


@functools.cache
def scenes(n: int = 64, size: int = 16) -> torch.Tensor:
    """`n` rendered synthetic scenes, uint8 (n, 3, size, size): real content with edges and colour."""
    cfg = run_config(*TINY, f"dataset.image_size={size}").dataset
    ds = SyntheticShapes(cfg)  # type: ignore[arg-type]
    return torch.stack([ds[i]["image"].as_subclass(torch.Tensor) for i in range(n)])


def loader_path(aug, images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """`n` views by torchvision per sample, image i % len(images) for the i-th."""
    torch.manual_seed(seed)
    return torch.stack([aug(tv_tensors.Image(images[i % len(images)])) for i in range(n)])


def device_path(aug: Augment, images: torch.Tensor, n: int, seed: int = 1, device: str = "cpu"):
    """The same `n` views by the batched path: n / len(images) views of each image in one call, as a
    method's several views of one kind are made (row j len(images) + b is a view of image b)."""
    assert n % len(images) == 0
    sizes = torch.tensor([images.shape[-2:]] * len(images), device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return batched.batch_views(aug, images.to(device).float() / 255, sizes, generator, n // len(images)).cpu()


def chi2_critical(dof: int) -> float:
    """The 1 - 1e-4 quantile of chi-square(dof) (Wilson-Hilferty)."""
    a = 2 / (9 * dof)
    return dof * (1 - a + Z_CHI2 * math.sqrt(a)) ** 3


def assert_same_categorical(a: list, b: list, what: str) -> None:
    """Two samples of equal size from one categorical distribution: the chi-square test of
    homogeneity, categories with fewer than 10 draws in both together pooled into one."""
    assert len(a) == len(b)
    counts: dict = {}
    for value in a:
        counts.setdefault(value, [0, 0])[0] += 1
    for value in b:
        counts.setdefault(value, [0, 0])[1] += 1
    cells = [c for c in counts.values() if sum(c) >= 10]
    rare = [
        sum(c[0] for c in counts.values() if sum(c) < 10),
        sum(c[1] for c in counts.values() if sum(c) < 10),
    ]
    if sum(rare):
        cells.append(rare)
    if len(cells) < 2:
        return
    stat = sum((x - y) ** 2 / (x + y) for x, y in cells)
    assert stat < chi2_critical(len(cells) - 1), f"{what}: chi2 {stat:.1f} over {len(cells)} cells"


def assert_same_continuous(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Two samples from one continuous distribution: the two-sample Kolmogorov-Smirnov test."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    d = float((cdf_a - cdf_b).abs().max())
    limit = KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
    assert d < limit, f"{what}: KS D {d:.3f} >= {limit:.3f}"


def assert_rate(hits: torch.Tensor, p: float, what: str) -> None:
    """A rate within 4 standard errors of a binomial's `p` (two-sided, about 6e-5 false alarms)."""
    n = hits.numel()
    rate = float(hits.float().mean())
    assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n), f"{what}: rate {rate:.3f}, expected {p} (n={n})"


# The sampler: crop boxes of torchvision's RandomResizedCrop and of crop_boxes, 3000 each.


@pytest.mark.parametrize(
    "height,width,scale",
    [(16, 16, (0.08, 1.0)), (16, 16, (0.05, 0.25)), (12, 20, (0.25, 1.0)), (40, 6, (0.5, 1.0))],
)
def test_crop_boxes_follow_torchvisions_sampler(height, width, scale):
    n = 3000
    crop = resized_crop(8, scale, "bilinear")
    torch.manual_seed(0)
    flat = [tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))]
    theirs = [crop.make_params(flat) for _ in range(n)]
    rand = Draws(torch.Generator().manual_seed(0)).rows(1, n)
    top, left, h, w = crop_boxes(torch.tensor([[height, width]] * n), scale, CROP_RATIO, rand)
    assert bool(
        (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    )
    ours = list(zip(h.tolist(), w.tolist(), top.tolist(), left.tolist(), strict=True))
    theirs_boxes = [(p["height"], p["width"], p["top"], p["left"]) for p in theirs]
    # Crop sizes (area fraction and aspect ratio together) and offsets, each as a categorical variable.
    assert_same_categorical([b[:2] for b in theirs_boxes], [b[:2] for b in ours], "crop (h, w)")
    assert_same_categorical([b[2] for b in theirs_boxes], [b[2] for b in ours], "crop top")
    assert_same_categorical([b[3] for b in theirs_boxes], [b[3] for b in ours], "crop left")


# The deterministic parts: the same arithmetic as torch's and torchvision's per-sample ops.


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("box,size", [((2, 3, 10, 7), 16), ((5, 1, 50, 40), 16), ((0, 0, 60, 48), 24)])
def test_the_resample_is_torchs_antialiased_resize(interpolation, box, size):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 48)
    top, left, h, w = box
    expected = F.interpolate(
        image[..., top : top + h, left : left + w], size=(size, size), mode=interpolation, antialias=True
    )
    boxes = tuple(torch.tensor([v]) for v in box)
    got = batched.resized_crops(image, boxes, size, interpolation, None)
    if interpolation == "bicubic":
        expected = expected.clamp(0, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    flipped = batched.resized_crops(image, boxes, size, interpolation, torch.tensor([True]))
    torch.testing.assert_close(flipped, got.flip(-1))


def test_each_colour_op_and_the_blur_are_torchvisions_per_sample():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    factor = torch.tensor([0.5, 1.3, 0.9, 1.0])
    shift = torch.tensor([-0.1, 0.05, 0.2, 0.0])
    sigma = torch.tensor([0.1, 0.7, 1.5, 2.0])
    ops = [
        (batched.brightness, TF.adjust_brightness, factor),
        (batched.contrast, TF.adjust_contrast, factor),
        (batched.saturation, TF.adjust_saturation, factor),
        (batched.hue, TF.adjust_hue, shift),
    ]
    for ours, theirs, f in ops:
        expected = torch.stack([theirs(x[i], float(f[i])) for i in range(4)])
        torch.testing.assert_close(ours(x, f), expected, atol=2e-6, rtol=0)
    blurred = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(4)])
    torch.testing.assert_close(batched.gaussian_blur(x, 5, sigma), blurred, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_the_accelerators_jitter_is_the_cpus(monkeypatch):
    """On an accelerator every sample goes through hue (shift 0 where it has none) so that nothing
    waits for the device; on CPU only the samples that have it: the same views."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    apply = torch.rand(64) < 0.8

    def jittered() -> torch.Tensor:
        rand = Draws(torch.Generator().manual_seed(5)).rows(1, 64)
        return batched.color_jitter(x, (0.4, 0.4, 0.2, 0.1), apply, rand)

    on_cpu = jittered()
    monkeypatch.setattr(batched, "on_host", lambda device: False)
    torch.testing.assert_close(jittered(), on_cpu, atol=2e-6, rtol=0)


# Each random op alone (the crop the whole image, so the op shows): how often it applies.

WHOLE = dict(size=16, scale=(1.0, 1.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), flip=False)
ALONE = {
    "flip": (Augment(**{**WHOLE, "flip": True}), 0.5),
    "jitter": (Augment(**WHOLE, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8), 0.8),
    "grayscale": (Augment(**WHOLE, gray_p=0.2), 0.2),
    "solarize": (Augment(**WHOLE, solarize_p=0.2), 0.2),
    "blur": (Augment(**WHOLE, blur_p=0.5), None),  # a blur of sigma near 0.1 leaves a 16-px image as it was
}


@pytest.mark.parametrize("op", list(ALONE))
def test_each_op_applies_as_often_on_either_path(op):
    aug, p = ALONE[op]
    images = scenes()
    n = 640
    source = images[torch.arange(n) % len(images)].float() / 255
    outputs = {"loader": loader_path(aug, images, n), "device": device_path(aug, images, n)}
    hits, changes = {}, {}
    for path, out in outputs.items():
        change = (out - source).abs().flatten(1)
        if op == "flip":
            hits[path] = (out - source.flip(-1)).abs().flatten(1).amax(1) < 1e-6
        elif op == "grayscale":
            hits[path] = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(
                1
            )
        else:  # changed by at least half a grey level (the loader rounds smaller changes away)
            hits[path] = change.amax(1) > 0.5 / 255
        changes[path] = change.mean(1)[hits[path]]
        if p is not None:
            assert_rate(hits[path], p, f"{op} on the {path} path")
    assert_same_categorical(hits["loader"].tolist(), hits["device"].tolist(), f"{op} rate")
    if op != "flip":  # how strong the op is where it applies: the mean change of a view it changed
        assert_same_continuous(changes["loader"], changes["device"], f"{op} strength")


# Whole views as the methods make them: per-channel means and spreads of the views, 384 of each (the
# crop-and-flip views of MAE, CLIP and supervised are the first view's first op, bilinear in the sampler
# and resample tests above).

VIEWS = {
    "dino global 1 (bicubic, blur 1.0)": ssl_crop(DATA, 16, (0.25, 1.0), blur_p=1.0, interpolation="bicubic"),
    "byol second (blur 0.1, solarize 0.2)": ssl_crop(DATA, 16, (0.08, 1.0), blur_p=0.1, solarize_p=0.2),
    "simclr (strong jitter, blur 0.5)": ssl_crop(
        DATA, 16, (0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5
    ),
    "dino local (8 px)": ssl_crop(DATA, 8, (0.05, 0.25), blur_p=0.5, interpolation="bicubic"),
}


GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


@pytest.mark.parametrize("on", ["cpu", GPU])
@pytest.mark.parametrize("name", list(VIEWS))
def test_whole_views_agree_in_distribution(name, on):
    aug = VIEWS[name]
    images = scenes()
    n = 384
    loader, device = loader_path(aug, images, n), device_path(aug, images, n, device=on)
    assert loader.shape == device.shape == (n, 3, aug.size, aug.size)
    for c in range(3):
        a, b = loader[:, c].flatten(1), device[:, c].flatten(1)
        allowance = QUANTISATION / aug.std[c]  # in normalised units
        for stat, (x, y) in {"mean": (a.mean(1), b.mean(1)), "std": (a.std(1), b.std(1))}.items():
            error = math.sqrt(float(x.var() + y.var()) / n)
            gap = abs(float(x.mean() - y.mean()))
            assert gap <= 4 * error + allowance, (
                f"{name}: channel {c} {stat} {gap:.3f} apart (se {error:.3f})"
            )
            assert_same_continuous(x, y, f"{name}: channel {c} {stat}")
        # The pixels themselves, one per view, at a position that moves from view to view (pixels of
        # one view are not independent draws).
        at = (torch.arange(n) * 37) % a.shape[1]
        assert_same_continuous(a[torch.arange(n), at], b[torch.arange(n), at], f"{name}: channel {c} pixels")


# The stream: decoded images to the device, views there, seeded by position; sizes kept apart.


def test_padded_batches_of_several_sizes_never_read_the_padding():
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(10, 14), (16, 9), (12, 12)]]
    batch = collate_images([{"image": im, "label": i} for i, im in enumerate(images)])
    assert batch["image"].shape == (3, 3, 16, 14) and batch["label"].tolist() == [0, 1, 2]
    assert batch[IMAGE_SIZE].tolist() == [[10, 14], [16, 9], [12, 12]]
    padded = batch["image"].float() / 255
    for i, im in enumerate(images):
        padded[i, :, im.shape[1] :, :] = 1e6  # read with weight 0 (the padding itself is black)
        padded[i, :, :, im.shape[2] :] = 1e6
    aug = ssl_crop(DATA, 8, (0.08, 1.0), blur_p=0.5, solarize_p=0.5)
    for seed in range(20):
        out = batched.batch_views(aug, padded, batch[IMAGE_SIZE], torch.Generator().manual_seed(seed))
        assert float(out.abs().max()) < 10


def test_device_stream_is_the_loader_streams_batches_viewed_and_resumes_where_it_stopped():
    ds = SyntheticShapes(run_config(*TINY).dataset)  # type: ignore[arg-type]
    views = MultiView(
        {
            "global": [ssl_crop(DATA, 16, (0.25, 1.0)), ssl_crop(DATA, 16, (0.25, 1.0), solarize_p=0.2)],
            "local": [ssl_crop(DATA, 8, (0.05, 0.25))] * 3,
        }
    )
    split = batched.on_device(views)
    assert split is not None

    def stream():
        after = OnDevice(split, torch.device("cpu"), seed=3)
        return endless_batches(ds, split.loader, 8, seed=3, collate=collate_images, after=after)

    first = stream()
    batches = [next(first) for _ in range(4)]
    assert batches[0]["global"].shape == (8, 2, 3, 16, 16) and batches[0]["local"].shape == (8, 3, 3, 8, 8)
    local = batches[0]["local"]
    assert not torch.equal(local[:, 0], local[:, 1]) and not torch.equal(local[:, 1], local[:, 2])
    assert set(batches[0]) == {"global", "local"}
    resumed = stream()
    resumed.restore(first.state() | {"batches_in_epoch": 2})
    again = next(resumed)
    torch.testing.assert_close(again, batches[2], atol=0, rtol=0)
    assert not torch.equal(batches[2]["global"], batches[3]["global"])


def test_two_ranks_view_their_halves_of_a_batch_as_one_process_views_the_whole():
    images = scenes()[:8]
    dino_global, dino_local = VIEWS["dino global 1 (bicubic, blur 1.0)"], VIEWS["dino local (8 px)"]
    views = MultiView({"global": [dino_global], "local": [dino_local] * 2})
    split = batched.on_device(views)
    assert split is not None
    batch = collate_images([{"image": im} for im in images])
    where = Position(epoch=1, in_epoch=5)
    one = OnDevice(split, torch.device("cpu"), seed=7)(batch, where)
    for rank in range(2):
        half = {k: v[4 * rank : 4 * rank + 4] for k, v in batch.items()}
        mine = OnDevice(split, torch.device("cpu"), seed=7, rank=rank, world=2)(half, where)
        for key in ("global", "local"):
            torch.testing.assert_close(mine[key], one[key][4 * rank : 4 * rank + 4], atol=1e-6, rtol=0)


def test_views_that_only_run_per_sample_stay_in_the_loader():
    unbatchable = SingleView(lambda image: image.float())
    cpu = torch.device("cpu")
    assert device_views(unbatchable, "auto", cpu, 0) is None
    with pytest.raises(ConfigError, match="augment_on=device"):
        device_views(unbatchable, "device", cpu, 0)
    batchable = SingleView(Augment(16, (0.5, 1.0), DATA.mean, DATA.std))
    assert device_views(batchable, "loader", cpu, 0) is None
    assert device_views(batchable, "auto", cpu, 0) is not None
    assert device_views(batchable, "auto", cpu, 2) is None  # CPU workers make the views beside the step
    with pytest.raises(ConfigError, match="RandAugment"):
        run_config(*TINY, "train.augment_on=device", "method.randaugment=rand-m9-mstd0.5-inc1")


def test_num_workers_auto_per_device(monkeypatch):
    assert LoaderOptions.for_device(3, "cpu") == LoaderOptions(3, pin_memory=False, prefetch_factor=None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert LoaderOptions.for_device("auto", "cpu").num_workers == 0
    monkeypatch.setattr("budgetssl.data.loader.cores", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cuda = LoaderOptions.for_device("auto", "cuda")
    assert cuda == LoaderOptions(8, pin_memory=True, prefetch_factor=4)
    monkeypatch.setattr("budgetssl.data.loader.cores", lambda: 4)
    assert LoaderOptions.for_device("auto", "cuda").num_workers == 1
    with pytest.raises(ConfigError, match="num_workers"):
        run_config(*TINY, "train.num_workers=many")


def test_a_run_with_views_on_the_device_trains_and_costs_what_the_loader_run_costs(tmp_path):
    records = {}
    for path in ("loader", "device"):
        folder = tmp_path / path
        code = run_in_process(
            "budgetssl-pretrain",
            *TINY,
            *small("dino"),
            "budget.flops=7e9",  # two DINO steps
            f"train.augment_on={path}",
            folder=folder,
        )
        assert code == 0
        records[path] = summary(folder)
        assert records[path]["status"] == "completed" and records[path]["steps"] >= 2
    # The views are data work, not the model's: the meter counts the same step either way.
    assert records["device"]["flops_per_step"] == records["loader"]["flops_per_step"]
    assert records["device"]["flops_breakdown"] == records["loader"]["flops_breakdown"]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_methods_batch_is_the_same_shape_whichever_path_makes_its_views(method):
    """Each registered method's batch as the loader makes it (per sample) and as train.augment_on=auto
    makes it (on the device, where the method's views can run there): the same fields, shapes and dtypes,
    so the step cannot tell the two apart. On the device path the synthetic set's batches are fetched
    whole, and are the per-sample path's (tests/test_batch_data.py has the details)."""
    got = {}
    for where in ("loader", "auto"):
        run = run_config(*TINY, *small(method), "train.num_workers=0", f"train.augment_on={where}")
        task, batches = build(run)
        batch = next(batches)
        got[where] = {k: (tuple(v.shape), v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    assert got["loader"] == got["auto"] and got["loader"]
    assert all(shape[0] == 16 for shape, _ in got["loader"].values())
    if batches.after is not None:  # the views on the device
        fetch = batches.loader.dataset
        assert isinstance(fetch, BatchFetch)
        whole = endless_batches(fetch.dataset, fetch.view, 16, seed=1, collate=collate_images)
        each = endless_batches(
            fetch.dataset, batched.LoaderPart(fetch.view.views), 16, seed=1, collate=collate_images
        )
        for _ in range(2):
            a, b = next(whole), next(each)
            assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), method
