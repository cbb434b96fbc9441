"""Augmentation pipelines shared by methods, each written once and run two ways.

An `Augment` states one view (random resized crop, flip, colour jitter, greyscale, blur, solarisation,
normalisation). Called on a sample's image it runs torchvision transforms v2 in the data path (what
`train.augment_on=loader` does); `Augment.batch` runs the same view on a whole batch of decoded uint8
images on the training device, with every random parameter drawn per sample (methods/batched.py; what
`train.augment_on=device` does). A method's view object (SingleView, MultiView, supervised's
LabelledView, CLIP's CaptionView) names its groups of augmentations and the sample's other fields;
`methods/batched.py` `on_device` splits it into the loader's part (the decoded image and those fields)
and the device's part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torchvision.transforms import v2

from budgetssl.config.schema import Interpolation, MethodConfig
from budgetssl.data.info import DataInfo
from budgetssl.errors import ConfigError

# How a random resized crop resamples. The references differ: DINO (main_dino.py), MAE
# (main_pretrain.py), open_clip (transform.py), SimCLR's TF code (data_util.py) and BYOL's (dataset.py)
# resize bicubic; MoCo v3 (main_moco.py), whose ViT study is the SimCLR/BYOL-on-ViT reference, keeps
# torchvision's default, bilinear.
INTERPOLATIONS = {
    Interpolation.bilinear: v2.InterpolationMode.BILINEAR,
    Interpolation.bicubic: v2.InterpolationMode.BICUBIC,
}
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop aspect ratios, as every reference keeps
BLUR_SIGMA = (0.1, 2.0)  # SimCLR's Gaussian blur sigma range (BYOL, DINO keep it)
SOLARIZE_THRESHOLD = 128  # of 255: pixels at or above it are inverted (BYOL, DINO)


@dataclass
class CropConfig(MethodConfig):
    """The crop a method's views share: random resized crops of the whole image covering
    (crop_scale_min, 1] of its area (`crop_scale`), resampled by `interpolation` (its values refused
    by the schema's enum). A method whose views crop so lists it among its config's bases (supervised,
    MAE, SimCLR, BYOL, CLIP) and keeps the override names `method.crop_scale_min` and
    `method.interpolation`; the range is checked here, once, when the section is typed (config/check.py
    `typed` builds this dataclass), so no method checks it again."""

    crop_scale_min: float = MISSING  # the smallest crop's share of the image's area
    interpolation: Interpolation = MISSING  # bilinear | bicubic (each method's YAML cites its reference)

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= 1:
            raise ConfigError(
                "method.crop_scale_min (the smallest crop's share of the image's area) must be in (0, 1], "
                f"e.g. method.crop_scale_min=0.08; got {self.crop_scale_min}"
            )

    @property
    def crop_scale(self) -> tuple[float, float]:
        return (self.crop_scale_min, 1.0)


def resized_crop(size: int, scale: tuple[float, float], interpolation: str) -> v2.RandomResizedCrop:
    """torchvision's random resized crop with the reference's resampling (antialiased)."""
    return v2.RandomResizedCrop(
        size,
        scale=scale,
        ratio=CROP_RATIO,
        interpolation=INTERPOLATIONS[Interpolation(interpolation)],
        antialias=True,
    )


def to_normalized(data: DataInfo) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]


def blur_kernel(size: int) -> int:
    """Odd kernel about 10% of the crop side (SimCLR's rule; 23 px at 224)."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


@dataclass(frozen=True)
class Augment:
    """One view of an image: random resized crop to `size` (area fraction `scale`, aspect ratio in
    CROP_RATIO, resampled by `interpolation` with antialiasing), a horizontal flip (p 0.5), colour
    jitter (brightness, contrast, saturation, hue: `jitter`, in a random order) with probability
    `jitter_p`, greyscale with `gray_p`, Gaussian blur (sigma in BLUR_SIGMA) with `blur_p`, solarisation
    with `solarize_p`, then floats normalised by `mean` and `std`.

    Calling it on a uint8 image (C, H, W) runs torchvision v2 per sample; `batch` runs it on a batch."""

    size: int
    scale: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation = Interpolation.bilinear
    flip: bool = True
    jitter: tuple[float, float, float, float] | None = None
    jitter_p: float = 0.0
    gray_p: float = 0.0
    blur_p: float = 0.0
    solarize_p: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))  # a bad name: ValueError
        object.__setattr__(self, "_per_sample", self.transform())

    @property
    def blur_size(self) -> int:
        return blur_kernel(self.size)

    def transform(self) -> v2.Compose:
        """The per-sample pipeline (torchvision transforms v2) on a uint8 image tensor."""
        ops: list = [resized_crop(self.size, self.scale, self.interpolation)]
        if self.flip:
            ops.append(v2.RandomHorizontalFlip())
        if self.jitter is not None and self.jitter_p > 0:
            b, c, s, h = self.jitter
            jitter = v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)
            ops.append(v2.RandomApply([jitter], p=self.jitter_p))
        if self.gray_p > 0:
            ops.append(v2.RandomGrayscale(p=self.gray_p))
        if self.blur_p > 0:
            ops.append(v2.RandomApply([v2.GaussianBlur(self.blur_size, sigma=BLUR_SIGMA)], p=self.blur_p))
        if self.solarize_p > 0:
            ops.append(v2.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=self.solarize_p))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(ops)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self._per_sample(image)  # type: ignore[attr-defined]


