"""The frozen segmentation probe (transfer.probe=true): what a backbone's features hold for
segmentation, measured with the optimiser out of the way.

The backbone's features of the transfer's training images are computed once: each image in the
transfer's own training view (random resized crop and flip, transfer/views.py), drawn once per image
with the run's seed (batched on the device or per sample, as `train.augment_on` says: probe_views),
read out as the linear head reads it (transfer/heads.py Segmenter: the feature map,
each token normalised by the parameter-free ReadoutNorm). A linear (1x1) head is trained on them to
convergence, its lr chosen on a held-out part of those images (readout/linear.py gives the protocol:
every lr of `readout.lrs` side by side, standardised features, AdamW, early stop on a plateau of the fit
loss). The kept head becomes a transfer/heads.py LinearHead (its BatchNorm's running statistics the fit
part's, so eval mode standardises as training did; affine 1 and 0), and the Segmenter is scored by the
transfer's own evaluation (transfer/finetune.py score: resize or slide), so probe_miou means what it
meant when the head trained for the transfer's steps.

Cost, metered with the project's counter (fma=2): the feature pass, each head step (forward and
backward of every head at once; whole mini-batches, so every step costs the same) and each epoch's
evaluation, summed in probe_flops. The scoring of the validation split is not counted (nor is the
transfer's). One row per epoch goes to metrics.jsonl (stage probe), written when the probe ends.

Resuming: the probe keeps no checkpoint; it takes seconds, so a run stopped during it computes it again
(the same images, seeds and result). Under torchrun every rank computes the same probe (the same
weights, images and seeds), each scores its share of the validation images and the confusion matrices
are summed; rank 0 writes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.schema import ReadoutConfig, TrainConfig, TransferConfig
from budgetssl.data.info import SegInfo
from budgetssl.data.loader import LoaderOptions, Position, Viewed
from budgetssl.engine import distributed
from budgetssl.engine.precision import resolve_device
from budgetssl.methods.batched import OnDevice
from budgetssl.readout.classify import evenly_spaced, linear_settings
from budgetssl.readout.features import compute_features
from budgetssl.readout.linear import LinearFit, Segmentation, fit_linear
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.sections import Probe
from budgetssl.transfer.base import SegmentationDataset, build_segmentation
from budgetssl.transfer.finetune import PROBE_SCORES, probe_config, score, write_scores
from budgetssl.transfer.heads import LinearHead, Segmenter
from budgetssl.transfer.views import BatchTrainView, PairLoaderPart, batch_train_view, train_view

STAGE = "probe"


@torch.no_grad()
def load_head(head: LinearHead, fit: LinearFit) -> None:
    """The fitted head as a LinearHead: standardisation in its BatchNorm's running statistics (identity
    affine), weights in its 1x1 convolution."""
    head.norm.running_mean.copy_(fit.mean)
    head.norm.running_var.copy_(fit.var)
    head.norm.weight.fill_(1.0)
    head.norm.bias.zero_()
    head.classify.weight.copy_(fit.weight[:, :, None, None])
    head.classify.bias.copy_(fit.bias)


def read_features(model: Segmenter, x: torch.Tensor) -> torch.Tensor:
    """What the probe's linear head reads of images `x`: the Segmenter's feature map, each token normalised
    by its parameter-free ReadoutNorm (transfer/heads.py)."""
    return model.readout_norm(model.backbone(x, readout=model.readout))  # type: ignore[return-value]


def probe_model(cfg: TransferConfig, backbone: Backbone, info: SegInfo) -> Segmenter:
    """The probe's Segmenter: `cfg`'s head (probe_config: linear) on `backbone`, frozen."""
    model = Segmenter(backbone, cfg.head, info.num_classes, info.ignore_index, image_size=cfg.image_size)
    model.backbone.requires_grad_(False)
    return model


def probe_indices(readout: ReadoutConfig, train_images: int) -> list[int]:
    """Which of the transfer's `train_images` training images the probe reads: readout.probe_images of
    them, evenly spaced (every one where that is null or larger)."""
    return evenly_spaced(train_images, readout.probe_images or train_images)


def probe_view(
    cfg: TransferConfig, info: SegInfo, train_cfg: TrainConfig, device: torch.device
) -> BatchTrainView | None:
    """The probe's batched training view, or None for TrainView per sample, as `train.augment_on` says
    (transfer/views.py batch_train_view); auto always batches here: the probe's per-sample views would
    run in this process before its feature pass, not in data-loader workers beside a step."""
    return batch_train_view(info, cfg.image_size, train_cfg.augment_on, device, workers=0)


def probe_views(
    cfg: TransferConfig,
    train_set: SegmentationDataset,
    indices: list[int],
    seed: int,
    chunk: int,
    train_cfg: TrainConfig,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The probe's training images in the transfer's training view, each drawn once, seeded by `seed`:
    (images, masks) in chunks of `chunk`, in the order of `indices`.

    Batched (probe_view), the pairs are decoded and padded by a DataLoader (its workers as
    `train.num_workers` gives them on `device`) and each chunk is viewed on `device` by BatchTrainView,
    drawing from a generator seeded by (seed, chunk) (methods/batched.py OnDevice), the same on every
    rank. Otherwise (train.augment_on=loader, the reference) TrainView views each sample in turn,
    drawing from torch's generator seeded once by `seed`."""
    info = train_set.info
    batched = probe_view(cfg, info, train_cfg, device)
    if batched is None:
        view = train_view(info, cfg.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the views' crops and flips draw from torch's generator
            samples = [view(train_set[i]) for i in indices]
        images = torch.stack([s["image"] for s in samples])
        masks = torch.stack([s["mask"] for s in samples])
        yield from zip(images.split(chunk), masks.split(chunk), strict=True)
        return
    options = LoaderOptions.for_device(train_cfg.num_workers, device)
    part = PairLoaderPart(info)
    loader = DataLoader(
        Viewed(Subset(train_set, indices), part),
        batch_size=chunk,
        collate_fn=part.collate,
        num_workers=options.num_workers,
        pin_memory=options.pin_memory,
    )
    on_device = OnDevice(batched, device, seed)
    for k, batch in enumerate(loader):
        viewed = on_device(batch, Position(epoch=0, in_epoch=k))
        yield viewed["image"], viewed["mask"]


def probe(
    cfg: TransferConfig,
    readout: ReadoutConfig,
    backbone: Backbone,
    train_cfg: TrainConfig,
    seed: int,
    folder: Path,
) -> Probe:
    """Score `backbone` frozen with a linear head trained on its cached features: the record section."""
    start = time.perf_counter()
    world = distributed.current()
    cfg = probe_config(cfg)
    train_set, val_set = build_segmentation(cfg, "train"), build_segmentation(cfg, "val")
    info = train_set.info
    model = probe_model(cfg, backbone, info)
    device = world.device if world.distributed else resolve_device(train_cfg.device)
    model.to(device)
    indices = probe_indices(readout, len(train_set))
    parts: list[torch.Tensor] = []

    def images() -> Iterator[torch.Tensor]:
        for chunk, mask in probe_views(cfg, train_set, indices, seed, readout.batch_size, train_cfg, device):
            parts.append(mask)
            yield chunk

    features, feature_flops = compute_features(
        model.backbone, functools.partial(read_features, model), images(), device, count=True
    )
    masks = torch.cat(parts)
    features_done = time.perf_counter()
    settings = linear_settings(readout, readout.probe_batch_size, readout.probe_lrs, model.head.norm.eps)
    fit = fit_linear(features, masks, info.num_classes, Segmentation(info.num_classes, info.ignore_index),
                     settings, seed)  # fmt: skip
    head_done = time.perf_counter()
    load_head(model.head, fit)  # type: ignore[arg-type]
    scores = score(cfg, model, val_set, world)
    feature_flops = int(feature_flops or 0)
    log = MetricsLog(folder / "metrics.jsonl", enabled=world.is_main)
    log.discard_after(STAGE, 0)  # rows of an attempt stopped part-way: the probe is computed again
    per_epoch = fit.steps_per_epoch * fit.flops_per_step + fit.eval_flops_per_epoch
    for epoch, loss in enumerate(fit.loss_history, start=1):
        row = {
            "stage": STAGE,
            "step": epoch * fit.steps_per_epoch,
            "flops": feature_flops + epoch * per_epoch,
        }
        log.write(row | {"loss": loss, "lr": fit.protocol["lr"]})
    if world.is_main:
        write_scores(folder / PROBE_SCORES, cfg, info, scores)
    protocol = {
        **fit.protocol,
        "views": "the transfer's training view, drawn once per image (seeded), "
        + ("per sample" if probe_view(cfg, info, train_cfg, device) is None else "batched on the device"),
    }
    return Probe(
        probe_steps=fit.steps,
        probe_flops_per_step=fit.flops_per_step,
        probe_flops=feature_flops + fit.flops,
        probe_feature_flops=feature_flops,
        probe_epochs=fit.epochs,
        probe_steps_per_epoch=fit.steps_per_epoch,
        probe_eval_flops_per_epoch=fit.eval_flops_per_epoch,
        probe_images=len(indices),
        probe_protocol=protocol,
        probe_final_loss=fit.protocol["final_loss"],
        probe_wall_seconds=time.perf_counter() - start,
        probe_feature_seconds=features_done - start,
        probe_head_seconds=head_done - features_done,
        probe_world_size=world.size,
        probe_resumed_from_step=0,  # never resumed: computed again
        probe_miou=scores["miou"],
        probe_miou_objects=scores["miou_objects"],
        probe_pixel_accuracy=scores["pixel_accuracy"],
        probe_scores=PROBE_SCORES,
    )
