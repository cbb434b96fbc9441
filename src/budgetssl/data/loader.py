"""Batches for the training loop: views made in workers, an endless reshuffled stream, seeded.

Indexed datasets are reshuffled each epoch by a seeded sampler; streaming datasets (tar shards) reshuffle
their shard order by (seed, epoch) and mix samples in a buffer, each rank and worker reading its own
shards. Samples are decoded and viewed once, in the worker; unreadable files skipped on the way are
counted in shared memory (SkipCounter), so the count made in worker processes reaches the run record.
Under `train.augment_on=device` the worker's view only decodes (methods/batched.py LoaderPart), batches
of images of several sizes are padded to the largest (`collate_images`), and the stream hands each batch
to an `after` hook that makes the views on the training device. Where that view also takes a whole batch
(BatchView) and the dataset gives one (data/base.py WholeBatches: the synthetic sets), a batch is one
fetch of the batch's indices (BatchFetch, keyed by EpochBatchSampler): the same batches, value for value,
without a dict per sample or a collation; workers, if any, prefetch whole batches. The `after` work of
the batch after the one handed out runs on a background thread while the step trains (Ahead).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from budgetssl.data.base import StreamingDataset, WholeBatches
from budgetssl.data.corrupt import SKIPPED, SkipCounter
from budgetssl.data.sampler import EpochBatchSampler, EpochSampler, Seeded
from budgetssl.errors import ConfigError, DataError

View = Callable[[dict[str, Any]], dict[str, Any]]
After = Callable[[dict[str, Any], "Position"], dict[str, Any]]

IMAGE_SIZE = "image_size"  # collate_images: each image's (height, width) within the padded batch
# Batches a CUDA loader's workers keep ready ahead of the step (DataLoader's prefetch_factor, default 2).
CUDA_PREFETCH = 4
MAX_CUDA_WORKERS = 8


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(device: torch.device) -> int:
    """`train.num_workers=auto`: data-loader worker processes for a run on `device`.

    CUDA: min(8, this process's share of the cores, less one for the main process), so data decodes
    (and, under augment_on=loader, views) while the GPU computes. CPU: 0 when torch runs one thread or
    the machine has 4 cores or fewer, else the cores torch's threads leave free (at most 4). On a small
    machine running runs side by side (`make demo`), a worker takes the core another run computes on,
    and with views on the device a batch's data work is small against a step, so no worker is faster
    (measured: benchmarks/README.md, augment_on.py).
    """
    available = cores()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # processes on this node (torchrun)
        return max(1, min(MAX_CUDA_WORKERS, available // max(1, local) - 1))
    threads = torch.get_num_threads()
    if threads == 1 or available <= 4:
        return 0
    return max(0, min(4, available - threads))


@dataclass(frozen=True)
class LoaderOptions:
    """How the DataLoader runs: worker processes, pinned host memory, batches prefetched per worker."""

    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None

    @classmethod
    def for_device(cls, num_workers: int | str, device: torch.device | str) -> LoaderOptions:
        """`num_workers` (a count or "auto") on `device`: pinned memory and deeper prefetch on CUDA."""
        device = torch.device(device)
        workers = auto_workers(device) if num_workers == "auto" else int(num_workers)
        cuda = device.type == "cuda"
        return cls(workers, pin_memory=cuda, prefetch_factor=CUDA_PREFETCH if cuda and workers else None)


def padded(
    tensors: list[torch.Tensor], sizes: list[tuple[int, int]], height: int, width: int, value: int = 0
) -> torch.Tensor:
    """`tensors` of (height, width) `sizes` stacked, each padded at the bottom and right to (height,
    width) with `value`."""
    return torch.stack(
        [
            t if size == (height, width) else F.pad(t, (0, width - size[1], 0, height - size[0]), value=value)
            for t, size in zip(tensors, sizes, strict=True)
        ]
    )


def collate_images(samples: list[dict[str, Any]], fill: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A batch of decoded images (and the samples' other fields): images of different sizes are padded
    at the bottom and right to the largest, and `image_size` (B, 2) holds each one's height and width.
    The fields `fill` names are laid out like their image (a segmentation mask, (H, W)) and padded the
    same way with their own value (a mask's ignore index, so that padding is never a class); each must
    have its image's height and width."""
    fill = fill or {}
    images = [s["image"].as_subclass(torch.Tensor) for s in samples]
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    out = {"image": padded(images, sizes, height, width)}
    for key, value in fill.items():
        fields = [s[key].as_subclass(torch.Tensor) for s in samples]
        for field, size in zip(fields, sizes, strict=True):
            if tuple(field.shape[-2:]) != size:
                raise DataError(
                    f"a sample's {key} is {tuple(field.shape[-2:])} but its image is {size} (height, "
                    f"width): they must be the same size"
                )
        out[key] = padded(fields, sizes, height, width, value)
    others = [{k: v for k, v in s.items() if k != "image" and k not in fill} for s in samples]
    rest = default_collate(others) if others[0] else {}
    return {**out, IMAGE_SIZE: torch.tensor(sizes, dtype=torch.int64), **rest}


def one_size(images: torch.Tensor) -> dict[str, Any]:
    """A batch of images (B, C, H, W) of one size as collate_images gives it, with `image_size`."""
    sizes = torch.tensor(images.shape[-2:], dtype=torch.int64).expand(images.shape[0], 2).contiguous()
    return {"image": images, IMAGE_SIZE: sizes}


class BatchView:
    """A per-sample view (`__call__`) that also makes a whole batch: `batch(samples, seeds)` of a
    WholeBatches dataset's batch and its samples' seeds (data/sampler.py: the seeds the per-sample path
    forks the RNG with) gives what `collate` of the per-sample views gives, the same values, in one go."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def batch(self, samples: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        raise NotImplementedError


def viewed(sample: dict[str, Any], view: View, counter: SkipCounter | None) -> dict[str, Any]:
    """The view of `sample`; the files skipped to reach it (if any) go to `counter`."""
    skipped = sample.pop(SKIPPED, 0)
    if counter is not None:
        counter.add(skipped)
    return view(sample)


class Viewed(Dataset):
    """`dataset` with a per-sample transform applied (in the worker, so decoding happens once)."""

    def __init__(self, dataset: Dataset, view: View, counter: SkipCounter | None = None) -> None:
        self.dataset = dataset
        self.view = view
        self.counter = counter

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return viewed(self.dataset[index], self.view, self.counter)


class BatchFetch(Dataset):
    """`dataset`'s batch through `view.batch`, keyed by the batch's (index, seed) keys (EpochBatchSampler):
    one fetch a batch, in the worker where there are workers."""

    def __init__(self, dataset: WholeBatches, view: BatchView, counter: SkipCounter | None = None) -> None:
        self.dataset = dataset
        self.view = view
        self.counter = counter

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keys: list[tuple[int, int]]) -> dict[str, Any]:
        indices = [index for index, _ in keys]
        seeds = [seed for _, seed in keys]
        return viewed(self.dataset.batch(indices), lambda batch: self.view.batch(batch, seeds), self.counter)


def as_fetched(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's collate for BatchFetch: its batch is already made (a module function: workers
    pickle it)."""
    return batch


class ViewedStream(IterableDataset):
    """A streaming dataset with a per-sample transform; each pass (each `iter`) is a new epoch.

    With persistent workers every worker keeps its copy and counts epochs in step with the others, so
    all of them agree on the epoch's shard order and read disjoint shares of it.
    """

    def __init__(self, dataset: StreamingDataset, view: View, seed: int, counter: SkipCounter) -> None:
        self.dataset = dataset
        self.view = view
        self.seed = seed
        self.counter = counter
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for sample in self.dataset.stream(self.seed, epoch, self.counter.add):
            yield viewed(sample, self.view, self.counter)


@dataclass
class Position:
    """Where a batch stream is: the epoch and the batches handed out in it."""

    epoch: int = 0
    in_epoch: int = 0


def endless(
    loader: DataLoader, position: Position, batch_size: int, counter: SkipCounter
) -> Iterator[dict[str, Any]]:
    """Full batches from `loader`, pass after pass, advancing `position`.

    A plain function, not a method: a generator that held its Batches would make a reference cycle, and
    a loader freed by the cycle collector instead of at once waits seconds for each of its workers.
    """
    while True:
        resumed = position.in_epoch > 0
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(position.epoch, position.in_epoch)
        empty = True
        for batch in loader:
            empty = False
            position.in_epoch += 1
            yield batch
        if empty and not resumed:
            raise DataError(
                f"a full pass over the data gave no full batch of {batch_size} samples "
                f"({counter.total} unreadable samples skipped so far); lower the batch size or check "
                f"the data"
            )
        position.epoch, position.in_epoch = position.epoch + 1, 0


def viewed_in(stream: Any, after: After, batch: dict[str, Any], position: Position) -> dict[str, Any]:
    """`after(batch, position)` on the CUDA `stream` (made current here, with its device), or as it is
    where there is none."""
    if stream is None:
        return after(batch, position)
    with torch.cuda.stream(stream):
        return after(batch, position)


class Ahead:
    """One background thread that runs a stream's `after` work (the batch to the device and viewed there)
    on the batch after the one handed out, while the main thread trains on that one: the standard
    prefetch to the device (timm's PrefetchLoader), here a thread, since torch's ops release the GIL.

    A single worker runs the jobs in the order given, one at a time, so the views' own generator
    (methods/batched.py OnDevice) is never drawn from by two batches at once, even when a job dropped by
    `Batches.restore` is still running. What the thread inherits and what not (thread-local state): it
    runs outside autocast and with grad enabled (OnDevice enters no_grad itself), as the views ran in
    the loop's `next` before, outside the step's autocast; torch's dispatch modes (the meter's FLOP
    counter) are the main thread's and do not see it; its torch thread count is the process's. On a GPU
    each job runs on the CUDA stream that was current in the calling thread when it was given (and on
    that stream's device), the stream the views used when they ran in the main thread: its kernels queue
    behind the step's on that one stream, and the thread saves the main thread the host's time of
    launching them. `close` ends the thread; a later job starts another."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, after: After, batch: dict[str, Any], position: Position) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="budgetssl-views")
        stream = torch.cuda.current_stream() if torch.cuda.is_initialized() else None
        return self._pool.submit(viewed_in, stream, after, batch, position)

    def close(self) -> None:
        """Wait for the job running (if any) and end the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@dataclass
class Pending:
    """A batch fetched ahead: its views being made (or the loader's error fetching it) and the position
    after it."""

    views: Future
    position: Position | None


def failed(error: BaseException) -> Future:
    """A future that raises `error` (its traceback kept) when read."""
    future: Future = Future()
    future.set_exception(error)
    return future


class Batches(Iterator[dict[str, Any]]):
    """Full batches forever from `loader`; `skipped` is the number of unreadable samples skipped so far.

    The position (epoch, batches handed out in it) is what a checkpoint stores; `restore` puts a fresh
    stream there before its first batch. An indexed dataset's sampler seeks to it without loading a
    sample; a stream cannot seek, so a partly read pass resumes as the next pass (a new shard order).

    With an `after` hook (the views on the device) and `ahead` (the default), `next` hands out batch k,
    whose views a background thread (Ahead) made while the step of batch k - 1 ran, after fetching batch
    k + 1 from the loader here, in the calling thread (with no workers the loader may reseed torch's
    global generator per sample, data/sampler.py Seeded, which the step draws from: it stays out of the
    thread), and giving the thread its views, with its position as it was when fetched. The batches are
    the same, value for value, as without the thread (`ahead=False`: each batch viewed in `next`).
    `position` and `state()` stay the position after the last batch handed out, not after the one
    fetched ahead; `restore` drops that one. An error fetching or viewing a batch is raised, with its
    traceback, by the `next` that would have handed that batch out. The loader's skip count
    (`skipped`) includes the batch fetched ahead, as it includes what its workers prefetch. `close`
    ends the thread (the loop does, as it ends); the stream stays usable, and its next `next` starts
    another thread.
    """

    def __init__(
        self,
        loader: DataLoader,
        batch_size: int,
        counter: SkipCounter,
        after: After | None = None,
        ahead: bool = True,
    ) -> None:
        self.loader = loader
        self.batch_size = batch_size
        self.counter = counter
        self.after = after  # what each batch goes through once collated (the views on the device)
        self.position = Position()  # after the last batch handed out
        self._fetched = Position()  # after the last batch the loader gave (one ahead while one is pending)
        self._ahead = Ahead() if after is not None and ahead else None
        self._pending: Pending | None = None
        self._batches = self._forever()

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def in_epoch(self) -> int:
        return self.position.in_epoch

    @property
    def skipped(self) -> int:
        return self.counter.total

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.in_epoch}

    def restore(self, state: dict[str, int]) -> None:
        epoch, in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        stream = self.loader.dataset
        if isinstance(stream, ViewedStream):
            if in_epoch:
                epoch, in_epoch = epoch + 1, 0
            stream.epoch = epoch
        self.position, self._fetched = Position(epoch, in_epoch), Position(epoch, in_epoch)
        self._pending = None  # views still being made run to their end on the thread, unread
        self._batches = self._forever()

    def close(self) -> None:
        """End the background thread, if any, once the batch it is viewing is made (kept: the next
        `next` hands it out as usual). Call it when the stream will not be read for a while."""
        if self._ahead is not None:
            self._ahead.close()

    def _forever(self) -> Iterator[dict[str, Any]]:
        return endless(self.loader, self._fetched, self.batch_size, self.counter)

    def _fetch(self) -> tuple[dict[str, Any], Position]:
        """The loader's next batch and the position after it (a copy: the loader moves on)."""
        batch = next(self._batches)
        return batch, replace(self._fetched)

    def _fetch_ahead(self, ahead: Ahead, after: After) -> Pending:
        try:
            batch, position = self._fetch()
        except Exception as e:  # raised by the next that hands this batch out (StopIteration too)
            return Pending(failed(e), None)
        return Pending(ahead.submit(after, batch, position), position)

    def __next__(self) -> dict[str, Any]:
        ahead, after = self._ahead, self.after
        if ahead is None or after is None:  # no thread (it exists only with an `after`)
            batch, position = self._fetch()
            self.position = position
            return batch if after is None else after(batch, position)
        this = self._pending if self._pending is not None else self._fetch_ahead(ahead, after)
        # The next batch from the loader while this one's views finish on the thread.
        self._pending = self._fetch_ahead(ahead, after)
        batch = this.views.result()  # the views' error, if any, raised here with its traceback
        assert this.position is not None  # a batch that failed to load raised above
        self.position = this.position
        return batch


