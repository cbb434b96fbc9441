"""A method's views on a whole batch on the training device (`train.augment_on=device`).

The loader hands over the decoded uint8 images (padded to the batch's largest, with each image's own
height and width) and the sample's other fields; each `Augment` then runs on the batch in a few tensor
operations, every random parameter drawn per sample, with torchvision's semantics (methods/augment.py
runs the same `Augment` per sample with torchvision v2):

- random resized crop: torchvision's sampler (ten tries of an area fraction and a log-uniform aspect
  ratio, integer boxes, the central-crop fallback), vectorised; the crop and resize are one separable
  product per image with the weights of torch's antialiased resize (PIL's filters: a triangle for
  bilinear, Keys' cubic with a = -0.5 for bicubic, widened by the scale when shrinking), so a batch of
  crops of any sizes resamples in two batched matrix products; a flip reverses the output columns;
  label maps (the transfer's masks, transfer/views.py BatchTrainView) take the same boxes nearest-
  neighbour, the source pixels torch's nearest resize picks, in one gather;
- colour jitter: brightness, contrast, saturation and hue factors drawn per sample, applied in a random
  order per sample (torchvision's randperm): at each place of the order one blend serves the three
  linear ops (identity factors where a sample has hue there or is not jittered), then hue;
- greyscale, Gaussian blur (a per-sample sigma, separable, reflect-padded), solarisation at 128/255,
  normalisation.

torchvision's uint8 pipeline rounds (or truncates) after each op; this one stays in float32, a
difference of a grey level or two. Nothing here waits for the device (no data-dependent shapes on an
accelerator, constants copied to it once), so on a GPU the views queue behind the previous step.

kornia's augmentation module draws per-sample parameters too, but its crop sampler, resampling (no
antialiasing), jitter order and solarisation thresholds differ from torchvision's, so these few ops are
written here on torch instead (no new dependency), and the two paths agree in distribution
(tests/test_augment_batched.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from budgetssl.data.loader import IMAGE_SIZE, BatchView, one_size
from budgetssl.data.sampler import mix
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import (
    BLUR_SIGMA,
    CROP_RATIO,
    SOLARIZE_THRESHOLD,
    Augment,
    Views,
    fields_batch,
)

if TYPE_CHECKING:
    from budgetssl.data.loader import Position

CROP_TRIES = 10  # torchvision's RandomResizedCrop
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@functools.lru_cache(maxsize=64)
def constant(values: tuple, device: torch.device) -> torch.Tensor:
    """A small constant on `device`, copied there once: a copy from the host per batch would make the
    host wait for the device's queue (the previous step) on a GPU."""
    return torch.tensor(values, device=device)


class Draws:
    """Uniform random numbers for this rank's rows of a global batch, drawn for every rank's rows and
    sliced: a sample's views are the same on one process or on N (as the loader path's are, each sample
    seeded by its place in the epoch), since the sampler gives rank r the r-th slice of each global
    batch. `rows(copies, per)` gives the function that draws for `copies` views of this rank's `per`
    images (row j per + b: view j of image b)."""

    def __init__(self, generator: torch.Generator, rank: int = 0, world: int = 1) -> None:
        self.generator, self.rank, self.world = generator, rank, world

    def rows(self, copies: int, per: int) -> Rand:
        def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            every = torch.rand(
                copies,
                per * self.world,
                *shape,
                generator=self.generator,
                dtype=dtype,
                device=self.generator.device,
            )
            return every[:, self.rank * per : (self.rank + 1) * per].flatten(0, 1)

        return rand


Rand = Callable[..., torch.Tensor]  # rand(*shape, dtype=...) -> (rows, *shape) uniform in [0, 1)


def on_host(device: torch.device) -> bool:
    """Whether an op may pick its samples by data (a CPU does not wait for a queue to do so)."""
    return device.type == "cpu"


def uniform(rand: Rand, low: float, high: float) -> torch.Tensor:
    return rand() * (high - low) + low


