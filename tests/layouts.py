"""Tiny copies of the real datasets' on-disk layouts, with real JPEG/PNG files, tar shards and COCO JSON:
test fixtures, for the tests and the loader benchmark (benchmarks/loader_throughput.py), and for trying a
config before pointing it at the real copy (from a clone: `sys.path` holding tests/).

Every image is a flat colour (plus mild noise) chosen by its label, `colour(label)`, so a reader can check
that it got the right image for a label; segmentation images are coloured by their masks' classes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331")
NAMES = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray")
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [64] * (3 * 250) + [224, 224, 192]


def colour(label: int) -> tuple[int, int, int]:
    """The colour of images of class `label`: red channel 20, 60, 100, ... (cycling), so classes differ."""
    return (20 + (40 * label) % 220, 200 - (25 * label) % 180, (70 * label) % 256)


def picture(
    rng: np.random.Generator, size: tuple[int, int], rgb: Sequence[int], noise: int = 6
) -> np.ndarray:
    """(H, W, 3) uint8: a flat colour with noise."""
    h, w = size
    base = np.broadcast_to(np.asarray(rgb, dtype=np.int16), (h, w, 3))
    return np.clip(base + rng.integers(-noise, noise + 1, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _size(rng: np.random.Generator, size: tuple[int, int] | tuple[int, int, int, int]) -> tuple[int, int]:
    """A fixed (H, W), or a random one from (min H, max H, min W, max W)."""
    if len(size) == 2:
        return size[0], size[1]
    return int(rng.integers(size[0], size[1] + 1)), int(rng.integers(size[2], size[3] + 1))


def write_imagenet(
    root: Path,
    classes: int = 3,
    per_class: int = 4,
    val_per_class: int = 2,
    size: tuple[int, ...] = (24, 32),
    names: bool = True,
    seed: int = 0,
) -> Path:
    """root/train/<wnid>/<wnid>_<n>.JPEG, root/val/<wnid>/ILSVRC2012_val_<n>.JPEG, LOC_synset_mapping.txt."""
    rng = np.random.default_rng(seed)
    wnids = [WNIDS[i] if i < len(WNIDS) else f"n{10000000 + i:08d}" for i in range(classes)]
    n_val = 0
    for label, wnid in enumerate(wnids):
        for split, count in (("train", per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                n_val += split == "val"
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{n_val:08d}.JPEG"
                (folder / name).write_bytes(encode(picture(rng, _size(rng, size), colour(label))))
    if names:
        lines = [f"{w} {NAMES[i] if i < len(NAMES) else w}, a synonym" for i, w in enumerate(wnids)]
        (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    return root


def write_imagenet_flat(
    root: Path, classes: int = 3, per_class: int = 4, size: tuple[int, ...] = (24, 32), seed: int = 0
) -> Path:
    """The flattened single-label layout: root/train/<wnid>_<n>.JPEG and root/classes.txt (line = label).

    The class list is in reverse wnid order, so labels follow the list, not the sorted names."""
    rng = np.random.default_rng(seed)
    wnids = list(WNIDS[:classes])[::-1]
    (root / "train").mkdir(parents=True, exist_ok=True)
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            (root / "train" / f"{wnid}_{i}.JPEG").write_bytes(
                encode(picture(rng, _size(rng, size), colour(label)))
            )
    (root / "classes.txt").write_text("".join(f"{w}\n" for w in wnids))
    return root


COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def write_coco(
    root: Path, images: int = 8, captions: int = 3, size: tuple[int, ...] = (24, 32), seed: int = 0
) -> dict[str, dict]:
    """root/train2017/<id>.jpg with annotations/captions_train2017.json and instances_train2017.json.

    Image k is coloured by its expected label (the largest-area category, contiguous id); its captions
    are "image k caption c". The last image has no instance annotation. Returns file name ->
    {"captions", "label" (None without instances)}.
    """
    rng = np.random.default_rng(seed)
    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    infos, caps, insts, expected = [], [], [], {}
    for k in range(images):
        image_id = 1000 + 7 * k  # COCO ids are sparse
        name = f"{image_id:012d}.jpg"
        h, w = _size(rng, size)
        label = k % len(COCO_CATEGORIES) if k < images - 1 else None
        (root / "train2017" / name).write_bytes(encode(picture(rng, (h, w), colour(label or 0))))
        infos.append({"id": image_id, "file_name": name, "height": h, "width": w})
        texts = [f"image {k} caption {c}" for c in range(captions)]
        caps += [{"id": 10 * image_id + c, "image_id": image_id, "caption": t} for c, t in enumerate(texts)]
        if label is not None:  # two small instances of another category, one large of the label's
            other = COCO_CATEGORIES[(label + 1) % len(COCO_CATEGORIES)]["id"]
            parts = [(other, 30.0), (other, 40.0), (COCO_CATEGORIES[label]["id"], 100.0)]
            for j, (cat, area) in enumerate(parts):
                ann = {"id": 100 * image_id + j, "image_id": image_id, "category_id": cat, "area": area}
                insts.append({**ann, "bbox": [0, 0, 5, 5], "iscrowd": 0})
        expected[name] = {"captions": texts, "label": label}
    base = {"info": {"year": 2017}, "licenses": [], "images": infos}
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({**base, "annotations": caps}))
    instances = {**base, "annotations": insts, "categories": COCO_CATEGORIES}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(instances))
    return expected


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    root: Path,
    shards: int = 3,
    per_shard: int = 4,
    num_classes: int = 3,
    size: tuple[int, ...] = (24, 32),
    corrupt: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, dict]:
    """root/shard-000.tar, ... in the WebDataset format: <key>.jpg, <key>.txt, <key>.cls, <key>.json.

    Keys named in `corrupt` get bytes that are not an image. Returns "shard-000.tar/<key>" ->
    {"caption", "label"}.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for s in range(shards):
        name = f"shard-{s:03d}.tar"
        with tarfile.open(root / name, "w") as tar:
            for i in range(per_shard):
                key = f"{s:03d}{i:04d}"
                label = (s * per_shard + i) % num_classes
                caption = f"photo {key} of class {label}"
                jpg = (
                    b"this is not a jpeg"
                    if key in corrupt
                    else encode(picture(rng, _size(rng, size), colour(label)))
                )
                _add(tar, f"{key}.jpg", jpg)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.cls", str(label).encode())
                _add(tar, f"{key}.json", json.dumps({"caption": caption, "label": label}).encode())
                expected[f"{name}/{key}"] = {"caption": caption, "label": label}
    return expected


