"""The batch stream's views made a batch ahead on a background thread (data/loader.py Batches, Ahead):
the same batches, bit for bit, as the views made in `next`, for methods and the transfer's view, over
epochs, after a restore mid-epoch with a batch fetched ahead, and through the training loop (its losses
and torch's global RNG); an error fetching or viewing batch k is raised by the k-th `next`, with its
traceback; no thread is left once the stream is closed or the loop has ended."""

from __future__ import annotations

import threading
import traceback
from typing import Any

import numpy as np
import pytest
import torch

from budgetssl.data.info import DataInfo
from budgetssl.data.loader import Batches, Position, collate_images, endless_batches
from budgetssl.data.sets.synthetic import SyntheticShapes
from budgetssl.data.shapes import SHAPES
from budgetssl.engine.distributed import World
from budgetssl.engine.loop import train
from budgetssl.errors import DataError
from budgetssl.meter.budget import StepBudget
from budgetssl.methods import batched
from budgetssl.methods.augment import MultiView, ssl_crop
from budgetssl.methods.batched import OnDevice
from budgetssl.stages.pretrain import build, loop_settings
from budgetssl.transfer.base import build_segmentation
from budgetssl.transfer.finetune import training_batches
from conftest import TINY, run_config, small

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = DataInfo(image_size=16, class_names=SHAPES)
THREAD = "budgetssl-views"  # Ahead's thread name prefix
EPOCH = ["dataset.num_train=48", "train.num_workers=0"]  # 3 batches of 16 an epoch


def views_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD)]


def without_thread(stream: Batches) -> Batches:
    """A fresh stream over `stream`'s loader and views, each batch viewed in `next` (nothing read yet)."""
    return Batches(stream.loader, stream.batch_size, stream.counter, stream.after, ahead=False)


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The same keys in the same order, tensors of the same dtype, shape and bits, other values equal."""
    assert list(a) == list(b)
    for key in a:
        if torch.is_tensor(a[key]):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def method_streams(method: str, *extra: str) -> tuple[Batches, Batches]:
    run = run_config(*TINY, *small(method), *EPOCH, *extra)
    _, ahead = build(run)
    _, plain = build(run)
    assert ahead.after is not None  # augment_on=auto on a CPU without workers: views on the device
    return ahead, without_thread(plain)


def transfer_streams() -> tuple[Batches, Batches]:
    run = run_config(*TINY, "transfer.num_train=48", "train.num_workers=0")
    train_set = build_segmentation(run.transfer, "train")
    ahead, plain = (training_batches(run.transfer, train_set, run.train, run.seed, World()) for _ in "ab")
    assert isinstance(ahead.after, OnDevice)
    return ahead, without_thread(plain)


STREAMS = {
    "dino (multi-crop)": lambda: method_streams("dino"),
    "supervised (labels)": lambda: method_streams("supervised", "train.augment_on=device"),
    "ibot (masks drawn in the loader)": lambda: method_streams("ibot"),
    "clip (caption tokens)": lambda: method_streams("clip"),
    "mae": lambda: method_streams("mae"),
    "the transfer's view": transfer_streams,
}


@pytest.mark.parametrize("name", STREAMS)
def test_the_batches_are_those_viewed_in_next_over_epochs_and_after_a_restore_with_one_ahead(name):
    ahead, plain = STREAMS[name]()
    expected = [next(plain) for _ in range(8)]  # into a third epoch
    got = [next(ahead) for _ in range(4)]
    assert len(views_threads()) == 1  # batch 5 is being viewed
    saved = ahead.state()
    assert saved == {"epoch": 1, "batches_in_epoch": 1}  # after the 4th handed out, not the 5th
    got += [next(ahead) for _ in range(4)]
    assert ahead.state() == plain.state() == {"epoch": 2, "batches_in_epoch": 2}
    for want, have in zip(expected, got, strict=True):
        assert_same(want, have)
    # Back to the 4th batch, on this stream (its batch fetched ahead is dropped) and on a fresh one.
    ahead.restore(saved)
    assert ahead.state() == saved
    for want in expected[4:]:
        assert_same(want, next(ahead))
    fresh, _ = STREAMS[name]()
    fresh.restore(saved)
    for want in expected[4:]:
        assert_same(want, next(fresh))
    for stream in (ahead, fresh):
        stream.close()
    assert not views_threads()


def test_the_loop_trains_the_same_steps_and_leaves_torchs_generator_as_without_the_thread():
    """The loader's part stays in the loop's thread: the steps draw from torch's generator (DINO's heads,
    MAE's masks) exactly what they drew, and the loop ends its stream's thread."""
    for method in ("dino", "mae"):
        run = run_config(*TINY, *small(method), *EPOCH)
        ends = []
        for ahead in (True, False):
            task, batches = build(run)
            if not ahead:
                batches = without_thread(batches)
            result = train(task, batches, loop_settings(run), StepBudget(5))
            assert not views_threads()
            weights = {k: v.clone() for k, v in task.state_dict().items() if torch.is_tensor(v)}
            ends.append((result.final_loss, weights, torch.get_rng_state(), np.random.get_state()[1].copy()))
        (loss_a, weights_a, rng_a, np_a), (loss_b, weights_b, rng_b, np_b) = ends
        assert loss_a == loss_b, method
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), method
        assert torch.equal(rng_a, rng_b) and np.array_equal(np_a, np_b), method


class Fragile:
    """Views that fail on the batch handed out `at`-th (its position in the epoch), raising `error`."""

    def __init__(self, views: OnDevice, at: int, error: BaseException) -> None:
        self.views, self.at, self.error, self.calls = views, at, error, 0

    def __call__(self, batch: dict[str, Any], position: Position) -> dict[str, Any]:
        self.calls += 1
        if position.in_epoch == self.at:
            self.fail()
        return self.views(batch, position)

    def fail(self) -> None:
        raise self.error


class FailingCollate:
    """collate_images, failing on its `at`-th call (a corrupt sample found by the loader)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.at:
            raise DataError(f"batch {self.at} is corrupt")
        return collate_images(samples)


