"""Text for CLIP: real captions where a dataset has them, pseudo-captions from labels where it has not,
tokenised offline with the BPE vocabulary that ships inside open_clip."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from open_clip.tokenizer import SimpleTokenizer

from budgetssl.data.sampler import seeded
from budgetssl.methods.augment import SingleView

CAPTION_SOURCES = ("auto", "caption", "label")
# Texts whose tokens batch_fields keeps: every distinct caption of the demo's synthetic stream (7,484 of
# its 20,000 scenes), under 6 MB at CLIP's 77 tokens.
KNOWN_TEXTS = 8192


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
        self.known: OrderedDict[str, torch.Tensor] = OrderedDict()  # text -> tokens, the latest last

    def text(self, sample: dict[str, Any]) -> str:
        if self.source != "label" and "caption" in sample:
            caption = sample["caption"]
            if several(caption):  # several captions per image (COCO): one per visit
                caption = caption[int(torch.randint(len(caption), ()))]
            return caption
        return pseudo_caption(label_names(sample["label"], self.class_names))

    def fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"tokens": self.tokenizer([self.text(sample)])[0]}

    def batch_fields(self, batch: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        """Every sample's text as `text` makes it, tokenised: the texts not tokenised lately in one call,
        the rest as they were (`known`; the tokeniser is a pure function of the text, and its per-text
        cleaning is most of a batch's data time). A sample with several captions draws its one with its
        own seed, the draw (and so the caption) of the per-sample path."""
        texts = []
        for i, seed in enumerate(seeds):
            sample = {key: batch[key][i] for key in ("caption", "label") if key in batch}
            draws = several(sample.get("caption"))  # only a draw needs the seed
            texts.append(seeded(seed, functools.partial(self.text, sample)) if draws else self.text(sample))
        new = list(dict.fromkeys(t for t in texts if t not in self.known))
        if new:
            self.known.update(zip(new, self.tokenizer(new), strict=True))
        rows = [self.known[t] for t in texts]
        for t in texts:
            self.known.move_to_end(t)
        while len(self.known) > KNOWN_TEXTS:
            self.known.popitem(last=False)
        return {"tokens": torch.stack(rows)}


def several(caption: Any) -> bool:
    """Whether a sample's caption field holds several captions to draw one from."""
    return isinstance(caption, list | tuple)
