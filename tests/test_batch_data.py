"""The batched data path (augment_on=device on the synthetic set): one gather of the stored scenes and
the fields made per batch give the per-sample path's batches, value for value, on every rank, every
epoch and after a restore mid-epoch."""

from __future__ import annotations

import functools

import pytest
import torch

from budgetssl.data.sampler import EpochBatchSampler, EpochSampler
from budgetssl.data.sets.synthetic import CHUNK, SyntheticShapes
from conftest import TINY, run_config

BATCH, WORLD = 4, 2  # per rank; 24 samples -> 3 global batches an epoch


@functools.cache
def dataset(num_train: int = 24) -> SyntheticShapes:
    return SyntheticShapes(run_config(*TINY, f"dataset.num_train={num_train}").dataset)  # type: ignore[arg-type]


def test_the_batch_sampler_groups_the_per_sample_order():
    sampler, grouped = EpochSampler(24, BATCH, 5, 1, WORLD), EpochBatchSampler(24, BATCH, 5, 1, WORLD)
    sampler.set_epoch(2, 1), grouped.set_epoch(2, 1)
    batches = list(grouped)
    assert len(batches) == len(grouped) == 2 and all(len(b) == BATCH for b in batches)
    assert [key for b in batches for key in b] == list(sampler)


def test_a_synthetic_batch_is_its_samples_stacked():
    ds = dataset(2 * CHUNK)
    indices = [CHUNK + 2, 3, CHUNK - 1, 3, CHUNK]  # two chunks, out of order, a repeat
    batch = ds.batch(indices)
    samples = [ds[i] for i in indices]
    assert batch["image"].shape == (5, 3, 16, 16) and batch["image"].dtype == torch.uint8
    for key in ("image", "mask"):
        stacked = torch.stack([s[key].as_subclass(torch.Tensor) for s in samples])
        assert batch[key].dtype == stacked.dtype and torch.equal(batch[key], stacked)
    assert batch["label"].tolist() == [s["label"] for s in samples] and batch["label"].dtype == torch.int64
    assert batch["caption"] == [s["caption"] for s in samples]
    assert all(type(c) is str for c in batch["caption"])
    with pytest.raises(IndexError, match=f"index {2 * CHUNK} outside the {2 * CHUNK} samples"):
        ds.batch([0, 2 * CHUNK])
    with pytest.raises(IndexError, match="index -1"):
        ds.batch([-1])
    with pytest.raises(ValueError, match="non-empty list of indices"):
        ds.batch([])