def device_stream(fail: tuple[int, BaseException] | None = None, collate=collate_images) -> Batches:  # noqa: ANN001
    """A multi-crop stream of the synthetic set, its views (failing on batch `fail[0]` with `fail[1]`)
    made on the device; fetched per sample and collated by `collate`."""
    ds = SyntheticShapes(run_config(*TINY).dataset)  # type: ignore[arg-type]
    multi = MultiView(
        {"global": [ssl_crop(DATA, 16, (0.25, 1.0))] * 2, "local": [ssl_crop(DATA, 8, (0.05, 0.25))]}
    )
    split = batched.on_device(multi)
    assert split is not None
    views = OnDevice(split, torch.device("cpu"), seed=3)
    after = views if fail is None else Fragile(views, *fail)
    return endless_batches(ds, batched.LoaderPart(multi), 8, seed=3, collate=collate, after=after)


@pytest.mark.parametrize("error", [DataError("a view failed"), KeyboardInterrupt(), StopIteration()])
def test_an_error_viewing_batch_k_is_raised_by_the_kth_next_with_its_traceback(error):
    stream = device_stream(fail=(3, error))
    fragile = stream.after
    assert isinstance(fragile, Fragile)
    next(stream), next(stream)  # not raised earlier
    stream.close()  # waits for the thread's job
    assert fragile.calls == 3  # the 3rd batch's views ran (and failed) ahead; the error waits (kept)
    with pytest.raises(type(error)) as raised:
        next(stream)
    assert raised.value is error
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert "fail" in frames and "__call__" in frames  # raised where it was, on the thread
    stream.close()
    assert not views_threads()


def test_an_error_loading_batch_k_is_raised_by_the_kth_next():
    collate = FailingCollate(at=3)
    stream = device_stream(collate=collate)
    next(stream)
    next(stream)  # fetched the 3rd batch ahead, which failed
    assert collate.calls == 3
    with pytest.raises(DataError, match="batch 3 is corrupt") as raised:
        next(stream)
    assert "__call__" in [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    stream.close()
    assert not views_threads()


def test_closing_ends_the_thread_and_the_stream_goes_on_where_it_was():
    before = threading.active_count()
    ahead, plain = method_streams("dino")
    expected = [next(plain) for _ in range(5)]
    got = [next(ahead), next(ahead)]
    ahead.close()
    assert threading.active_count() == before and not views_threads()
    assert ahead.state() == {"epoch": 0, "batches_in_epoch": 2}
    got += [next(ahead) for _ in range(3)]  # the batch viewed before the close, then a new thread
    for want, have in zip(expected, got, strict=True):
        assert_same(want, have)
    ahead.close()
    ahead.close()  # twice: nothing to end
    assert threading.active_count() == before
