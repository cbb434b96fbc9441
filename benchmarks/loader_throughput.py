"""Measure how many images per second each dataset loader delivers, and print a table.

Writes a small copy of every supported layout (ImageNet-1K class folders, ImageNet-21K flat, COCO, WebDataset
shards, ADE20K, VOC; a few hundred JPEGs of 64-128 px) into a temporary folder, then pulls batches through
the real loader (`endless_batches`: decode once per sample in the worker, the method's view, collate) with
the view a method would use: supervised's crop-and-flip for labelled sets, CLIP's crop plus tokenised
caption for captioned ones, the transfer stage's joint image-and-mask crop for segmentation. `start s` is
the time to open the dataset (listing or parsing annotations; `cached` = from the file index cache).
torch runs one intra-op thread in the main process (as it does in every data-loader worker), so `w=0` is
the rate of one core and `w=1` adds a worker process's hand-off; `--threads` changes it. With
`--augment-on device` the pretraining layouts' workers only decode, and the views run on each padded batch
of images of mixed sizes in the main process (train.augment_on=device on a CPU); the segmentation
layouts keep their joint image-and-mask views in the loader.

usage: python benchmarks/loader_throughput.py [--images 320] [--workers 0,1] [--batch-size 32]
    [--augment-on loader|device]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from budgetssl.config.compose import compose_config
from budgetssl.data.base import build_dataset
from budgetssl.data.decode import EXTENSIONS
from budgetssl.data.index_cache import list_files
from budgetssl.data.loader import collate_images, endless_batches
from budgetssl.methods.augment import random_crop_flip
from budgetssl.methods.batched import OnDevice, device_views
from budgetssl.methods.captions import CaptionView
from budgetssl.methods.zoo.supervised import LabelledView
from budgetssl.plugins import check_config
from budgetssl.transfer.base import build_segmentation
from budgetssl.transfer.views import train_view

# The tiny dataset layouts are test fixtures (tests/layouts.py), not part of the package: a clone has them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from layouts import write_ade20k, write_coco, write_imagenet, write_imagenet_flat, write_shards, write_voc  # noqa: E402

SIZES = (64, 128, 64, 128)  # random heights and widths in [64, 128]


def write_all(root: Path, images: int) -> dict[str, list[str]]:
    """Every layout with about `images` images; returns the config overrides that open each."""
    classes = 10
    write_imagenet(root / "in1k", classes=classes, per_class=images // classes, val_per_class=0, size=SIZES)
    write_imagenet_flat(root / "in21k", classes=6, per_class=images // 6, size=SIZES)
    write_coco(root / "coco", images=images, captions=5, size=SIZES)
    shards = 8
    write_shards(root / "wds", shards=shards, per_shard=images // shards, num_classes=classes, size=SIZES)
    write_ade20k(root / "ade", train=images, val=1, size=SIZES)
    write_voc(root / "voc", train=images, val=1, size=SIZES)
    cache = f"dataset.cache_dir={root / 'cache'}"
    return {
        "imagenet1k": ["dataset=imagenet1k", f"dataset.root={root / 'in1k'}", cache],
        "imagenet21k (flat)": [
            "dataset=imagenet21k",
            f"dataset.root={root / 'in21k'}",
            "dataset.class_list=classes.txt",
            cache,
        ],
        "coco (captions)": ["dataset=coco", f"dataset.root={root / 'coco'}", cache, "method=clip"],
        "webdataset (captions)": [
            "dataset=webdataset",
            f"dataset.root={root / 'wds'}",
            f"dataset.shards='shard-{{000..{shards - 1:03d}}}.tar'",
            "method=clip",
        ],
        "ade20k": ["transfer=ade20k", f"transfer.root={root / 'ade'}"],
        "voc": ["transfer=voc", f"transfer.root={root / 'voc'}"],
    }


def opened(overrides: list[str], size: int) -> tuple[object, Callable, float]:
    """The dataset, the view a method would use on it, and the seconds it took to open."""
    run = check_config(compose_config([*overrides, f"dataset.image_size={size}"]))
    start = time.perf_counter()
    if any(o.startswith("transfer=") for o in overrides):
        ds = build_segmentation(run.transfer, "train")
        return ds, train_view(ds.info, size), time.perf_counter() - start
    ds = build_dataset(run.dataset, "train")
    seconds = time.perf_counter() - start
    crop = random_crop_flip(ds.info, size, (0.35, 1.0))
    if "method=clip" in overrides:
        return ds, CaptionView(crop, ds.info.class_names, "auto", context_length=77), seconds
    return ds, LabelledView(crop), seconds


def images_per_second(ds, view, batch_size: int, workers: int, images: int, augment_on: str) -> float:
    split = device_views(view, "auto", torch.device("cpu"), 0) if augment_on == "device" else None
    if split is None:
        batches = endless_batches(ds, view, batch_size, seed=0, num_workers=workers)
    else:
        after = OnDevice(split, torch.device("cpu"), seed=0)
        batches = endless_batches(
            ds, split.loader, batch_size, seed=0, num_workers=workers, collate=collate_images, after=after
        )
    next(batches)  # workers started, first batch made
    steps = max(1, images // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    rate = steps * batch_size / (time.perf_counter() - start)
    del batches
    gc.collect()  # the batch generator refers to its Batches: collect it so its workers stop here
    return rate


def index_seconds(root: Path, files: int, folders: int = 100) -> tuple[float, float]:
    """Seconds to list `files` (empty) images in class folders: walked, then from the index cache."""
    for i in range(files):
        folder = root / "train" / f"n{i % folders:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.JPEG").touch()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        listing = list_files(root / "train", EXTENSIONS, root / "cache")
        times.append(time.perf_counter() - start)
        assert len(listing.files) == files
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=320, help="images per layout")
    parser.add_argument("--workers", default="0,1", help="comma-separated data-loader worker counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="the view's output size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    parser.add_argument("--index-files", type=int, default=50000, help="files for the index-cache timing")
    parser.add_argument("--augment-on", default="loader", choices=("loader", "device"), help="views run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        layouts = write_all(root, args.images)
        print(f"wrote {len(layouts)} layouts of ~{args.images} images in {time.perf_counter() - start:.1f} s")
        header = f"{'loader':<24}{'start s':>9}{'cached':>8}" + "".join(
            f"{f'img/s w={w}':>13}" for w in workers
        )
        print(header)
        print("-" * len(header))
        for name, overrides in layouts.items():
            ds, view, first = opened(overrides, args.image_size)
            _, _, again = opened(overrides, args.image_size)  # the second start: from the index cache
            rates = [
                images_per_second(ds, view, args.batch_size, w, args.images, args.augment_on) for w in workers
            ]
            cells = "".join(f"{r:>13.0f}" for r in rates)
            print(f"{name:<24}{first:>9.3f}{again:>8.3f}{cells}")
        walk, cached = index_seconds(root / "index", args.index_files)
        n = args.index_files
        print(f"file index of {n} files in 100 class folders: walk {walk:.3f} s, cached {cached:.3f} s")


if __name__ == "__main__":
    main()
