"""Text for CLIP: real captions where a dataset has them, pseudo-captions from labels where it has not,
tokenised offline with the BPE vocabulary that ships inside open_clip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from open_clip.tokenizer import SimpleTokenizer

from budgetssl.methods.augment import SingleView

CAPTION_SOURCES = ("auto", "caption", "label")


def pseudo_caption(names: Sequence[str]) -> str:
    """The study's template: "This is a photo of <l1> and <l2>"."""
    return "This is a photo of " + " and ".join(names)


def label_names(label: Any, class_names: Sequence[str]) -> list[str]:
    """Class names of an int label or of a list of labels (multi-label data)."""
    labels = [label] if isinstance(label, int) or (torch.is_tensor(label) and label.ndim == 0) else label
    return [class_names[int(i)] for i in labels]


class CaptionView(SingleView):
    """Image transform plus tokenised text: {"image": (C, H, W), "tokens": (context_length,)}."""

    def __init__(self, transform, class_names: Sequence[str], source: str, context_length: int) -> None:
        super().__init__(transform)
        self.class_names = tuple(class_names)
        self.source = source
        self.tokenizer = SimpleTokenizer(context_length=context_length)

    def text(self, sample: dict[str, Any]) -> str:
        if self.source != "label" and "caption" in sample:
            caption = sample["caption"]
            if isinstance(caption, list | tuple):  # several captions per image (COCO): one per visit
                caption = caption[int(torch.randint(len(caption), ()))]
            return caption
        return pseudo_caption(label_names(sample["label"], self.class_names))

    def fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"tokens": self.tokenizer([self.text(sample)])[0]}