def _two_class_mask(size: tuple[int, int], top: int, bottom: int, border: int) -> np.ndarray:
    """Top half `top`, bottom half `bottom`, the row between them `border`."""
    h, w = size
    mask = np.full((h, w), bottom, dtype=np.uint8)
    mask[: h // 2] = top
    mask[h // 2] = border
    return mask


def _seg_picture(rng: np.random.Generator, mask: np.ndarray, ignore: int) -> np.ndarray:
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for value in np.unique(mask):
        image[mask == value] = colour(0 if value == ignore else int(value))
    noise = rng.integers(-4, 5, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_ade20k(
    root: Path, train: int = 4, val: int = 2, size: tuple[int, ...] = (24, 32), seed: int = 0
) -> Path:
    """root/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg with annotations/*/ADE_*.png:
    greyscale masks, top half class 1 + k % 149, bottom half class 150, one row of 0 ("other") between."""
    rng = np.random.default_rng(seed)
    ade = root / "ADEChallengeData2016"
    for split, prefix, count in (("training", "ADE_train", train), ("validation", "ADE_val", val)):
        (ade / "images" / split).mkdir(parents=True, exist_ok=True)
        (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            mask = _two_class_mask(_size(rng, size), 1 + k % 149, 150, 0)
            stem = f"{prefix}_{k + 1:08d}"
            Image.fromarray(mask).save(ade / "annotations" / split / f"{stem}.png")  # greyscale
            colours = np.where(mask == 0, 0, mask.astype(np.int64) - 1)  # coloured by training id
            (ade / "images" / split / f"{stem}.jpg").write_bytes(encode(_seg_picture(rng, colours, -1)))
    return ade


def write_voc(
    root: Path, train: int = 4, val: int = 2, size: tuple[int, ...] = (24, 32), seed: int = 0
) -> Path:
    """root/VOCdevkit/VOC2012 with JPEGImages/, SegmentationClass/ palette PNGs (top half background, bottom
    half class 1 + k % 20, a void row 255 between) and ImageSets/Segmentation/{train,val,trainval}.txt."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for k in range(train + val):
        split = "train" if k < train else "val"
        image_id = f"2007_{k:06d}"
        splits[split].append(image_id)
        mask = _two_class_mask(_size(rng, size), 0, 1 + k % 20, 255)
        png = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
        png.putpalette(VOC_PALETTE)
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(encode(_seg_picture(rng, mask, 255)))
    for split, ids in {**splits, "trainval": splits["train"] + splits["val"]}.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc
