"""The transfer protocol's options: heads, frozen backbone, layer-wise lr decay, a FLOP budget, the probe."""

from __future__ import annotations

import json

import pytest
import torch

from budgetssl.backbones.backbone import build_backbone
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.trainer import Trainer
from budgetssl.errors import ConfigError
from budgetssl.readout import segmentation
from budgetssl.stages import transfer as stage
from budgetssl.transfer.finetune import transfer_settings
from budgetssl.transfer.heads import Segmenter
from conftest import TINY, default_settings, run_config, run_in_process, small, summary

pytestmark = pytest.mark.usefixtures("one_thread")


def segmenter(backbone: str, size: int, head: str, **kwargs) -> Segmenter:
    run = run_config(*TINY, f"backbone={backbone}", f"dataset.image_size={size}")
    torch.manual_seed(0)
    return Segmenter(build_backbone(run.backbone, size), head, 6, 255, image_size=size, **kwargs)


@pytest.mark.parametrize(
    ("backbone", "size", "strides"), [("vit_nano", 16, [4, 4, 4, 4]), ("resnet18", 32, [4, 8, 16, 32])]
)
def test_multilevel_head_reads_four_depths_and_predicts_every_pixel(backbone, size, strides):
    model = segmenter(backbone, size, "multilevel")
    x = torch.randn(2, 3, size, size)
    levels = model.backbone(x, readout="levels")
    assert [size // f.shape[-1] for f in levels] == strides
    assert model.logits(x).shape == (2, 6, size, size)


def test_layer_decay_scales_each_vit_block_by_its_depth():
    model = segmenter("vit_nano", 16, "linear", backbone_lr_scale=0.5, layer_decay=0.6)
    scale = {}
    for group in model.param_groups(0.05):
        for p in group["params"]:
            scale[id(p)] = group["lr_scale"]
    vit = model.backbone.model
    depth = len(vit.blocks)
    blocks = [scale[id(block.attn.qkv.weight)] for block in vit.blocks]
    # Each block learns 0.6x as fast as the one above it; the embeddings one step slower still.
    for lower, upper in zip(blocks, blocks[1:], strict=False):
        assert lower == pytest.approx(0.6 * upper)
    assert scale[id(vit.pos_embed)] == pytest.approx(0.6 * blocks[0])
    assert blocks[-1] <= 0.5 and blocks[0] == pytest.approx(blocks[-1] * 0.6 ** (depth - 1))
    assert scale[id(model.head.classify.weight)] == 1.0


def test_frozen_backbone_gets_no_gradient_and_no_optimizer_state():
    model = segmenter("vit_nano", 16, "linear")
    model.backbone.requires_grad_(False)
    trainer = Trainer(
        model, default_settings(Recipe(lr=1e-3, final_lr_ratio=0.1, warmup_fraction=0.0, weight_decay=0.05))
    )
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    batch = {"image": torch.randn(4, 3, 16, 16), "mask": torch.randint(0, 6, (4, 16, 16))}
    trainer.step(batch, None, 0.0)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.backbone.parameters()}


