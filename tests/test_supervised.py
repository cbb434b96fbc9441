"""Supervised: DeiT's recipe at the reference size, its augmentations as options, held-out accuracy."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2

from budgetssl.backbones.backbone import build_backbone
from budgetssl.data.base import build_dataset
from budgetssl.engine.recipe import resolve_recipe
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import to_normalized
from budgetssl.methods.base import build_method
from budgetssl.methods.zoo import supervised
from conftest import TINY, TINY_BUDGET, run_config, run_in_process, summary

pytestmark = pytest.mark.usefixtures("one_thread")

OFF = ["method.randaugment=null", "method.random_erasing=0", "method.mixup_alpha=0", "method.cutmix_alpha=0"]


def build(*overrides: str, method: str = "supervised"):
    run = run_config(f"method={method}", "dataset.image_size=16", "dataset.num_val=40", *overrides)
    dataset = build_dataset(run.dataset)
    torch.manual_seed(0)
    method = build_method(run.method, build_backbone(run.backbone, run.dataset.image_size), dataset.info)
    return run, dataset, method


def test_recipe_resolves_to_deit_at_the_reference_size():
    # DeiT-B: batch 1024 (2 nodes x 8 GPUs x 64), lr 5e-4 x batch / 512, 5 of 300 epochs of warm-up, min lr
    # 1e-5 (facebookresearch/deit main.py and README_deit.md; configs/method/supervised.yaml cites each).
    run = run_config(
        "method=supervised", "backbone=vit_base", "dataset.image_size=224", "train.batch_size=1024"
    )
    recipe = resolve_recipe(run.train)
    assert recipe["optimizer"] == "adamw"
    assert recipe["lr"] == pytest.approx(5e-4 * 1024 / 512)
    assert recipe["base_lr"] == 5e-4 and recipe["lr_scaling"] == "linear"
    assert recipe["lr_reference_batch"] == 512
    assert recipe["betas"] == [0.9, 0.999] and recipe["eps"] == 1e-8
    assert recipe["weight_decay"] == recipe["weight_decay_end"] == 0.05
    assert set(recipe["no_weight_decay"]) == {"biases_norms", "tokens"}
    assert recipe["warmup_fraction"] == pytest.approx(5 / 300, rel=1e-3)
    assert recipe["lr"] * recipe["final_lr_ratio"] == pytest.approx(1e-5)
    assert recipe["grad_clip"] is None and recipe["drop_path"] == 0.1
    m = run.method
    assert m.label_smoothing == 0.1 and m.randaugment == "rand-m9-mstd0.5-inc1"
    assert (m.mixup_alpha, m.cutmix_alpha, m.random_erasing) == (0.8, 1.0, 0.25)
    assert (m.crop_scale_min, m.interpolation, m.eval_crop_ratio) == (0.08, "bicubic", 0.875)


def counting(monkeypatch, cls, calls: list) -> None:
    call = cls.__call__

    def counted(self, *args):
        calls.append(cls.__name__)
        return call(self, *args)

    monkeypatch.setattr(cls, "__call__", counted)


@pytest.mark.parametrize("on", [True, False])
def test_randaugment_and_random_erasing_run_only_when_on(monkeypatch, on):
    calls: list[str] = []
    counting(monkeypatch, supervised.TimmRandAugment, calls)
    counting(monkeypatch, RandomErasing, calls)
    _, dataset, method = build(*([] if on else OFF))
    view = method.views()
    for i in range(6):
        out = view(dataset[i])
        assert out["image"].shape == (3, 16, 16) and out["image"].dtype == torch.float32
    expected = 6 if on else 0
    assert calls.count("TimmRandAugment") == calls.count("RandomErasing") == expected


def test_timm_augmentations_are_seeded_by_torch_and_leave_global_rngs_alone():
    _, dataset, method = build()
    view, sample = method.views(), dataset[3]
    py, np_state = random.getstate(), np.random.get_state()[1].copy()
    torch.manual_seed(5)
    a = view(sample)["image"]
    torch.manual_seed(5)
    b = view(sample)["image"]
    assert torch.equal(a, b)
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], np_state)


def test_randaugment_at_full_magnitude_posterizes_to_black_instead_of_failing():
    # rand-m9-mstd0.5 reaches magnitude 10, where timm asks Pillow to keep 0 bits; Pillow 13 refuses.
    augment = supervised.TimmRandAugment("rand-m10-mstd0-inc1", 16, (0.5, 0.5, 0.5), "bicubic")
    posterizes = [op for op in augment.op.ops if op.name == "PosterizeIncreasing"]
    assert posterizes and all(op.aug_fn is supervised.posterize for op in posterizes)
    image = torch.randint(1, 255, (3, 16, 16), dtype=torch.uint8)
    posterizes[0].prob = 1.0
    black = v2.functional.pil_to_tensor(posterizes[0](v2.functional.to_pil_image(image)))
    assert not black.any()
    for _ in range(50):
        assert augment(image).shape == (3, 16, 16)


def backbone_input(method, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seen = []
    handle = method.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        out = method(batch)
    finally:
        handle.remove()
    return seen[0], out.loss, method.head(method.backbone(seen[0]))


@pytest.mark.parametrize("on", [True, False])
def test_mixup_and_cutmix_mix_the_batch_only_when_on(on):
    _, dataset, method = build(*([] if on else OFF))
    assert (method.mixup is not None) == on
    view = v2.Compose(to_normalized(dataset.info))
    batch = {
        "image": torch.stack([view(dataset[i]["image"]) for i in range(8)]),
        "label": torch.tensor([dataset[i]["label"] for i in range(8)]),
    }
    original = batch["image"].clone()
    method.eval()  # no drop-path, so the loss can be recomputed from what the backbone saw
    np.random.seed(0)
    seen, loss, logits = backbone_input(method, batch)
    assert torch.equal(batch["image"], original)  # the batch is mixed on a copy
    if on:
        assert not torch.allclose(seen, original)
        # Soft targets: label smoothing folded in, each row a distribution over the classes.
        np.random.seed(0)
        _, targets = method.mixup(original.clone(), batch["label"])
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        assert (targets > 0).all()
        expected = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    else:
        assert torch.equal(seen, original)
        expected = F.cross_entropy(logits, batch["label"], label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_needs_an_even_batch():
    with pytest.raises(ConfigError, match="even"):
        run_config("method=supervised", "train.batch_size=15")
    run_config("method=supervised", "train.batch_size=15", *OFF)


def test_validation_scores_are_the_accuracy_of_the_centre_view():
    run, _, method = build(method="cpu/supervised")
    val_set = build_dataset(run.dataset, "val")
    method.train()
    scores = method.validation_scores(val_set)
    assert method.training  # put back as it was
    assert scores["val_images"] == len(val_set) == 40
    # Directly: every held-out image as it is (eval_crop_ratio 1 at its own size), one batch, eval mode.
    normalize = v2.Compose(to_normalized(val_set.info))
    images = torch.stack([normalize(val_set[i]["image"]) for i in range(len(val_set))])
    labels = torch.tensor([val_set[i]["label"] for i in range(len(val_set))])
    method.eval()
    with torch.no_grad():
        direct = (method.head(method.backbone(images)).argmax(dim=1) == labels).float().mean().item() * 100
    assert 0 <= scores["val_accuracy"] <= 100
    assert scores["val_accuracy"] == pytest.approx(direct)


@pytest.mark.slow
def test_a_pretraining_run_records_held_out_accuracy(tmp_path):
    code = run_in_process("budgetssl-pretrain", *TINY, TINY_BUDGET, "dataset.num_val=64", folder=tmp_path)
    assert code == 0
    record = summary(tmp_path)
    assert record["status"] == "completed" and record["method"] == "supervised"
    assert record["val_images"] == 64 and 0 <= record["val_accuracy"] <= 100
