"""Segmentation scores from a confusion matrix accumulated by torchmetrics.

mIoU follows the common (mmsegmentation) convention: per-class IoU over the whole evaluation set,
averaged over the classes that occur in the ground truth or the predictions; ignored pixels excluded.
`miou_objects` is the same average without the background class (where the dataset has one), so that a
score dominated by large, easy background regions does not hide whether objects are recognised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class SegmentationScore:
    def __init__(self, num_classes: int, ignore_index: int, background_index: int | None = None) -> None:
        # Imported here, not with the module: torchmetrics' import (1-2 s on this project's 2-core CPU; it
        # loads its audio, image and plotting modules, matplotlib among them) would otherwise be paid by
        # every process that loads the transfer stage, most of which (a pretraining run, a config error,
        # budgetssl-flops) never score.
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.background_index = background_index
        self.confusion = MulticlassConfusionMatrix(
            num_classes, ignore_index=ignore_index, validate_args=False
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred and target: integer class maps of the same shape."""
        self.confusion.update(pred.flatten().cpu(), target.flatten().cpu())

    def compute(self, combine: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, object]:
        """The scores; `combine` first turns this confusion matrix into the one scored (e.g. the sum of
        every rank's, each having scored its share of the images)."""
        cm = self.confusion.compute()  # rows: target, columns: prediction
        if combine is not None:
            cm = combine(cm)
        return scores_from_confusion(cm.double(), self.background_index)


def _mean_percent(iou: torch.Tensor) -> float:
    present = ~torch.isnan(iou)
    return float(iou[present].mean() * 100) if bool(present.any()) else float("nan")


def scores_from_confusion(cm: torch.Tensor, background_index: int | None = None) -> dict[str, object]:
    """mIoU, mIoU over the object classes (all but `background_index`; all when it is None), pixel
    accuracy and per-class IoU, in percent."""
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    objects = torch.ones_like(iou, dtype=torch.bool)
    if background_index is not None:
        objects[background_index] = False
    return {
        "miou": _mean_percent(iou),
        "miou_objects": _mean_percent(iou[objects]),
        "pixel_accuracy": float(tp.sum() / total * 100) if total > 0 else float("nan"),
        "per_class_iou": [None if torch.isnan(v) else float(v * 100) for v in iou],
    }