def chance(rand: Rand, p: float) -> torch.Tensor:
    """Which samples an op with probability `p` applies to."""
    return rand() < p


def crop_boxes(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rand: Rand,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, height, width) per image of (height, width) `sizes`: torchvision's RandomResizedCrop
    sampler on every image at once (the first of ten tries that fits, else the central crop)."""
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = height * width
    draws = rand(2 * CROP_TRIES, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * draws[:, :CROP_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[:, CROP_TRIES:])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.double().argmax(dim=1, keepdim=True)  # the first try that fits (argmax: first maximum)
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    # The fallback: the whole image, or its centre cut to the nearest allowed aspect ratio.
    in_ratio = width / height
    fb_w = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    w, h = torch.where(found, w, fb_w), torch.where(found, h, fb_h)
    offsets = rand(2, dtype=torch.float64)
    top = torch.where(found, torch.floor(offsets[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(offsets[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return top.long(), left.long(), h.long(), w.long()


def _filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """torch's antialiased resampling filters (aten UpSampleKernel: PIL's)."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1 - x).clamp_(min=0)
    a = -0.5  # Keys (1981), as PIL and torch's antialiased bicubic use
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(
    start: torch.Tensor, length: torch.Tensor, out: int, full: int, interpolation: str
) -> torch.Tensor:
    """(B, out, full): row o of image b averages the input samples that torch's antialiased resize
    (F.interpolate(..., antialias=True)) of the span [start, start + length) to `out` samples would."""
    scale = (length.float() / out)[:, None, None]  # input samples per output sample
    shrinking = scale >= 1
    inv = torch.where(shrinking, 1 / scale, torch.ones_like(scale))
    centre = scale * (torch.arange(out, device=start.device, dtype=torch.float32)[None, :, None] + 0.5)
    rel = torch.arange(full, device=start.device)[None, None, :] - start[:, None, None]
    weights = _filter((rel + 0.5 - centre) * inv, interpolation)
    weights = weights * ((rel >= 0) & (rel < length[:, None, None]))
    return weights / weights.sum(dim=-1, keepdim=True)


def resized_crops(
    images: torch.Tensor,
    boxes: tuple[torch.Tensor, ...],
    size: int,
    interpolation: str,
    flip: torch.Tensor | None,
) -> torch.Tensor:
    """Each box resized to (size, size) and, where `flip`, mirrored: (k B, C, size, size) for k B boxes
    of the B `images` (box j B + b is in image b; the images are not copied k times)."""
    top, left, h, w = boxes
    n = images.shape[0]
    rows = resample_weights(top, h, size, images.shape[-2], interpolation)
    cols = resample_weights(left, w, size, images.shape[-1], interpolation)
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    rows = rows.view(-1, n, 1, size, images.shape[-2])  # (k, B, 1, size, H)
    cols = cols.view(-1, n, 1, size, images.shape[-1]).transpose(-1, -2)
    out = (rows @ images @ cols).flatten(0, 1)
    return out.clamp_(0, 1) if interpolation == "bicubic" else out  # a cubic overshoots


def nearest_indices(start: torch.Tensor, length: torch.Tensor, out: int) -> torch.Tensor:
    """(B, out): the input sample each of `out` output samples takes when torch's nearest resize
    (F.interpolate(..., mode="nearest") with a size, what torchvision's NEAREST runs: v2/functional/
    _geometry.py resize_image) maps the span [start, start + length) to `out` samples:
    min(floor(o * (length / out)), length - 1), in float32 as aten computes it (UpSample.h
    nearest_neighbor_compute_source_index, the scale from compute_scales_value<float>), so the same
    samples are picked, bit for bit (tested over many lengths)."""
    scale = length.to(torch.float32)[:, None] / out
    picked = torch.floor(torch.arange(out, device=start.device, dtype=torch.float32)[None, :] * scale)
    return start[:, None] + torch.minimum(picked.long(), length[:, None] - 1)


