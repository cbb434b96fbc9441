"""The built-in dataset: shapes on textures, generated on the fly, deterministic by `data_seed`.

Every sample has a class label (the main object's shape), a caption naming what is drawn and a
segmentation mask, so every method and the transfer stage can run on it with no files at all.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING
from torchvision import tv_tensors

from budgetssl.config.schema import DatasetConfig
from budgetssl.data import shapes
from budgetssl.data.base import BatchDataset, Sample
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS
from budgetssl.data.shapes import SHAPES, Scene, render
from budgetssl.errors import BudgetSSLError, ConfigError
from budgetssl.files import atomic_write

# Distinct streams so that no split shares a scene with another.
SPLITS = {"train": 0, "val": 1, "transfer_train": 2, "transfer_val": 3}
CHUNK = 128  # scenes rendered, kept and stored together (SceneCache): 128 kB at 16 px


@dataclass
class SyntheticConfig(DatasetConfig):
    """configs/dataset/synthetic.yaml holds the values."""

    data_seed: int = MISSING
    num_train: int = MISSING
    num_val: int = MISSING
    max_objects: int = MISSING


def scene(data_seed: int, split: str, index: int, image_size: int, max_objects: int) -> Scene:
    """The scene at `index` of `split`: a pure function of its arguments."""
    rng = np.random.default_rng([data_seed, SPLITS[split], index])
    return render(rng, image_size, max_objects)


@dataclass(frozen=True)
class Rendered:
    """What a sample holds of a scene: its pixels, mask, label and caption."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8
    label: int
    caption: str


def renderer_version() -> str:
    """A hash of what makes a scene: the renderer's source (data/shapes.py), `scene` and the streams
    (SPLITS) here, and numpy's version, so a scene stored by another renderer is another scene and a change
    to any of them opens another store; the rest of this file (the store, the batches) may change without
    rendering every scene again."""
    digest = hashlib.sha256(np.__version__.encode())
    digest.update(Path(shapes.__file__).read_bytes())  # type: ignore[arg-type]
    digest.update(inspect.getsource(scene).encode())
    digest.update(repr(sorted(SPLITS.items())).encode())
    return digest.hexdigest()[:12]


def store_folder() -> Path:
    """Where rendered scenes are stored: $XDG_CACHE_HOME/budgetssl/synthetic (else ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "budgetssl" / "synthetic"


class Chunk:
    """Scenes of one stream as arrays: CHUNK consecutive ones (one file of the store), or any rows of
    them (SceneCache.rows)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, captions: np.ndarray):
        self.images, self.masks, self.labels, self.captions = images, masks, labels, captions

    @classmethod
    def render(cls, data_seed: int, split: str, first: int, image_size: int, max_objects: int) -> Chunk:
        made = [scene(data_seed, split, i, image_size, max_objects) for i in range(first, first + CHUNK)]
        return cls(
            np.stack([s.image for s in made]),
            np.stack([s.mask for s in made]),
            np.array([s.label for s in made], dtype=np.int64),
            np.array([s.caption for s in made]),
        )

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes + self.captions.nbytes

    def __getitem__(self, row: int) -> Rendered:
        return Rendered(self.images[row], self.masks[row], int(self.labels[row]), str(self.captions[row]))

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, images=self.images, masks=self.masks, labels=self.labels, captions=self.captions)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, image_size: int) -> Chunk | None:
        """The chunk stored at `path`, or None where it is missing or not whole."""
        try:
            with np.load(path, allow_pickle=False) as f:
                chunk = cls(f["images"], f["masks"], f["labels"], f["captions"])
        except (OSError, ValueError, KeyError, EOFError):
            return None
        if chunk.images.shape != (CHUNK, image_size, image_size, 3) or len(chunk.captions) != CHUNK:
            return None
        return chunk