def test_transfer_budget_in_flops_with_the_multilevel_head_and_the_probe(tmp_path):
    code = run_in_process(
        "budgetssl-transfer",
        *TINY,
        "transfer.head=multilevel",
        "transfer.steps=null",
        "transfer.flops=3e9",
        "transfer.probe=true",
        folder=tmp_path,
    )
    assert code == 0
    r = summary(tmp_path)
    assert r["status"] == "completed" and r["transfer_head"] == "multilevel"
    per_step = r["transfer_flops_per_step"]
    assert r["transfer_flops"] <= 3e9 < r["transfer_flops"] + per_step
    assert r["transfer_steps"] == 3e9 // per_step and r["total_flops"] == r["transfer_flops"]
    assert set(r["transfer_flops_breakdown"]["forward"]) >= {"backbone", "head"}
    # The random-init baseline gets the probe too: a linear head trained to convergence on the frozen
    # backbone's features of the training images (readout/segmentation.py), its cost not in total_flops
    # and not bound by the transfer's budget: the feature pass, the head's steps, each epoch's evaluation.
    assert (
        r["method"] == "random_init" and 0 <= r["probe_miou"] <= 100 and 0 <= r["probe_miou_objects"] <= 100
    )
    assert r["probe_flops"] == (
        r["probe_feature_flops"]
        + r["probe_steps"] * r["probe_flops_per_step"]
        + r["probe_epochs"] * r["probe_eval_flops_per_epoch"]
    )
    assert r["probe_flops_per_step"] < per_step and r["probe_images"] == 64  # every training image
    assert r["probe_protocol"]["lr"] in r["probe_protocol"]["lrs"]
    probe = json.loads((tmp_path / r["probe_scores"]).read_text())
    assert probe["head"] == "linear" and probe["freeze_backbone"] and probe["miou"] == r["probe_miou"]
    stages = {json.loads(line)["stage"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"transfer", "probe"}


def test_the_probe_starts_from_the_weights_fine_tuning_started_from(tmp_path, monkeypatch):
    """A ResNet, so that the frozen probe leaving its BatchNorm statistics alone is checked too."""
    run = run_config(*TINY, "backbone=resnet18", "dataset.image_size=32", "transfer.probe=true")
    torch.manual_seed(0)
    backbone = build_backbone(run.backbone, 32)
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def spy(cfg, readout, probed, *args):
        seen["before"] = {k: v.clone() for k, v in probed.state_dict().items()}
        record = segmentation.probe(cfg, readout, probed, *args)
        seen["after"] = {k: v.clone() for k, v in probed.state_dict().items()}
        return record

    monkeypatch.setattr(stage, "probe", spy)
    sections = stage.transfer(run, tmp_path, backbone)
    record, probed = sections["transfer"], sections["probe"]
    assert not all(torch.equal(start[k], v) for k, v in backbone.state_dict().items())  # fine-tuned
    for state in (seen["before"], seen["after"]):
        assert all(torch.equal(start[k], v) for k, v in state.items())
    assert probed is not None and record.transfer_steps == 5 and probed.probe_epochs >= 1
    scores = json.loads((tmp_path / record.transfer_scores).read_text())
    assert scores["background_index"] == 0 and scores["miou_objects"] == record.miou_objects


def test_every_transfer_runs_one_optimizer_whatever_recipe_pretrained_the_backbone():
    runs = {m: run_config(*TINY, *small(m)) for m in ("supervised", "dino", "mae", "clip")}
    assert len({str(run.train) for run in runs.values()}) > 1  # the recipes differ ...
    settings = {m: transfer_settings(run.transfer, run.train) for m, run in runs.items()}
    assert all(s == settings["supervised"] for s in settings.values())  # ... the transfer does not
    s = settings["dino"].recipe
    assert (s.optimizer, s.grad_clip, s.lr, s.weight_decay) == ("adamw", None, 1e-3, 0.01)
    assert s.weight_decay_end is None and s.betas is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["transfer.flops=1e9"], "set exactly one transfer budget"),
        (["transfer.steps=null"], "set exactly one transfer budget"),
        (["transfer.head=upernet"], "transfer.head must be one of"),
        (["transfer.layer_decay=1.5"], "transfer.layer_decay must be in (0, 1]"),
        (["transfer.layer_decay=0.65", "transfer.freeze_backbone=true"], "has no effect"),
        (["transfer.eval_mode=tiles"], "transfer.eval_mode must be one of"),
        (["transfer.eval_mode=slide", "transfer.eval_stride=17"], "transfer.eval_stride must be in [1, "),
        (["transfer.probe=maybe"], "invalid value for 'transfer.probe'"),
    ],
)
def test_bad_transfer_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as info:
        run_config(*TINY, *overrides)
    assert message in str(info.value)