def nearest_crops(
    maps: torch.Tensor, boxes: tuple[torch.Tensor, ...], size: int, flip: torch.Tensor | None
) -> torch.Tensor:
    """Each box of `maps` (B, H, W) (one box per map: label masks, any dtype) resized nearest-neighbour
    to (size, size) and, where `flip`, mirrored: what F.resized_crop(mask, *box, size, NEAREST) gives,
    by picking source pixels (one gather; no arithmetic on the labels, so a label is never mixed)."""
    top, left, h, w = boxes
    width = maps.shape[-1]
    rows = nearest_indices(top, h, size)
    cols = nearest_indices(left, w, size)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    picked = (rows[:, :, None] * width + cols[:, None, :]).flatten(1)
    return maps.flatten(1).gather(1, picked).view(-1, size, size)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel of (B, C, H, W), the constants copied to the device once."""
    mean_, std_ = constant(tuple(mean), x.device), constant(tuple(std), x.device)
    return (x - mean_[None, :, None, None]) / std_[None, :, None, None]


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma, torchvision's weights."""
    return (x[:, 0:1] * GRAY[0] + x[:, 1:2] * GRAY[1] + x[:, 2:3] * GRAY[2]).contiguous()


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """torchvision's (PIL's) RGB -> HSV on (B, 3, H, W) in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    equal = maxc == minc
    spread = maxc - minc
    s = spread / torch.where(equal, torch.ones_like(maxc), maxc)
    d = torch.where(equal, torch.ones_like(spread), spread)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, maxc), 1)


# hsv_to_rgb's offsets of r, g, b on the hue circle (in sixths).
RGB_SECTORS = (5.0, 3.0, 1.0)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB, all three channels at once: c = v - v s clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6 h) mod 6, n = 5, 3, 1 for r, g, b; torchvision's sector table, in fewer ops."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    k = torch.remainder(constant(RGB_SECTORS, x.device)[None, :, None, None] + 6 * h, 6)
    return v - v * s * torch.minimum(k, 4 - k).clamp_(0, 1)


def per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor[:, None, None, None]


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * per_sample(factor)).clamp_(0, 1)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = per_sample(factor)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x), factor)


def hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    shifted = torch.remainder(hsv[:, 0] + factor[:, None, None], 1.0)
    return hsv_to_rgb(torch.stack((shifted, hsv[:, 1], hsv[:, 2]), 1))


def color_jitter(x: torch.Tensor, jitter: tuple[float, ...], apply: torch.Tensor, rand: Rand) -> torch.Tensor:
    """torchvision's ColorJitter where `apply`: factors uniform in [max(0, 1 - j), 1 + j] ([-j, j] for
    hue), the four ops in a random order per sample; an op whose strength is 0 is left out, as there.

    At each of the four places in the order, brightness, contrast and saturation are one blend (with
    black, the mean grey or the grey image; factor 1 leaves a sample as it is) and hue runs on the
    samples that have it there: on CPU on those alone, on an accelerator on all (shift 0 for the
    others), so that nothing waits for the device."""
    device = x.device
    b, c, s, h = jitter
    factors = torch.stack(
        [
            uniform(rand, max(0.0, 1 - b), 1 + b),
            uniform(rand, max(0.0, 1 - c), 1 + c),
            uniform(rand, max(0.0, 1 - s), 1 + s),
            uniform(rand, -h, h),
        ],
        dim=1,
    )
    order = rand(4).argsort(dim=1)  # a permutation per sample
    enabled = constant(tuple(j > 0 for j in jitter), device)
    for place in range(4):
        op = order[:, place]
        active = apply & enabled[op]
        factor = factors.gather(1, op[:, None])[:, 0]
        if b or c or s:
            blended = active & (op < 3)
            f = per_sample(torch.where(blended, factor, torch.ones_like(factor)))
            gray = grayscale(x)
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            other = torch.where(per_sample(op == 0), 0.0, torch.where(per_sample(op == 1), mean, gray))
            x = (f * x + (1 - f) * other).clamp_(0, 1)
        if h:
            shifted = active & (op == 3)
            if on_host(device):
                rows = shifted.nonzero()[:, 0]
                if len(rows):
                    x = x.index_copy(0, rows, hue(x[rows], factor[rows]))
            else:
                x = hue(x, torch.where(shifted, factor, torch.zeros_like(factor)))
    return x


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's Gaussian blur with one sigma per image: separable, reflect-padded."""
    n, c, h, w = x.shape
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    taps = torch.linspace(-lim, lim, kernel, device=x.device)
    weights = torch.softmax(-((taps[None, :] / sigma[:, None]) ** 2), dim=1)  # (B, k)
    weights = weights.repeat_interleave(c, dim=0)  # one filter per (image, channel)
    pad = kernel // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, h + 2 * pad, w + 2 * pad)
    out = F.conv2d(padded, weights[:, None, None, :], groups=n * c)
    out = F.conv2d(out, weights[:, None, :, None], groups=n * c)
    return out.reshape(n, c, h, w)


