"""The transfer stage: fine-tune a segmentation head (and the backbone, unless frozen), then score it.
The frozen probe (transfer.probe=true) is readout/segmentation.py; it scores with `score` here.

Under torchrun both run data-parallel like pretraining: `transfer.batch_size` is the global batch, each
rank trains on its share (batch norm and the loss's pixel count taken over the global batch), the FLOPs
are the ranks' shares summed (the same plan and cost on 1 or N processes), each rank scores every N-th
validation image and the confusion matrices are summed; rank 0 alone writes. Given `checkpoints`, a run
stopped part-way (a signal, kill -9) resumes from them when the same command runs again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Subset

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.schema import TrainConfig, TransferConfig
from budgetssl.data.info import SegInfo
from budgetssl.data.loader import Batches, LoaderOptions, View, Viewed, endless_batches
from budgetssl.engine import distributed
from budgetssl.engine.checkpoint_files import Checkpoints
from budgetssl.engine.distributed import World
from budgetssl.engine.loop import LoopResult, train
from budgetssl.engine.precision import resolve_device
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.rng import seed_everything
from budgetssl.engine.settings import LoopSettings
from budgetssl.errors import ConfigError
from budgetssl.files import write_json
from budgetssl.meter.budget import Budget, FlopBudget, StepBudget
from budgetssl.methods.batched import OnDevice
from budgetssl.record.metrics import MetricsLog
from budgetssl.record.sections import Transfer
from budgetssl.transfer.base import SegmentationDataset, build_segmentation
from budgetssl.transfer.evaluate import evaluate
from budgetssl.transfer.heads import Segmenter
from budgetssl.transfer.views import PairLoaderPart, batch_train_view, eval_view, full_view, train_view

SCORES = "transfer_scores.json"
PROBE_SCORES = "probe_scores.json"


def eval_stride(cfg: TransferConfig) -> int:
    """The sliding-window stride: as configured, else two thirds of a window (mmsegmentation's 341/512)."""
    return cfg.eval_stride or max(1, cfg.image_size * 2 // 3)


def score(
    cfg: TransferConfig, model: Segmenter, val_set: SegmentationDataset, world: World | None = None
) -> dict[str, Any]:
    """The scores of `model` on the validation split; with a distributed `world`, each rank scores
    every world.size-th image and all ranks return the scores of the whole split."""
    info = val_set.info
    world = world or World()
    share: Any = val_set
    if world.distributed:
        share = Subset(val_set, range(world.rank, len(val_set), world.size))
    if cfg.eval_mode == "slide":
        loader = DataLoader(Viewed(share, full_view(info)), batch_size=1)
    else:
        loader = DataLoader(Viewed(share, eval_view(info, cfg.image_size)), batch_size=cfg.eval_batch_size)
    return evaluate(
        model,
        loader,
        info.num_classes,
        info.ignore_index,
        cfg.eval_mode,
        window=cfg.image_size,
        stride=eval_stride(cfg),
        background_index=info.background_index,
        world=world,
    )


def transfer_recipe(cfg: TransferConfig) -> Recipe:
    """One optimizer for every transfer, whatever recipe pretrained the backbone, so that methods are
    compared on one protocol: AdamW at betas (0.9, 0.999), constant weight decay, no gradient clipping, as
    the BEiT ADE20K fine-tuning (mmsegmentation configs/beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py).
    The Segmenter groups its own parameters (which skip weight decay, the backbone's lr scale)."""
    return Recipe(
        lr=cfg.lr,
        final_lr_ratio=cfg.final_lr_ratio,
        warmup_fraction=cfg.warmup_fraction,
        weight_decay=cfg.weight_decay,
        optimizer="adamw",
        grad_clip=None,
    )


def transfer_settings(cfg: TransferConfig, train_cfg: TrainConfig) -> LoopSettings:
    """The transfer's own recipe; only how the loop runs (precision, device, logging) comes from `train`."""
    return LoopSettings.from_train(train_cfg, transfer_recipe(cfg))


def transfer_budget(cfg: TransferConfig) -> Budget:
    """`transfer.steps` steps when set, else until `transfer.flops` are spent."""
    if cfg.steps:
        return StepBudget(cfg.steps)
    return FlopBudget(cfg.flops, "transfer.flops", "transfer.batch_size")


def segmenter(cfg: TransferConfig, backbone: Backbone, info: SegInfo, world: World) -> Segmenter:
    """The model fine-tuned: `cfg.head` on `backbone` (frozen where `cfg.freeze_backbone`), its batch
    norm synchronised over the ranks."""
    model = Segmenter(
        backbone,
        cfg.head,
        info.num_classes,
        info.ignore_index,
        cfg.backbone_lr_scale,
        image_size=cfg.image_size,
        layer_decay=cfg.layer_decay,
    )
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
    return distributed.sync_batch_norm(model, world)  # type: ignore[return-value]


def training_batches(
    cfg: TransferConfig, train_set: SegmentationDataset, train_cfg: TrainConfig, seed: int, world: World
) -> Batches:
    """The fine-tuning's endless stream of this rank's share of each global batch, seeded: each training
    pair in the transfer's training view (transfer/views.py), made per sample in the data path
    (`TrainView`, train.augment_on=loader) or, under train.augment_on=device (or auto, views.py
    batch_train_view), on each batch on the training device as the stream hands it out
    (`BatchTrainView` through methods/batched.py OnDevice, as pretraining's views): the loader then only
    decodes, pads and checks the labels (`PairLoaderPart`; a dataset that gives whole batches, the
    synthetic one, in one fetch a batch), and the steps wait for a few batched kernels instead of a view
    per sample."""
    info = train_set.info
    device = world.device if world.distributed else resolve_device(train_cfg.device)  # the Trainer's
    options = LoaderOptions.for_device(train_cfg.num_workers, device)
    batched = batch_train_view(info, cfg.image_size, train_cfg.augment_on, device, options.num_workers)
    if batched is None:
        view: View = train_view(info, cfg.image_size)
        collate, after = None, None
    else:
        part = PairLoaderPart(info)
        view, collate, after = part, part.collate, OnDevice(batched, device, seed, world.rank, world.size)
    return endless_batches(
        train_set,
        view,
        world.local_batch(cfg.batch_size, "transfer.batch_size"),
        seed,
        rank=world.rank,
        world=world.size,
        options=options,
        collate=collate,
        after=after,
        view_draws=batched is None,
    )


@dataclass
class Fitted:
    """One fine-tuning and its scores."""

    result: LoopResult
    scores: dict[str, Any]
    skipped: int  # unreadable training pairs skipped


def fit(
    cfg: TransferConfig,
    backbone: Backbone,
    train_cfg: TrainConfig,
    seed: int,
    folder: Path,
    label: str,
    file: str,
    checkpoints: Checkpoints | None = None,
) -> Fitted:
    """Train a head on `backbone` (and the backbone, unless frozen) for `cfg.steps` steps or until
    `cfg.flops` are spent, score the validation split and write the scores to `folder/file`: data-
    parallel over the ranks torchrun started, resumed from `checkpoints` where they hold a state."""
    world = distributed.current()
    seed_everything(seed)
    train_set = build_segmentation(cfg, "train")
    val_set = build_segmentation(cfg, "val")
    info = train_set.info
    model = segmenter(cfg, backbone, info, world)
    settings = transfer_settings(cfg, train_cfg)
    if cfg.batch_size > len(train_set):
        raise ConfigError(
            f"transfer.batch_size={cfg.batch_size} exceeds the {len(train_set)} training images of "
            f"transfer '{cfg.name}'; lower transfer.batch_size"
        )
    batches = training_batches(cfg, train_set, train_cfg, seed, world)
    result = train(
        model,
        batches,
        settings,
        transfer_budget(cfg),
        MetricsLog(folder / "metrics.jsonl", enabled=world.is_main),
        label=label,
        checkpoints=checkpoints,
        distributed=True,
    )
    scores = score(cfg, model, val_set, world)
    if world.is_main:
        write_scores(folder / file, cfg, info, scores)
    return Fitted(result, scores, world.sum_ints([batches.skipped])[0])


def write_scores(path: Path, cfg: TransferConfig, info: SegInfo, scores: dict[str, Any]) -> None:
    """The scores file: per-class IoU and the protocol they were scored under."""
    write_json(
        path,
        {
            "transfer": cfg.name,
            "head": cfg.head,
            "freeze_backbone": cfg.freeze_backbone,
            "class_names": list(info.class_names),
            "ignore_index": info.ignore_index,
            "background_index": info.background_index,  # left out of miou_objects (null: none)
            "unit": "percent",
            "eval_mode": cfg.eval_mode,
            **scores,
        },
    )


def fitted_fields(prefix: str, fitted: Fitted) -> dict[str, Any]:
    """The cost fields of one fine-tuning, named `<prefix>_steps`, `<prefix>_flops`, ..."""
    result = fitted.result
    return {
        f"{prefix}_steps": result.steps,
        f"{prefix}_flops_per_step": result.plan.flops_per_step,
        f"{prefix}_flops": result.flops,
        f"{prefix}_final_loss": result.final_loss,
        f"{prefix}_wall_seconds": result.wall_seconds,
        f"{prefix}_world_size": result.world_size,
        f"{prefix}_resumed_from_step": result.resumed_from_step,
    }


def finetune(
    cfg: TransferConfig,
    backbone: Backbone,
    train_cfg: TrainConfig,
    seed: int,
    folder: Path,
    checkpoints: Checkpoints | None = None,
) -> Transfer:
    """The transfer as configured: its record section (mIoU, cost, protocol)."""
    fitted = fit(cfg, backbone, train_cfg, seed, folder, "transfer", SCORES, checkpoints)
    result, scores = fitted.result, fitted.scores
    return Transfer(
        **fitted_fields("transfer", fitted),
        miou=scores["miou"],
        miou_objects=scores["miou_objects"],
        pixel_accuracy=scores["pixel_accuracy"],
        transfer_scores=SCORES,
        transfer=cfg.name,
        transfer_head=cfg.head,
        transfer_freeze_backbone=cfg.freeze_backbone,
        transfer_backbone_lr_scale=cfg.backbone_lr_scale,
        transfer_layer_decay=cfg.layer_decay,
        transfer_budget_flops=cfg.flops,
        transfer_eval_mode=cfg.eval_mode,
        transfer_eval_stride=eval_stride(cfg) if cfg.eval_mode == "slide" else None,
        transfer_flops_breakdown=result.breakdown,
        transfer_data_skipped=fitted.skipped,  # unreadable pairs skipped (transfer.skip_corrupt=true)
    )


def probe_config(cfg: TransferConfig) -> TransferConfig:
    """The probe's transfer section: the transfer's data and evaluation, with a linear head on the frozen
    backbone, whatever head and mode the transfer itself uses."""
    return replace(cfg, head="linear", freeze_backbone=True, layer_decay=None)
