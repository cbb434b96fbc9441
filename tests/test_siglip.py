"""SigLIP (methods/zoo/siglip.py): its loss against open_clip's SigLipLoss (values and gradients, the
temperature's and the bias's included), three whole steps against a reference written from the paper's
Algorithm 1 with torch's AdamW, its metered step against a closed-form count, its recipe at the reference
size, and its refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from budgetssl.engine.recipe import resolve_recipe
from budgetssl.engine.schedule import Clock
from budgetssl.engine.settings import loop_settings
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.errors import ConfigError
from budgetssl.methods.zoo.siglip import siglip_loss
from budgetssl.stages.pretrain import build
from conftest import TINY, run_config, small
from test_method_flops import BATCH, NANO, SIZE, ViT, linear, sizes, step


def pairs(n: int = 8, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings whose pairs are related (text = image + noise), unnormalised."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, d, generator=g)
    return image, image + 0.7 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize(("log_scale", "bias"), [(math.log(10), -10.0), (1.3, -2.5)])
def test_loss_equals_open_clips_siglip_loss_on_values_and_all_gradients(log_scale, bias):
    image, text = pairs()
    ours = [
        x.clone().requires_grad_(True) for x in (image, text, torch.tensor(log_scale), torch.tensor(bias))
    ]
    theirs = [x.detach().clone().requires_grad_(True) for x in ours]
    loss = siglip_loss(*ours)
    loss.backward()
    i, t, s, b = theirs  # open_clip's model normalises and exponentiates before its loss
    reference = SigLipLoss()(F.normalize(i, dim=-1), F.normalize(t, dim=-1), s.exp(), b)
    reference.backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    for mine, ref in zip(ours, theirs, strict=True):
        assert ref.grad.abs().max() > 0 and torch.allclose(mine.grad, ref.grad, rtol=1e-5, atol=1e-7)


def algorithm_1(img_emb, txt_emb, t_prime, b):
    """The paper's Algorithm 1 (Zhai et al. 2023), written out: normalise, t = exp(t'), logits =
    img @ txt.T * t + b, labels = 2 eye(n) - 1, l = -sum(log_sigmoid(labels * logits)) / n."""
    n = img_emb.shape[0]
    zimg = img_emb / img_emb.norm(dim=1, keepdim=True)
    ztxt = txt_emb / txt_emb.norm(dim=1, keepdim=True)
    logits = zimg @ ztxt.T * t_prime.exp() + b
    labels = 2 * torch.eye(n, dtype=logits.dtype) - torch.ones(n, n, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / n


def test_three_steps_equal_algorithm_1_with_torchs_adamw_on_identical_batches():
    """The method's whole step (towers, loss, clipping at norm 1, AdamW with big_vision's decay on
    kernels only, warm-up then cosine) against a copy of its towers trained by the pseudo-code."""
    torch.manual_seed(0)
    run = run_config(*TINY, *small("siglip"), "train.warmup_fraction=0.05")
    model, batches = build(run)
    model.double()  # in float64 a gradient that is 0 in exact arithmetic (the attention's key bias) stays
    # far below AdamW's eps; in float32 its rounding noise is normalised to +-lr and differs by the order
    trainer = Trainer(model, loop_settings(run))
    model.train()
    towers = torch.nn.ModuleDict(
        {"backbone": model.backbone, "image_proj": model.image_proj, "text": model.text}
    )
    ref = copy.deepcopy(towers)
    t_prime = torch.nn.Parameter(model.logit_scale.detach().clone())
    b = torch.nn.Parameter(model.logit_bias.detach().clone())
    exempt = {"backbone.model.pos_embed", "backbone.model.cls_token", "text.positional_embedding"}
    exempt.add("text.token_embedding.weight")  # big_vision decays kernels only
    named = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    decayed = [p for n, p in named if p.ndim >= 2 and n not in exempt]
    rest = [p for n, p in named if not (p.ndim >= 2 and n not in exempt)] + [t_prime, b]
    wd, peak = run.train.weight_decay, resolve_recipe(run.train)["lr"]
    opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
        lr=peak,
        betas=(0.9, 0.95),  # the paper's (Sec. 4.7, App. A)
        eps=1e-8,
    )
    for fraction in (0.1, 0.5, 0.9):
        batch = to_device(next(batches), trainer.device)
        batch["image"] = batch["image"].double()
        trainer.schedule(fraction)
        ours, _ = trainer.step(batch, None, Clock.of(fraction))
        for group in opt.param_groups:  # linear warm-up over 5%, then cosine to 0
            group["lr"] = 0.5 * peak * (1 + math.cos(math.pi * (fraction - 0.05) / 0.95))
        image = ref["image_proj"](ref["backbone"](batch["image"]))
        loss = algorithm_1(image, ref["text"](batch["tokens"]), t_prime, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named] + [t_prime, b], 1.0)
        opt.step()
        opt.zero_grad()
        assert float(ours) == pytest.approx(float(loss), rel=1e-12)
    for (name, mine), (_, theirs) in zip(towers.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(mine, theirs, rtol=0, atol=1e-9), name
    assert torch.allclose(model.logit_scale, t_prime, atol=1e-12) and torch.allclose(
        model.logit_bias, b, atol=1e-12
    )
    assert float(model.logit_bias) != -10.0  # the bias trained


def test_siglip_costs_the_image_and_text_towers_and_one_similarity_product():
    got, m = step(*small("siglip")), sizes("siglip")
    ctx, width, embed = m.context_length, m.text_width, m.embed_dim
    # full attention over the tokens (no causal mask), counted at n^2 as CLIP's causal one is
    text = ViT().blocks(ctx, width, m.text_layers) + linear(width, embed)
    image = NANO.trained(SIZE) + 3 * linear(96, embed)
    similarities = 3 * 2 * BATCH * BATCH * embed  # images x texts once (CLIP computes both directions)
    assert got["flops_per_step"] == BATCH * (image + 3 * text) + similarities
    assert got["breakdown"]["forward"]["text"] == BATCH * text
    assert {"backbone", "text"} <= set(got["breakdown"]["forward"])


def test_reference_recipe_and_model_are_the_papers():
    run = run_config("method=siglip", "backbone=vit_base", "dataset.image_size=224", "train.batch_size=32768")
    recipe = resolve_recipe(run.train)
    assert recipe["lr"] == pytest.approx(1e-3)  # App. C: 0.001 at every batch size
    assert recipe["betas"] == [0.9, 0.95] and recipe["optimizer"] == "adamw"  # Sec. 4.7; App. C Table 7
    # big_vision's decoupled 1e-4 (not scaled by the peak lr) is torch's 1e-4 / lr
    assert recipe["weight_decay"] * recipe["lr"] == pytest.approx(1e-4)
    assert recipe["final_lr_ratio"] == 0.0 and recipe["warmup_fraction"] == pytest.approx(
        200 / 3000, rel=1e-3
    )
    m = run.method
    assert (m.embed_dim, m.text_width, m.text_layers, m.context_length) == (768, 768, 12, 16)  # Sec. 4.2
    model, _ = build(run_config(*TINY, *small("siglip")))
    assert float(model.logit_scale) == pytest.approx(math.log(10)) and float(model.logit_bias) == -10.0
    text = model.text
    assert text.attn_mask is None and text.pool_type == "last" and text.text_projection.bias is not None


def test_temperature_and_bias_train_unclamped_and_stay_out_of_weight_decay():
    torch.manual_seed(0)
    run = run_config(*TINY, *small("siglip"), "train.lr=0.5")  # a large lr moves t' far in one step
    model, batches = build(run)
    trainer = Trainer(model, loop_settings(run))
    model.train()
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    for p in (
        model.logit_scale,
        model.logit_bias,
        model.text.token_embedding.weight,
        model.text.positional_embedding,
    ):
        assert decay[id(p)] == 0
    assert decay[id(model.text.text_projection.weight)] > 0 and decay[id(model.image_proj.weight)] > 0
    with torch.no_grad():
        model.logit_scale.fill_(math.log(200))  # above CLIP's clamp at ln 100
    trainer.schedule(0.5)
    trainer.step(to_device(next(batches), trainer.device), None, Clock.of(0.5))
    assert float(model.logit_scale) > math.log(100)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.init_bias=nan"], "method.init_bias must be a finite number"),
        (["method.init_temperature=0"], "method.init_temperature must be in (0, 1]"),
        (["method.captions=alt_text"], "method.captions must be one of"),
        (["method.text_width=30", "method.text_heads=4"], "divisible by method.text_heads"),
    ],
)
def test_bad_values_are_refused_with_the_fix(overrides, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")
    ):
        run_config(*small("siglip"), *overrides)


def test_images_without_captions_or_labels_are_refused_naming_siglip(tmp_path):
    with pytest.raises(ConfigError, match="method 'siglip' with method.captions=auto"):
        run_config("dataset=image_folder", f"dataset.root={tmp_path}", *small("siglip"))