def endless_batches(
    dataset: Dataset,
    view: View,
    batch_size: int,
    seed: int,
    num_workers: int | str = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    options: LoaderOptions | None = None,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    after: After | None = None,
    view_draws: bool = True,
    ahead: bool = True,
) -> Batches:
    """Full batches forever, a fresh shuffle each epoch, all determined by `seed`.

    `batch_size` is this process's share; under data parallelism (`world` ranks) an indexed dataset is
    split by EpochSampler, and a stream splits its shards by rank itself. `options` (else `num_workers`,
    "auto" for the device torch sees, and `pin_memory`) say how the DataLoader runs; `collate` makes a
    batch of samples, `after` runs on each collated batch (augment_on=device). A BatchView on a
    WholeBatches dataset makes each batch in one fetch instead (`collate` unused): the same batches.
    `view_draws=False` says that `view` draws no random number (it only decodes): an indexed dataset's
    samples are then not reseeded one by one (sampler.Seeded). `ahead`: `after` runs on the next batch
    on a background thread while this one trains (Batches); False runs it in `next` (the same batches).
    """
    if options is None:
        if num_workers == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            options = LoaderOptions.for_device(num_workers, device)
        else:
            options = LoaderOptions(int(num_workers), pin_memory)
    workers = options.num_workers
    generator = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=workers,
        drop_last=True,
        pin_memory=options.pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=options.prefetch_factor if workers > 0 else None,
        generator=generator,
        collate_fn=collate,
    )
    counter = SkipCounter(workers)
    if isinstance(dataset, StreamingDataset):
        stream = ViewedStream(dataset, view, seed, counter)
        return Batches(DataLoader(stream, **common), batch_size, counter, after, ahead)
    size = len(dataset)  # type: ignore[arg-type]
    if size < batch_size * world:
        raise ConfigError(
            f"the dataset has {size} samples, fewer than one batch of {batch_size * world}; "
            f"lower the batch size or use more data"
        )
    if isinstance(dataset, WholeBatches) and isinstance(view, BatchView):
        fetch = BatchFetch(dataset, view, counter)
        sampler = EpochBatchSampler(size, batch_size, seed, rank, world)
        whole = common | dict(batch_size=None, drop_last=False, collate_fn=as_fetched)  # full by the sampler
        return Batches(DataLoader(fetch, sampler=sampler, **whole), batch_size, counter, after, ahead)
    sampler = EpochSampler(size, batch_size, seed, rank, world)
    viewed_set = Seeded(Viewed(dataset, view, counter), reseed=view_draws)
    return Batches(DataLoader(viewed_set, sampler=sampler, **common), batch_size, counter, after, ahead)
