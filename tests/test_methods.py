"""Every registered method (conftest.METHOD_NAMES, from the registry) end to end through budgetssl-run and
budgetssl-verify, its teachers and its state; the methods' own schedules, EMA, views and bad input (in this
process: conftest.run_in_process)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from budgetssl.config.schema import Interpolation
from budgetssl.engine.schedule import Clock
from budgetssl.errors import BudgetSSLError, ConfigError
from budgetssl.methods.augment import CropConfig
from budgetssl.methods.captions import CaptionView, pseudo_caption
from budgetssl.methods.ema import EmaTeacher, momentum_at, planned_base_momentum
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.dino import teacher_temp_at
from budgetssl.stages.pretrain import build, loop_settings
from budgetssl.verify.checks import verify
from conftest import (
    METHOD_NAMES,
    TEACHER_METHODS,
    TINY,
    hydra_folder,
    run_config,
    run_in_process,
    same_value,
    small,
    summary,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# A few steps of the machinery, not the recipe, by the config field each setting sets: a method whose config
# has the field gets it, whatever its name. The ViT heads' output batch norm (MoCo v3's) spreads a batch of 16
# over the whole sphere, so the loss of a few steps is too noisy to fall measurably (25 steps at lr 1e-3:
# last/first fifth 1.03 for SimCLR, 0.93 for BYOL; without it 0.77 and 0.67); the heads themselves are tested
# in test_recipes_reference.py. The published teacher (0.996) barely moves in a few steps: a faster start.
SHORT_RUN = {"proj_last_bn": "false", "last_bn": "false", "momentum_rule": "budget_aware"}


def short_run(method: str) -> list[str]:
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).config_class)}
    return [f"method.{key}={value}" for key, value in SHORT_RUN.items() if key in fields]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_method_runs_end_to_end_within_its_budget_its_loss_falls_and_it_verifies(method, tmp_path):
    overrides = [
        *TINY,
        *small(method),
        "budget.flops=2e10",
        "train.log_every=1",  # every step's loss and momentum in metrics.jsonl, read below
        # ... and the monitors on every step: on a small batch (they are checked on their 128 images in
        # test_monitor.py), so that they are not most of a step's time here.
        "train.monitor_images=16",
        *short_run(method),
    ]
    folder = hydra_folder(tmp_path, "run", overrides)
    assert run_in_process("budgetssl-run", *overrides, folder=folder) == 0
    record = summary(folder)
    assert record["status"] == "completed" and record["method"] == method
    assert record["train_flops"] <= record["budget_flops"] < record["train_flops"] + record["flops_per_step"]
    assert record["steps"] == record["planned_steps"] >= 6
    built, _ = build(run_config(*overrides))
    # The meter prices each of the method's parts (its direct submodules), teachers included; a part without
    # parameters (a loss module) runs no matmul or convolution, so no counted FLOPs (meter/counter.py).
    parts = {name for name, part in built.named_children() if any(True for _ in part.parameters())}
    assert set(record["flops_breakdown"]["forward"]) - {"total"} == parts
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stage"] == "pretrain"]
    # The last fifth's mean below the first fifth's. Supervised training on 5 classes starts near chance
    # (ln 5) and in these few steps gets little below it (its learning beyond chance is tested at larger
    # budgets in test_gain_supervised.py); the method's own tuned lr (configs/method/cpu/) for each.
    k = max(3, len(losses) // 5)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses
    assert 0 <= record["miou"] <= 100
    checks = verify(folder)  # budgetssl-verify re-derives the run's cost claims from its own files
    assert [(c.name, c.detail) for c in checks if c.failed] == []
    assert {c.name for c in checks if c.status == "ok"} >= {"flops_per_step", "budget", "weights", "metrics"}
    last = rows[len(losses) - 1]
    if built.teachers():
        cfg = built.cfg
        base = planned_base_momentum(
            cfg.base_momentum, record["planned_steps"], cfg.momentum_rule, cfg.momentum_floor
        )
        momenta = [r["momentum"] for r in rows[: len(losses)]]
        assert momenta[0] == pytest.approx(base) == record["teacher_base_momentum"]  # planned from step 1 on
        assert min(momenta) >= base - 1e-9 and last["momentum"] == pytest.approx(1.0)
        # The record's weight of the random teacher is the product of the momenta the updates used, and
        # under the cosine it is bounded by exp(-(1 - m0') N / 2) (methods/ema.py).
        assert record["teacher_init_weight"] == pytest.approx(math.prod(momenta), rel=1e-9)
        assert 0 <= record["teacher_init_weight"] <= math.exp(-(1 - base) * len(momenta) / 2)
    if "teacher_temp" in rows[0]:  # DINO's warm-up of the teacher's temperature, logged per step
        cfg = built.cfg
        assert rows[0]["teacher_temp"] == pytest.approx(cfg.warmup_teacher_temp)
        assert last["teacher_temp"] == pytest.approx(cfg.teacher_temp)


def test_momentum_and_teacher_temperature_follow_their_schedules():
    assert momentum_at(0.0, 0.996) == pytest.approx(0.996)
    assert momentum_at(0.5, 0.996) == pytest.approx(0.998)
    assert momentum_at(1.0, 0.996) == pytest.approx(1.0)
    assert teacher_temp_at(0.0, 0.04, 0.07, 0.2) == pytest.approx(0.04)
    assert teacher_temp_at(0.1, 0.04, 0.07, 0.2) == pytest.approx(0.055)
    assert teacher_temp_at(0.2, 0.04, 0.07, 0.2) == pytest.approx(0.07)
    assert teacher_temp_at(0.9, 0.04, 0.07, 0.2) == pytest.approx(0.07)
    assert teacher_temp_at(0.0, 0.04, 0.07, 0.0) == pytest.approx(0.07)


def test_ema_teacher_trails_the_student_by_its_momentum():
    student = torch.nn.Linear(3, 2)
    teacher = EmaTeacher({"net": student}, base_momentum=0.9)
    before = teacher.parts["net"].weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update({"net": student})
    assert torch.allclose(teacher.parts["net"].weight, 0.9 * before + 0.1 * student.weight)
    teacher.schedule(1.0)  # momentum 1 at the end of the budget: the teacher stops moving
    frozen = teacher.parts["net"].weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update({"net": student})
    assert torch.equal(teacher.parts["net"].weight, frozen)


def one_step(method_name: str, *extra: str):
    from budgetssl.engine.trainer import Trainer, to_device

    run = run_config(*TINY, *small(method_name), *extra)
    method, batches = build(run)
    trainer = Trainer(method, loop_settings(run))
    method.train()
    trainer.step(to_device(next(batches), trainer.device), None, Clock.of(0.3))
    return method, trainer


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_both_configs_of_every_method_compose_typed_on_its_config_class_and_refuse_an_unknown_key(method):
    """configs/method/<name>.yaml (the reference) and configs/method/cpu/<name>.yaml (the CPU size, which
    extends it) name the method and check on its own config class; a key it does not have is named."""
    for group in (method, f"cpu/{method}"):
        run = run_config(*TINY, f"method={group}")
        assert run.method.name == method and type(run.method) is METHODS.get(method).config_class
    with pytest.raises(ConfigError, match="no_such_key"):
        run_config(*TINY, f"method=cpu/{method}", "+method.no_such_key=1")


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_methods_views_and_initial_weights_are_drawn_from_the_seed(method):
    """The same seed builds the same model and the same first batch of views, bit for bit; another seed
    other views: a run is reproducible from its config."""

    def first(seed: int) -> tuple[dict, dict]:
        task, batches = build(run_config(*TINY, *small(method), "train.num_workers=0", f"seed={seed}"))
        return task.state_dict(), {k: v for k, v in next(batches).items() if isinstance(v, torch.Tensor)}

    (w0, b0), (w1, b1), (_, b2) = first(0), first(0), first(1)
    assert all(same_value(w0[k], w1[k]) for k in w0) and all(torch.equal(b0[k], b1[k]) for k in b0)
    assert any(not torch.equal(b0[k], b2[k]) for k in b0 if b0[k].is_floating_point())


@pytest.mark.parametrize("method_name", TEACHER_METHODS)
def test_nothing_trains_the_teacher_and_the_optimizer_never_sees_it(method_name):
    torch.manual_seed(0)
    method, trainer = one_step(method_name)
    (teacher,) = method.teachers()
    params = list(teacher.parameters())
    assert params and all(p.grad is None and not p.requires_grad for p in params)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in params}
    # Every trainable backbone parameter is optimised (MoCo v3 freezes its ViT's patch projection and
    # position embedding, methods/zoo/mocov3.py; data2vec 2.0's and I-JEPA's
    # position embeddings are fixed).
    trained = [(name, p) for name, p in method.backbone.named_parameters() if p.requires_grad]
    assert trained and all(id(p) in optimized for _, p in trained)
    # After one step at fraction 0.3 the teacher moved towards the student, not onto it.
    m = teacher.momentum_of(0.3)  # its own ramp: BYOL's and DINO's cosine, I-JEPA's linear one
    assert float(teacher.momentum) == pytest.approx(m)
    name, s = trained[0]
    t = dict(teacher.parts["backbone"].named_parameters())[name]
    assert not torch.equal(t, s), name


@pytest.mark.parametrize("method_name", METHOD_NAMES)
def test_schedules_and_ema_state_travel_in_the_state_dict(method_name):
    torch.manual_seed(0)
    trained, _ = one_step(method_name)
    state = trained.state_dict()
    fresh, _ = build(run_config(*TINY, *small(method_name)))
    fresh.load_state_dict(state, strict=True)
    for key, value in state.items():
        assert same_value(fresh.state_dict()[key], value), key
    for name, teacher in trained.named_modules():
        if isinstance(teacher, EmaTeacher):
            assert any(k.startswith(f"{name}.parts.backbone.") for k in state)
            assert float(state[f"{name}.momentum"]) == pytest.approx(teacher.momentum_of(0.3))


def test_dinos_teacher_temperature_and_centre_travel_in_the_state_dict():
    torch.manual_seed(0)
    state = one_step("dino")[0].state_dict()
    assert float(state["teacher_temp"]) == pytest.approx(teacher_temp_at(0.3, 0.04, 0.07, 0.125))
    assert state["center"].abs().sum() > 0  # the centre moved from zero with the teacher's outputs


def test_clip_temperature_is_clamped_after_each_step():
    method, _ = one_step("clip")
    assert "logit_scale" in method.state_dict()
    with torch.no_grad():
        method.logit_scale.fill_(10.0)
    method.on_step_end(0.5)
    assert float(method.logit_scale.detach()) == pytest.approx(math.log(100))


def test_masked_encoding_of_every_patch_in_order_equals_the_full_encoder():
    run = run_config(*TINY, *small("mae"))
    method, _ = build(run)
    backbone = method.backbone.eval()
    x = torch.randn(2, 3, 16, 16)
    every = torch.arange(16).expand(2, 16)
    assert torch.allclose(backbone(x, readout="tokens", keep=every), backbone(x, readout="tokens"), atol=1e-5)
    few = torch.tensor([[0, 5, 9, 15], [3, 4, 8, 12]])
    assert backbone(x, readout="tokens", keep=few).shape == (2, 1 + 4, 96)


def test_captions_pseudo_captions_and_tokens():
    assert pseudo_caption(["circle"]) == "This is a photo of circle"
    assert pseudo_caption(["circle", "ring"]) == "This is a photo of circle and ring"
    names = ("circle", "square", "ring")
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    view = CaptionView(lambda im: im.float(), names, "auto", context_length=12)
    assert view.text({"image": image, "label": 0, "caption": "a red ring"}) == "a red ring"
    assert view.text({"image": image, "label": [0, 2]}) == "This is a photo of circle and ring"
    several = {view.text({"image": image, "caption": ["one", "two", "three"]}) for _ in range(40)}
    assert several == {"one", "two", "three"}  # COCO-style: one of the image's captions per visit
    by_label = CaptionView(lambda im: im.float(), names, "label", context_length=12)
    assert by_label.text({"image": image, "label": 1, "caption": "a red ring"}) == "This is a photo of square"
    out = view({"image": image, "label": 1, "caption": "a red ring and a blue circle"})
    tokens = out["tokens"]
    assert tokens.shape == (12,) and tokens.dtype == torch.long
    assert tokens[0] == 49406 and 49407 in tokens.tolist()  # start and end of text from the BPE vocabulary


def write_images(folder, count: int = 24) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(sub / f"img{i}.png")


def test_self_supervised_pretraining_on_a_folder_of_unlabelled_images(tmp_path):
    write_images(tmp_path / "images")
    code = run_in_process(
        "budgetssl-pretrain",
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'images'}",
        *(o for o in TINY if not o.startswith("dataset.num_train")),
        *small("simclr"),
        "budget.flops=5e9",
        folder=tmp_path / "run",
    )
    assert code == 0
    record = summary(tmp_path / "run")
    assert record["status"] == "completed" and record["dataset"] == "image_folder" and record["steps"] >= 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backbone=resnet18", "method=mae"], "needs a ViT backbone"),
        (["method=mae", "method.mask_ratio=1.0"], "must mask some and keep at least one"),
        (["method=dino", "method.global_crops=0"], "method.global_crops must be >= 1"),
        (["method=dino", "method.local_crop_size=6"], "not a multiple of backbone.patch_size=4"),
        (["method=dino", "method.local_crop_size=64"], "must be in (0, dataset.image_size=16]"),
        (["method=clip", "method.captions=alt_text"], "method.captions must be one of"),
        (["method=clip", "method.text_width=30", "method.text_heads=4"], "divisible by method.text_heads"),
        (["method=simclr", "method.temperature=0"], "method.temperature must be > 0"),
        (["method=byol", "method.base_momentum=1.5"], "method.base_momentum must be in [0, 1]"),
        (
            ["method=dino", "method.freeze_last_layer_fraction=2"],
            "method.freeze_last_layer_fraction must be in",
        ),
        (
            ["method=simclr", "method.interpolation=nearest"],
            "method.interpolation must be one of bilinear, bicubic",
        ),
        (["method=mae", "method.decoder_dim=34", "method.decoder_heads=2"], "must be divisible by 4"),
    ],
)
def test_invalid_method_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        run_config(*TINY, *overrides)
    assert message in str(info.value)


CROPPING = [name for name in METHODS.names() if issubclass(METHODS.get(name).config_class, CropConfig)]


def test_the_methods_that_crop_share_one_crop_config():
    """crop_scale_min and interpolation are CropConfig's fields, written once: no cropping method's config
    declares them again, and the five that crop the whole image (the study's but DINO) use it."""
    assert {"supervised", "mae", "simclr", "byol", "clip"} <= set(CROPPING)
    for name in CROPPING:
        own = inspect.get_annotations(METHODS.get(name).config_class)
        assert not {"crop_scale_min", "interpolation"} & set(own), name


@pytest.mark.parametrize("method", CROPPING)
def test_a_bad_crop_is_refused_naming_the_option_and_the_valid_values(method):
    with pytest.raises(ConfigError) as info:
        run_config(*TINY, f"method={method}", "method.crop_scale_min=0")
    assert "method.crop_scale_min" in str(info.value) and "(0, 1]" in str(info.value)
    with pytest.raises(
        ConfigError, match="method.interpolation must be one of bilinear, bicubic; got 'area'"
    ):
        run_config(*TINY, f"method={method}", "method.interpolation=area")
    run = run_config(*TINY, f"method={method}", "method.crop_scale_min=0.5", "method.interpolation=bicubic")
    assert run.method.crop_scale == (0.5, 1.0) and run.method.interpolation == Interpolation.bicubic


def test_clip_on_images_without_captions_or_labels_is_refused(tmp_path):
    write_images(tmp_path, 2)
    with pytest.raises(ConfigError) as info:
        run_config("dataset=image_folder", f"dataset.root={tmp_path}", "method=clip")
    assert "needs caption or label" in str(info.value) and "image_folder" in str(info.value)


def test_mae_on_a_resnet_exits_non_zero_with_a_failed_record(tmp_path, capsys):
    assert run_in_process("budgetssl-run", *TINY, "backbone=resnet18", "method=mae", folder=tmp_path) == 2
    err = capsys.readouterr().err
    assert "needs a ViT backbone" in err and "backbone=vit_base" in err
    assert summary(tmp_path)["status"] == "failed"


@pytest.mark.parametrize(
    ("setup", "message"),
    [(lambda p: None, "is not a folder"), (lambda p: p.mkdir(), "holds no images")],
)
def test_image_folder_layout_errors(tmp_path, setup, message):
    root = tmp_path / "images"
    setup(root)
    with pytest.raises(BudgetSSLError) as info:
        build(run_config("dataset=image_folder", f"dataset.root={root}", "method=simclr"))
    assert message in str(info.value) and str(root) in str(info.value)
