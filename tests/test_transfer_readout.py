"""What a transfer head reads is normalised, so the transfer does not favour a backbone for the scale of its
output: a backbone whose read-out is 8x larger fine-tunes, scores and updates its own weights the same."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from budgetssl.backbones.backbone import Backbone, build_backbone
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.trainer import Trainer
from budgetssl.transfer.finetune import finetune
from budgetssl.transfer.heads import Segmenter
from conftest import TINY, default_settings, run_config

FACTOR = 8.0  # about the spread of token RMS across the demo's pretraining methods (0.20 to 1.66)


@pytest.fixture
def double():
    """Double precision: what differs between the runs is then the scale, not float32 rounding, which a
    BatchNorm over a tiny batch and Adam's sign-like first steps amplify (in float32 the ResNet-18 linear
    run's backbone updates differ by 12% between two scales, in float64 by 2e-4)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def backbone(name: str, size: int, factor: float) -> Backbone:
    """A fresh backbone (seed 0) whose every read-out is multiplied by `factor`."""
    run = run_config(*TINY, f"backbone={name}", f"dataset.image_size={size}")
    torch.manual_seed(0)
    model = build_backbone(run.backbone, size)

    def scale(module: Any, args: Any, out: Any) -> Any:
        return [factor * f for f in out] if isinstance(out, list) else factor * out

    model.register_forward_hook(scale)
    return model


def trained(name: str, size: int, head: str, factor: float, readout_norm: bool = True):
    """Three AdamW steps on fixed random batches; then the losses, eval-mode logits and the change of the
    backbone's weights."""
    model = Segmenter(backbone(name, size, factor), head, 6, 255, image_size=size, readout_norm=readout_norm)
    before = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
    trainer = Trainer(
        model, default_settings(Recipe(lr=1e-3, final_lr_ratio=1.0, warmup_fraction=0.0, weight_decay=0.05))
    )
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        batch = {
            "image": torch.randn(4, 3, size, size, generator=gen),
            "mask": torch.randint(0, 6, (4, size, size), generator=gen),
        }
        losses.append(float(trainer.step(batch, None, 0.0)[0]))
    model.eval()
    with torch.no_grad():
        logits = model.logits(torch.randn(2, 3, size, size, generator=gen))
    after = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
    return torch.tensor(losses), logits, after - before


@pytest.mark.parametrize(("name", "size"), [("vit_nano", 16), ("resnet18", 32)])
@pytest.mark.parametrize("head", ["linear", "multilevel"])
def test_scaling_the_backbone_output_changes_nothing(name, size, head, double):
    loss_1, logits_1, update_1 = trained(name, size, head, 1.0)
    loss_8, logits_8, update_8 = trained(name, size, head, FACTOR)
    torch.testing.assert_close(loss_8, loss_1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_8, logits_1, rtol=1e-3, atol=1e-3)
    # The backbone's own updates too: the norm's gradient is 1/8 as large, cancelling the 8. (Element-wise
    # only up to Adam's sign-like first steps on gradients that are zero but for rounding.)
    # Measured: 1.7e-5 (ViT, linear), 1.5e-5 (ViT, multilevel), 2.1e-4 and 3.0e-5 (ResNet-18).
    assert (update_8 - update_1).norm() <= 1e-3 * update_1.norm()


@pytest.mark.parametrize("head", ["linear", "multilevel"])
def test_without_the_normalisation_the_scale_shows(head, double):
    """The heads' own BatchNorm is scale-free in training (batch statistics) but not in evaluation: its
    running statistics start at unit scale and are still partly that after a short fine-tuning."""
    _, logits_1, _ = trained("vit_nano", 16, head, 1.0, readout_norm=False)
    _, logits_8, _ = trained("vit_nano", 16, head, FACTOR, readout_norm=False)
    # Measured: the largest logit moves by 1.2 (linear) and 1.1 (multilevel) against logits of at most 0.6.
    assert (logits_8 - logits_1).abs().max() > 0.5 * logits_1.abs().max()


def test_transfer_scores_do_not_depend_on_the_backbone_scale(tmp_path):
    run = run_config(*TINY)
    records = []
    for factor in (1.0, FACTOR):
        folder = tmp_path / str(factor)
        folder.mkdir()
        records.append(finetune(run.transfer, backbone("vit_nano", 16, factor), run.train, 0, folder))
    one, eight = records
    # Measured (float32): mIoU 5.555 and 5.555, final loss 1.81324 and 1.81324.
    assert eight.transfer_final_loss == pytest.approx(one.transfer_final_loss, rel=1e-4)
    assert eight.miou == pytest.approx(one.miou, abs=0.05)
    assert eight.miou_objects == pytest.approx(one.miou_objects, abs=0.05)
