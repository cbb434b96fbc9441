"""Segmentation scores from a confusion matrix accumulated by torchmetrics.

mIoU follows the common (mmsegmentation) convention: per-class IoU over the whole evaluation set,
averaged over the classes that occur in the ground truth or the predictions; ignored pixels excluded.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationScore:
    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.confusion = MulticlassConfusionMatrix(
            num_classes, ignore_index=ignore_index, validate_args=False
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred and target: integer class maps of the same shape."""
        self.confusion.update(pred.flatten().cpu(), target.flatten().cpu())

    def compute(self) -> dict[str, object]:
        cm = self.confusion.compute().double()  # rows: target, columns: prediction
        return scores_from_confusion(cm)


def scores_from_confusion(cm: torch.Tensor) -> dict[str, object]:
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return {
        "miou": float(torch.nanmean(iou) * 100) if bool((union > 0).any()) else float("nan"),
        "pixel_accuracy": float(tp.sum() / total * 100) if total > 0 else float("nan"),
        "per_class_iou": [None if torch.isnan(v) else float(v * 100) for v in iou],
    }