def augment_batch(
    aug: Augment, images: torch.Tensor, sizes: torch.Tensor, draws: Draws, copies: int = 1
) -> torch.Tensor:
    """`aug` on every image: (B, C, H, W) floats in [0, 1] with each image's (height, width) in `sizes`
    -> (copies B, C, size, size) normalised views, `copies` independent views of each image (row
    j B + b is view j of image b)."""
    rand = draws.rows(copies, images.shape[0])
    boxes = crop_boxes(sizes.repeat(copies, 1), aug.scale, CROP_RATIO, rand)
    flip = chance(rand, 0.5) if aug.flip else None
    x = resized_crops(images, boxes, aug.size, aug.interpolation, flip)
    if aug.jitter is not None and aug.jitter_p > 0:
        x = color_jitter(x, aug.jitter, chance(rand, aug.jitter_p), rand)
    if aug.gray_p > 0:
        gray = chance(rand, aug.gray_p)
        x = torch.where(per_sample(gray), grayscale(x).expand_as(x), x)
    if aug.blur_p > 0:
        blur = chance(rand, aug.blur_p)
        sigma = uniform(rand, *BLUR_SIGMA)
        x = torch.where(per_sample(blur), gaussian_blur(x, aug.blur_size, sigma), x)
    if aug.solarize_p > 0:
        solarize = chance(rand, aug.solarize_p)
        # uint8 pixels >= 128 are inverted; the float pipeline has not rounded, so its threshold is
        # where rounding would reach 128.
        x = torch.where(per_sample(solarize) & (x >= (SOLARIZE_THRESHOLD - 0.5) / 255), 1 - x, x)
    return normalize(x, aug.mean, aug.std)


class LoaderPart:
    """What the data path makes of a sample under augment_on=device: the decoded uint8 image and the
    fields the method reads (label, caption tokens); data/loader.py collate_images batches them."""

    def __init__(self, views: Views) -> None:
        self.views = views

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"image": sample["image"], **self.views.fields(sample)}