class SceneCache:
    """Rendered scenes, by their arguments: a scene is a pure function of (data_seed, split, index, size,
    max_objects), so a stored one is the scene itself. Rendering is most of a small sample's cost, reading
    a stored scene back a small part of it (benchmarks/README.md, augment_on.py), and every run of a
    sweep, every epoch of the endless stream, the probe and the transfer's repeats draw the same scenes
    again.

    Scenes are rendered CHUNK consecutive indices at a time and kept twice: in this process, up to
    `max_bytes` (the least recently used chunk dropped first; the default holds every scene of the demo's
    16-px stream, 20k scenes, about 20 MB, and of a 224-px one up to about 1,300 scenes), and on disk
    under `folder` (default `store_folder()`, read when first needed), one file per chunk, named by the
    renderer's version and the stream's settings, so a change of either is another file: the demo's runs
    render its 20k training scenes once between them, not once each. Files are written atomically; an
    unwritable folder costs only the rendering. `store=False` keeps memory only. One memory cache per
    process (each data-loader worker fills its own); the disk is shared.

    A batch (`rows`) of a stream whose every scene fits in `max_bytes` beside what is kept is gathered
    from one set of arrays that holds the whole stream (`Whole`, filled a chunk at a time as batches first
    reach it), one fancy index for the batch; otherwise from each chunk it falls in, a gather per chunk,
    whose per-chunk cost was most of a training batch's loading at the demo's sizes.
    """

    def __init__(self, max_bytes: int = 256 * 2**20, folder: Path | None = None, store: bool = True) -> None:
        self.max_bytes = max_bytes
        self.folder = folder
        self.store = store
        self.used = 0
        self.chunks: OrderedDict[tuple, Chunk] = OrderedDict()
        self.wholes: dict[tuple, Whole | None] = {}  # by stream and length; None: it does not fit
        self.version = renderer_version()

    def path(self, key: tuple) -> Path | None:
        if not self.store:
            return None
        data_seed, split, first, size, max_objects = key
        stream = f"seed{data_seed}_{split}_{size}px_{max_objects}objects"
        return (self.folder or store_folder()) / self.version / stream / f"{first:09d}.npz"

    def chunk(self, key: tuple) -> Chunk:
        found = self.chunks.get(key)
        if found is not None:
            self.chunks.move_to_end(key)
            return found
        made = self.read(key)
        self.chunks[key] = made
        self.used += made.nbytes
        while self.used > self.max_bytes and len(self.chunks) > 1:
            _, old = self.chunks.popitem(last=False)
            self.used -= old.nbytes
        return made

    def read(self, key: tuple) -> Chunk:
        """The chunk `key` from the store, else rendered (and stored)."""
        path = self.path(key)
        made = Chunk.load(path, key[3]) if path is not None and path.exists() else None
        if made is None:
            made = Chunk.render(*key)
            if path is not None:
                try:
                    made.save(path)
                except (OSError, BudgetSSLError) as e:
                    warnings.warn(f"cannot store rendered scenes in {path.parent} ({e})", stacklevel=2)
                    self.store = False
        return made

    def __call__(self, data_seed: int, split: str, index: int, image_size: int, max_objects: int) -> Rendered:
        first = index - index % CHUNK
        return self.chunk((data_seed, split, first, image_size, max_objects))[index - first]

    def rows(
        self,
        data_seed: int,
        split: str,
        indices: np.ndarray,
        image_size: int,
        max_objects: int,
        length: int | None = None,
    ) -> Chunk:
        """The scenes at `indices` (any order, repeats allowed), in that order: from the whole stream's
        arrays where the stream of `length` scenes fits (see the class), else one gather from each chunk
        they fall in."""
        if length is not None:
            whole = self.whole(data_seed, split, image_size, max_objects, length)
            if whole is not None:
                for first in whole.missing(indices):  # a chunk kept already is copied, else read
                    key = (data_seed, split, first, image_size, max_objects)
                    whole.fill(first, self.chunks.get(key) or self.read(key))
                return whole.rows(indices)
        count = len(indices)
        images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        masks = np.empty((count, image_size, image_size), dtype=np.uint8)
        labels = np.empty(count, dtype=np.int64)
        captions: list[str] = [""] * count
        firsts, which = np.unique(indices - indices % CHUNK, return_inverse=True)
        for k, first in enumerate(firsts.tolist()):
            chunk = self.chunk((data_seed, split, first, image_size, max_objects))
            at = np.flatnonzero(which == k)
            rows = indices[at] - first
            images[at], masks[at], labels[at] = chunk.images[rows], chunk.masks[rows], chunk.labels[rows]
            for place, caption in zip(at.tolist(), chunk.captions[rows].tolist(), strict=True):
                captions[place] = caption
        return Chunk(images, masks, labels, np.array(captions))

    def whole(
        self, data_seed: int, split: str, image_size: int, max_objects: int, length: int
    ) -> Whole | None:
        """The arrays of the stream's first `length` scenes, made the first time it fits in what is left
        of `max_bytes`; None where it does not."""
        key = (data_seed, split, image_size, max_objects, length)
        if key not in self.wholes:
            size = Whole.size(length, image_size)
            fits = self.used + size <= self.max_bytes
            self.wholes[key] = Whole(length, image_size) if fits else None
            self.used += size if fits else 0
        return self.wholes[key]


