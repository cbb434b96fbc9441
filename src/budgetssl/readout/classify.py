"""Classification quality of a frozen backbone from its pooled features: DINO's weighted k-NN
(`knn_accuracy`) and a linear classifier (`linear_accuracy`) on the pretraining dataset's labels, trained
on (or voting from) images of its train split and scored on its held-out val split.

The images: `readout.train_images` and `readout.test_images` evenly spaced over each split (so a
class-sorted folder layout gives every class its share, with no randomness: every backbone is scored on
the same images), fewer where a split is smaller; samples without a label are left out. Each image's
view is deterministic: its shorter side resized to the pretraining resolution (dataset.image_size), a
centre crop of that size (the whole image for square data, as the synthetic scenes are), normalised.

Datasets without labels (image_folder, COCO without dataset.labels=true), or without random access
(streamed shards), give null scores and a `readout_note` saying why. Under torchrun every rank computes
the same read-out (the same weights, images and seeds) and rank 0's record is written.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset, IterableDataset
from torchvision.transforms import v2

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.schema import DatasetConfig, ReadoutConfig
from budgetssl.data.base import WholeBatches, build_dataset
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS
from budgetssl.errors import BudgetSSLError
from budgetssl.methods.augment import to_normalized
from budgetssl.readout.features import compute_features
from budgetssl.readout.knn import knn_accuracy
from budgetssl.readout.linear import Classification, LinearSettings, fit_linear, predict
from budgetssl.record.sections import Readout

SEED = 0  # the linear fit's split and shuffles: one seed for every backbone (chosen)


def linear_settings(
    cfg: ReadoutConfig, batch_size: int, lrs: list[float], eps: float = 1e-6
) -> LinearSettings:
    return LinearSettings(
        lrs=tuple(lrs),
        weight_decay=cfg.weight_decay,
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
        tol=cfg.tol,
        held_out_fraction=cfg.held_out_fraction,
        batch_size=batch_size,
        eps=eps,
    )


def evenly_spaced(length: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(length) (all of them where count >= length)."""
    if count >= length:
        return list(range(length))
    return [i * length // count for i in range(count)]


def view(info: DataInfo, size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *to_normalized(info)])


# Images viewed at once where the dataset gives whole batches: the view is deterministic, so a batch's is
# each image's (tests/test_readout.py).
CHUNK = 256


def labelled(dataset: Dataset, count: int, transform: v2.Compose) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of `count` evenly spaced samples with a label: from whole batches where the
    dataset gives them (data/base.py WholeBatches, e.g. the synthetic set: no per-sample dicts and views,
    which were most of a read-out's time at the demo's sizes), else sample by sample."""
    indices = evenly_spaced(len(dataset), count)  # type: ignore[arg-type]
    if isinstance(dataset, WholeBatches):
        chunks = [dataset.batch(indices[i : i + CHUNK]) for i in range(0, len(indices), CHUNK)]
        if chunks and all(chunk.get("label") is not None for chunk in chunks):
            images = torch.cat([transform(chunk["image"]) for chunk in chunks])
            return images, torch.cat([torch.as_tensor(chunk["label"]).long() for chunk in chunks])
    images, labels = [], []
    for i in indices:
        sample = dataset[i]
        if sample.get("label") is None:
            continue
        images.append(transform(sample["image"]))
        labels.append(int(sample["label"]))
    if not images:
        raise BudgetSSLError("no labelled sample among those read")
    return torch.stack(images), torch.tensor(labels)


def why_not(cfg: DatasetConfig) -> str | None:
    """None where the pretraining dataset can be read out; else why not."""
    cls = DATASETS.get(cfg.name)
    if "label" not in cls.provided(cfg):
        hint = cls.missing_hint(cfg, {"label"})
        return f"dataset '{cfg.name}' has no labels" + (f" ({hint})" if hint else "")
    if issubclass(cls, IterableDataset):
        return f"dataset '{cfg.name}' is streamed (no random access to a held-out split)"
    return None


def classify(
    backbone: Backbone, dataset_cfg: DatasetConfig, cfg: ReadoutConfig, device: torch.device
) -> Readout:
    """`knn_accuracy` and `linear_accuracy` of `backbone` (left as it was: eval mode only inside)."""
    if not cfg.classify:
        return Readout(readout_note="readout.classify=false")
    if (note := why_not(dataset_cfg)) is not None:
        return Readout(readout_dataset=dataset_cfg.name, readout_note=note)
    start = time.perf_counter()
    try:
        train_set, test_set = build_dataset(dataset_cfg, "train"), build_dataset(dataset_cfg, "val")
        transform = view(train_set.info, dataset_cfg.image_size)
        train_x, train_y = labelled(train_set, cfg.train_images, transform)
        test_x, test_y = labelled(test_set, cfg.test_images, transform)
    except (BudgetSSLError, FileNotFoundError, ValueError) as e:
        return Readout(readout_dataset=dataset_cfg.name, readout_note=f"no labelled train and val split: {e}")
    classes = train_set.info.num_classes
    backbone.to(device)

    def pooled(images: torch.Tensor) -> torch.Tensor:
        batches = images.split(cfg.batch_size)
        return compute_features(backbone, lambda x: backbone(x, readout="pooled"), batches, device)[0]

    train_f, test_f = pooled(train_x), pooled(test_x)
    train_y, test_y = train_y.to(device), test_y.to(device)
    features_done = time.perf_counter()
    knn = knn_accuracy(train_f, train_y, test_f, test_y, classes, cfg.knn_k, cfg.knn_temperature)
    knn_done = time.perf_counter()
    fit = fit_linear(
        train_f, train_y, classes, Classification(), linear_settings(cfg, cfg.batch_size, cfg.lrs), SEED
    )
    linear = float((predict(fit, test_f).argmax(dim=1) == test_y).float().mean() * 100)
    done = time.perf_counter()
    return Readout(
        knn_accuracy=knn,
        linear_accuracy=linear,
        readout_dataset=dataset_cfg.name,
        readout_train_images=len(train_y),
        readout_test_images=len(test_y),
        readout_classes=classes,
        knn_k=min(cfg.knn_k, len(train_y)),
        knn_temperature=cfg.knn_temperature,
        linear_protocol=fit.protocol,
        readout_feature_seconds=features_done - start,
        knn_seconds=knn_done - features_done,
        linear_seconds=done - knn_done,
    )
