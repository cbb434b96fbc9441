"""Segmentation scores from a confusion matrix accumulated over the evaluation set.

mIoU follows the common (mmsegmentation) convention: per-class IoU over the whole evaluation set,
averaged over the classes that occur in the ground truth or the predictions; ignored pixels excluded.
`miou_objects` is the same average without the background class (where the dataset has one), so that a
score dominated by large, easy background regions does not hide whether objects are recognised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class SegmentationScore:
    """A confusion matrix (rows: target, columns: prediction) accumulated over batches, as torchmetrics'
    MulticlassConfusionMatrix accumulates it (tests/test_metrics.py checks the scores against its
    MulticlassJaccardIndex). Counted here with one bincount, not through torchmetrics: importing
    torchmetrics loads scipy.signal and matplotlib (its audio and plotting modules), seconds of every
    process that scores a transfer, for what is one line."""

    def __init__(self, num_classes: int, ignore_index: int, background_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background_index = background_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred and target: integer class maps of the same shape; pixels whose target is `ignore_index`
        are left out."""
        pred, target = pred.flatten().cpu().long(), target.flatten().cpu().long()
        keep = target != self.ignore_index
        n = self.num_classes
        cells = target[keep] * n + pred[keep]
        if cells.numel() and not (0 <= int(cells.min()) and int(cells.max()) < n * n):
            raise ValueError(
                f"a class map holds a class outside 0-{n - 1} (other than the ignored {self.ignore_index}): "
                "check the dataset's masks and num_classes"
            )
        self.confusion += torch.bincount(cells, minlength=n * n).reshape(n, n)

    def compute(self, combine: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, object]:
        """The scores; `combine` first turns this confusion matrix into the one scored (e.g. the sum of
        every rank's, each having scored its share of the images)."""
        cm = self.confusion.clone()  # rows: target, columns: prediction
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