def random_crop_flip(
    data: DataInfo,
    size: int,
    scale: tuple[float, float],
    flip: bool = True,
    interpolation: Interpolation = Interpolation.bilinear,
) -> Augment:
    """The classification recipe: random resized crop and (unless `flip` is off) horizontal flip."""
    return Augment(size, tuple(scale), data.mean, data.std, interpolation, flip=flip)  # type: ignore[arg-type]


def ssl_crop(
    data: DataInfo,
    size: int,
    scale: tuple[float, float],
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    blur_p: float = 0.0,
    solarize_p: float = 0.0,
    interpolation: Interpolation = Interpolation.bilinear,
) -> Augment:
    """The SimCLR/BYOL/DINO family of views: crop, flip, colour jitter, greyscale, blur, solarize."""
    return Augment(
        size,
        tuple(scale),  # type: ignore[arg-type]
        data.mean,
        data.std,
        interpolation,
        jitter=tuple(jitter),  # type: ignore[arg-type]
        jitter_p=jitter_p,
        gray_p=gray_p,
        blur_p=blur_p,
        solarize_p=solarize_p,
    )


def asymmetric_pair(data: DataInfo, cfg: CropConfig) -> MultiView:
    """BYOL's two views (Grill et al. 2020, Table 6): ssl_crop's crop, flip, jitter (0.4, 0.4, 0.2, 0.1) at
    p 0.8 and greyscale 0.2 on both; blur always on the first, blur 0.1 and solarisation 0.2 on the second.
    BYOL, MoCo v3 (main_moco.py augmentation1/2), Barlow Twins (main.py Transform) and VICReg
    (augmentations.py TrainTransform) all train on this pair: {"views": (2, C, H, W)}."""
    size, scale, resample = data.image_size, cfg.crop_scale, cfg.interpolation
    first = ssl_crop(data, size, scale, blur_p=1.0, interpolation=resample)
    second = ssl_crop(data, size, scale, blur_p=0.1, solarize_p=0.2, interpolation=resample)
    return MultiView({"views": [first, second]})


class Views:
    """A method's views of a sample: groups of transforms of its image, and its other fields.

    `groups()` maps each output key to its transforms: one transform gives (C, H, W) per sample, several
    (`stacked`) give (V, C, H, W), views of one size in one group so a method sends them through the
    backbone together. `fields(sample)` adds what else the method reads (a label, caption tokens), and
    `batch_fields` the same for a whole batch at once.
    """

    stacked = False

    def groups(self) -> dict[str, list[Callable]]:
        raise NotImplementedError

    def fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {}

    def batch_fields(self, batch: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        """`fields` of every sample of `batch` (data/base.py BatchDataset.batch), collated: the same
        values; a field that draws at random draws with each sample's seed in `seeds` (data/sampler.py
        seeded), as the per-sample path seeds it. A subclass that adds `fields` without this keeps its
        batches made per sample (`fields_batch`)."""
        return {}

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        fields = self.fields(sample)  # first: a caption drawn among several draws before the crops
        out: dict[str, Any] = {}
        for name, transforms in self.groups().items():
            made = [t(image) for t in transforms]
            out[name] = torch.stack(made) if self.stacked else made[0]
        return {**out, **fields}


def fields_batch(views: Views) -> bool:
    """Whether `views.batch_fields` makes its `fields`: not where a class overrides `fields` below the
    last one to write `batch_fields`."""
    order = type(views).__mro__

    def owner(name: str) -> int:
        return next(i for i, cls in enumerate(order) if name in vars(cls))

    return owner("batch_fields") <= owner("fields")


class MultiView(Views):
    """Several augmented views of one image, stacked per group: {"views": (V, C, H, W), ...}."""

    stacked = True

    def __init__(self, groups: dict[str, list]) -> None:
        self._groups = {name: list(transforms) for name, transforms in groups.items() if transforms}

    def groups(self) -> dict[str, list[Callable]]:
        return self._groups


class SingleView(Views):
    """One augmented view: {"image": (C, H, W)}."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def groups(self) -> dict[str, list[Callable]]:
        return {"image": [self.transform]}
