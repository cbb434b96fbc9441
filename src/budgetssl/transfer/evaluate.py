"""Scoring a fine-tuned segmenter: at the training resolution, or by sliding windows at full resolution.

Sliding-window inference follows the common (mmsegmentation "slide") protocol: windows of the training
size at a fixed stride, images smaller than a window padded, overlapping logits averaged. The modes are the
schema's `EvalMode`, refused there when misspelt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from budgetssl.engine.distributed import World
from budgetssl.transfer.heads import Segmenter
from budgetssl.transfer.metrics import SegmentationScore


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows along one side, the last one flush with the edge so every pixel is covered."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def slide_logits(
    model: Segmenter, image: torch.Tensor, window: int, stride: int, chunk: int = 64
) -> torch.Tensor:
    """Logits (1, K, H, W) for one normalised image (1, C, H, W) of any size."""
    _, _, h, w = image.shape
    padded = F.pad(image, (0, max(window - w, 0), 0, max(window - h, 0)))
    height, width = padded.shape[-2:]
    corners = [
        (y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)
    ]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=image.device)
    for i in range(0, len(corners), chunk):
        part = corners[i : i + chunk]
        crops = torch.cat([padded[..., y : y + window, x : x + window] for y, x in part])
        logits = model.logits(crops)
        if total is None:
            total = torch.zeros(1, logits.shape[1], height, width, device=image.device)
        for (y, x), out in zip(part, logits, strict=True):
            total[0, :, y : y + window, x : x + window] += out
            count[..., y : y + window, x : x + window] += 1
    assert total is not None
    return (total / count)[..., :h, :w]


@torch.no_grad()
def evaluate(
    model: Segmenter,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    mode: str = "resize",
    window: int = 0,
    stride: int = 0,
    background_index: int | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    """Per-class IoU, mIoU (also over the object classes alone) and pixel accuracy over `loader` (in
    slide mode, one image per batch). With a distributed `world` each rank's loader holds its share of
    the images: the ranks' confusion matrices are summed (integers: exactly what one process counts)
    and every rank returns the scores of the whole set."""
    model.eval()
    score = SegmentationScore(num_classes, ignore_index, background_index)
    device = next(model.parameters()).device
    for batch in loader:
        image = batch["image"].to(device)
        if mode == "slide":
            logits = torch.cat([slide_logits(model, x[None], window, stride) for x in image])
        else:
            logits = model.logits(image)
        score.update(logits.max(dim=1).indices, batch["mask"])  # argmax, faster (readout/linear.py)
    model.train()
    if world is None or not world.distributed:
        return score.compute()
    return score.compute(lambda cm: torch.tensor(world.sum_ints(cm.flatten().tolist())).view_as(cm))