class Whole:
    """A stream's scenes 0..length (rounded up to whole chunks) in one set of arrays, each chunk copied
    in the first time a batch reaches it (`fill`): a batch is then one gather."""

    def __init__(self, length: int, image_size: int) -> None:
        n = self.scenes(length)
        self.images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
        self.masks = np.empty((n, image_size, image_size), dtype=np.uint8)
        self.labels = np.empty(n, dtype=np.int64)
        self.captions = np.empty(n, dtype=object)
        self.filled = np.zeros(n // CHUNK, dtype=bool)

    @staticmethod
    def scenes(length: int) -> int:
        """The scenes it holds: `length` rounded up to whole chunks."""
        return -(-length // CHUNK) * CHUNK

    @classmethod
    def size(cls, length: int, image_size: int) -> int:
        """Its bytes: pixels, mask, label and a caption's reference a scene."""
        return cls.scenes(length) * (4 * image_size * image_size + 16)

    def missing(self, indices: np.ndarray) -> list[int]:
        """The first index of each chunk that `indices` fall in and that is not filled yet."""
        chunks = np.unique(indices // CHUNK)
        return (chunks[~self.filled[chunks]] * CHUNK).tolist()

    def fill(self, first: int, chunk: Chunk) -> None:
        at = slice(first, first + CHUNK)
        self.images[at], self.masks[at], self.labels[at] = chunk.images, chunk.masks, chunk.labels
        self.captions[at] = chunk.captions.tolist()
        self.filled[first // CHUNK] = True

    def rows(self, indices: np.ndarray) -> Chunk:
        return Chunk(self.images[indices], self.masks[indices], self.labels[indices], self.captions[indices])


cached_scene = SceneCache()


def to_sample(s: Scene | Rendered) -> Sample:
    return {
        "image": tv_tensors.Image(torch.from_numpy(s.image).permute(2, 0, 1).contiguous()),
        "label": s.label,
        "caption": s.caption,
        "mask": tv_tensors.Mask(torch.from_numpy(s.mask.astype(np.int64))),
    }


def batch_indices(indices: Sequence[int], length: int, what: str) -> np.ndarray:
    """A batch's indices as an array, each checked to lie in [0, length): a ValueError for an empty or
    nested list, an IndexError naming the first outside index and `what` holds `length` of them."""
    at = np.asarray(indices, dtype=np.int64)
    if at.ndim != 1 or len(at) == 0:
        raise ValueError(f"a batch takes a non-empty list of indices, got shape {at.shape}")
    outside = at[(at < 0) | (at >= length)]
    if len(outside):
        raise IndexError(f"index {int(outside[0])} outside the {length} {what}")
    return at


def to_batch(c: Chunk) -> Sample:
    """The scenes of `c` as to_sample makes each, stacked (BatchDataset.batch)."""
    return {
        "image": torch.from_numpy(c.images).permute(0, 3, 1, 2).contiguous(),
        "label": torch.from_numpy(c.labels),
        "caption": c.captions.tolist(),
        "mask": torch.from_numpy(c.masks.astype(np.int64)),
    }


@DATASETS.register("synthetic")
class SyntheticShapes(BatchDataset):
    config_class = SyntheticConfig
    provides = frozenset({"image", "label", "caption", "mask"})

    @classmethod
    def classes_from_config(cls, cfg: SyntheticConfig) -> tuple[int, str]:  # type: ignore[override]
        return len(SHAPES), "the synthetic shapes"

    def __init__(self, cfg: SyntheticConfig, split: str = "train") -> None:
        if cfg.root is not None:
            raise ConfigError("dataset 'synthetic' is generated in memory: remove dataset.root")
        if cfg.max_objects < 1:
            raise ConfigError(f"dataset.max_objects must be >= 1, got {cfg.max_objects}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.cfg = cfg
        self.split = split
        self.length = cfg.num_train if split == "train" else cfg.num_val
        if self.length < 1:
            raise ConfigError(f"dataset 'synthetic' split '{split}' is empty: set dataset.num_{split} >= 1")
        self.info = DataInfo(image_size=cfg.image_size, class_names=SHAPES)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return to_sample(
            cached_scene(self.cfg.data_seed, self.split, index, self.cfg.image_size, self.cfg.max_objects)
        )

    def batch(self, indices: Sequence[int]) -> Sample:
        """A gather from the chunks' arrays, no sample made alone (BatchDataset)."""
        at = batch_indices(indices, self.length, f"samples of '{self.split}'")
        cfg = self.cfg
        return to_batch(
            cached_scene.rows(cfg.data_seed, self.split, at, cfg.image_size, cfg.max_objects, self.length)
        )