class BatchLoaderPart(LoaderPart, BatchView):
    """LoaderPart on a whole batch (data/loader.py BatchView) for views whose fields batch
    (Views.batch_fields): the batch's images as the dataset stacked them, the fields made in one go."""

    def batch(self, samples: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        return {**one_size(samples["image"]), **self.views.batch_fields(samples, seeds)}


class DeviceViews:
    """A method's views split for augment_on=device: `loader` runs per sample in the data path, and
    calling this on a batch (on the device) makes the same keys the per-sample views make."""

    def __init__(self, views: Views, groups: dict[str, list[Augment]], stacked: bool) -> None:
        self.groups = groups
        self.stacked = stacked
        self.loader = BatchLoaderPart(views) if fields_batch(views) else LoaderPart(views)

    def __call__(self, batch: dict[str, Any], draws: Draws) -> dict[str, Any]:
        rest = dict(batch)
        images = rest.pop("image").float().div_(255)
        sizes = rest.pop(IMAGE_SIZE)
        out: dict[str, Any] = {}
        for name, augments in self.groups.items():
            made = []
            for aug, copies in runs(augments):  # several views of one kind in one call (DINO's locals)
                made += augment_batch(aug, images, sizes, draws, copies).chunk(copies)
            out[name] = torch.stack(made, dim=1) if self.stacked else made[0]
        return {**out, **rest}


def runs(augments: list[Augment]) -> list[tuple[Augment, int]]:
    """Consecutive equal augmentations counted: [a, a, b] -> [(a, 2), (b, 1)]."""
    out: list[tuple[Augment, int]] = []
    for aug in augments:
        if out and out[-1][0] == aug:
            out[-1] = (aug, out[-1][1] + 1)
        else:
            out.append((aug, 1))
    return out


BatchViews = Callable[[dict[str, Any], Draws], dict[str, Any]]  # a collated batch on the device -> views


class OnDevice:
    """The device's half of augment_on=device, run on each batch the stream hands out (on the stream's
    background thread, a batch ahead of the step: data/loader.py Batches): the batch moved to `device`
    and viewed there by `views` (a method's DeviceViews, the transfer's training view),
    drawing from a generator seeded by (seed, epoch, batch in epoch) for the global batch (Draws), so a
    resumed run draws what an uninterrupted one did and N ranks draw what one process does. Outside the
    metered step (augmentation is data work, not the model's FLOPs), under no_grad."""

    def __init__(
        self, views: BatchViews, device: torch.device, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.views = views
        self.device = device
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.draws = Draws(self.generator, rank, world)

    def __call__(self, batch: dict[str, Any], position: Position) -> dict[str, Any]:
        moved = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        key = mix(self.seed, position.epoch, position.in_epoch) & 0x7FFF_FFFF_FFFF_FFFF
        self.generator.manual_seed(key)
        with torch.no_grad():
            return self.views(moved, self.draws)


def on_device(views: Views) -> DeviceViews | None:
    """The loader's and the device's parts of `views`, or None where a transform is not an `Augment`
    (e.g. timm's RandAugment), which only the loader can run."""
    groups = views.groups()
    if not all(isinstance(t, Augment) for ts in groups.values() for t in ts):
        return None
    return DeviceViews(views, groups, views.stacked)  # type: ignore[arg-type]


def batch_views(
    augment: Augment, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator, copies: int = 1
) -> torch.Tensor:
    """`augment`'s view of every image of a batch at once: `images` (B, C, H, W) floats in [0, 1] (padded
    beyond each image's own `sizes` (B, 2) = height, width), parameters drawn from `generator`; `copies`
    independent views of each, (copies B, C, size, size)."""
    return augment_batch(augment, images, sizes, Draws(generator), copies)


def views_on_device(augment_on: str, device: torch.device, workers: int) -> bool:
    """Whether views that can run batched do, as `train.augment_on` says: loader, never; device,
    always; auto, unless this is a CPU with data-loader workers (there the workers make the per-sample
    views beside the training step, while device views would take the step's own cores)."""
    if augment_on == "loader":
        return False
    return augment_on == "device" or not (device.type == "cpu" and workers > 0)


def device_views(views: Any, augment_on: str, device: torch.device, workers: int) -> DeviceViews | None:
    """A method's views split for the device, or None for the loader path, as `train.augment_on` says
    (views_on_device); device is refused (ConfigError) where a view only runs per sample, auto keeps
    such views in the loader."""
    if augment_on == "loader":
        return None
    split = on_device(views) if isinstance(views, Views) else None
    if split is None and augment_on == "device":
        raise ConfigError(
            "train.augment_on=device: this method's views include transforms that run per sample only "
            "(e.g. supervised's RandAugment or random erasing); use train.augment_on=loader or auto, "
            "or turn those off"
        )
    if split is None or not views_on_device(augment_on, device, workers):
        return None
    return split
