"""The GPU path, tested here on what runs on CPU: bf16 autocast, torch.compile (FLOPs counted on the
eager step and agreeing with the compiled one), the optimizer's kernels, channels-last, TF32's switches,
the CUDA attention FLOP rules (on meta tensors: no GPU needed), every method's step on CUDA-typed fake
tensors and, where CUDA exists, ViT-B/16's count
under every attention kernel against the reference."""

from __future__ import annotations

import contextlib
import os

import pytest
import timm
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from budgetssl.backbones.backbone import build_backbone
from budgetssl.data.base import build_dataset
from budgetssl.data.loader import IMAGE_SIZE
from budgetssl.engine import trainer as trainer_module
from budgetssl.engine.precision import allow_tf32, set_tf32
from budgetssl.engine.recipe import Recipe
from budgetssl.engine.schedule import Clock
from budgetssl.engine.settings import LoopSettings
from budgetssl.engine.task import Task
from budgetssl.engine.trainer import Trainer, channels_last, optimizer_impl, slides_convolutions, to_device
from budgetssl.meter.counter import PassCounter, custom_rules
from budgetssl.methods.base import build_method
from budgetssl.methods.batched import constant, on_device
from budgetssl.stages.pretrain import build
from budgetssl.transfer.heads import HEADS, Segmenter
from conftest import (
    METHOD_NAMES,
    TINY,
    TINY_BUDGET,
    default_settings,
    run_config,
    run_in_process,
    small,
    summary,
)
from real_step import measure

CUDA = torch.device("cuda")  # a device object needs no GPU
aten = torch.ops.aten
pytestmark = pytest.mark.usefixtures("one_thread")


def bmm(b: int, h: int, s: int, d: int) -> int:
    """One (s x d) @ (d x s) product per head and image, at 2 FLOPs a multiply-add."""
    return 2 * b * h * s * s * d


def count(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=custom_rules()) as fc:
        fn()
    return int(fc.get_total_flops())


@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn"])
def test_cuda_attention_kernels_count_the_unfused_matmuls(kernel):
    """Forward QK^T and AV; backward their four gradient products (torch's own rule adds a fifth, the
    scores recomputed): checked on meta tensors, which run each CUDA op's shape function only."""
    b, h, s, d = 2, 3, 197, 64
    q, k, v, grad = (torch.empty(b, h, s, d, device="meta") for _ in range(4))
    if kernel == "flash":
        out = aten._scaled_dot_product_flash_attention(q, k, v)
        forward = count(lambda: aten._scaled_dot_product_flash_attention(q, k, v))
        o, lse, cq, ck, mq, mk, seed, offset, _ = out
        backward = count(
            lambda: aten._scaled_dot_product_flash_attention_backward(
                grad, q, k, v, o, lse, cq, ck, mq, mk, 0.0, False, seed, offset
            )
        )
    elif kernel == "efficient":
        o, lse, seed, offset = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
        forward = count(lambda: aten._scaled_dot_product_efficient_attention(q, k, v, None, True))
        backward = count(
            lambda: aten._scaled_dot_product_efficient_attention_backward(
                grad, q, k, v, None, o, lse, seed, offset, 0.0, [True, True, True, False], False
            )
        )
    else:
        o, lse, cq, ck, mq, mk, seed, offset, _ = aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True
        )
        forward = count(lambda: aten._scaled_dot_product_cudnn_attention(q, k, v, None, True))
        backward = count(
            lambda: aten._scaled_dot_product_cudnn_attention_backward(
                grad, q, k, v, o, lse, seed, offset, None, cq, ck, mq, mk, 0.0, False
            )
        )
    assert forward == 2 * bmm(b, h, s, d)
    assert backward == 4 * bmm(b, h, s, d) == 2 * forward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the CUDA attention kernels")
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"])
def test_vit_b16_on_cuda_counts_the_reference_flops_under_every_attention_kernel(backend, reference_flops):
    """ViT-B/16 at 224, one image in bf16: forward 35.13 GFLOPs, forward + backward 105.15 (the input
    needs no gradient), whichever kernel SDPA runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ref = reference_flops["vit_base_patch16_224"]
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).cuda()
    x = torch.randn(1, 3, 224, 224, device="cuda")
    counter = PassCounter()
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)), torch.autocast("cuda", dtype=torch.bfloat16):
            with counter.count("forward"):
                out = model(x).float().sum()
            with counter.count("backward"):
                out.backward()
    except RuntimeError as e:  # this GPU (or build) has no such kernel
        pytest.skip(f"{backend} unavailable here: {str(e).splitlines()[0]}")
    assert counter.passes["forward"]["total"] == ref["forward_flops"]
    assert counter.total == ref["forward_backward_flops"]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bf16_autocast_counts_what_fp32_counts(method):
    """Each registered method's step costs the same FLOPs in either precision: the same steps per budget."""
    fp32 = measure(run_config(*TINY, *small(method), "train.batch_size=4", "train.precision=fp32"))
    bf16 = measure(run_config(*TINY, *small(method), "train.batch_size=4", "train.precision=bf16"))
    assert bf16["breakdown"] == fp32["breakdown"] and bf16["flops_per_step"] > 0


def test_fp16_is_refused_on_cpu():
    from budgetssl.engine.precision import Precision
    from budgetssl.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Precision("fp16", torch.device("cpu"))


INDUCTOR = pytest.param(
    "inductor",
    marks=pytest.mark.skipif(
        not os.environ.get("BUDGETSSL_TEST_INDUCTOR"),
        reason="inductor builds C++ kernels (about 2 minutes on 2 CPU cores): set BUDGETSSL_TEST_INDUCTOR=1",
    ),
)


@pytest.fixture
def compile_backend(request, monkeypatch):
    """torch.compile through dynamo and AOTAutograd (`aot_eager`: the graphs inductor compiles, run op by
    op; seconds here), or through inductor itself (torch's default, what train.compile runs) on request."""
    backend = getattr(request, "param", "aot_eager")
    monkeypatch.setattr(trainer_module, "COMPILE_OPTIONS", {"backend": backend})
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()


@pytest.mark.parametrize("compile_backend", ["aot_eager", INDUCTOR], indirect=True)
def test_the_compiled_step_counts_the_flops_of_the_eager_step(compile_backend):
    """The loop meters the eager first step; the steps after it run compiled. Counted under the same
    counter, the compiled forward and backward execute the same matmuls, convolutions and attention
    (inductor calls them as library kernels, which the counter sees)."""
    run = run_config(*TINY, "train.compile=true")
    method, batches = build(run)
    method.train()
    trainer = Trainer(method, LoopSettings.from_train(run.train))
    batch = to_device(next(batches), trainer.device)
    eager = PassCounter()
    trainer.step(batch, eager, 0.0)  # metered: the task itself, eager
    compiled = trainer.model(metered=False)
    assert compiled is not method and isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    compiled(batch).loss.backward()  # compiles
    counter = PassCounter()
    with counter.count("forward"):
        out = compiled(batch)
    with counter.count("backward"):
        out.loss.backward()
    for name in ("forward", "backward"):
        assert counter.passes[name]["total"] == eager.passes[name]["total"] > 0, name


def test_a_compiled_bf16_run_records_how_it_ran(tmp_path, compile_backend):
    settings = [*TINY, *small("supervised"), TINY_BUDGET, "train.compile=true", "train.precision=bf16"]
    assert run_in_process("budgetssl-pretrain", *settings, folder=tmp_path) == 0
    record = summary(tmp_path)
    assert record["steps"] >= 3
    assert (record["precision"], record["compiled"], record["tf32"]) == ("bf16", True, False)
    assert (record["optimizer_impl"], record["channels_last"]) == ("fused", False)  # CPU: AdamW fused


def test_fused_kernels_on_cuda_and_cpu_where_the_optimizer_has_them():
    assert optimizer_impl("adamw", CUDA, fused=True) == ("fused", {"fused": True})
    assert optimizer_impl("sgd", CUDA, fused=True) == ("fused", {"fused": True})
    assert optimizer_impl("adamw", CUDA, fused=False) == ("foreach", {})  # torch's default on CUDA
    assert optimizer_impl("lars", CUDA, fused=True) == ("foreach", {})  # timm's: no fused kernel
    cpu = torch.device("cpu")
    assert optimizer_impl("adamw", cpu, fused=True) == ("fused", {"fused": True})
    assert optimizer_impl("adamw", cpu, fused=False) == ("for-loop", {})
    assert optimizer_impl("lars", cpu, fused=True) == ("for-loop", {})


def test_a_resumed_optimizer_runs_this_run_s_kernels():
    """A checkpoint of a run with fused AdamW resumed by one without (train.fused_optimizer=false): the
    loaded groups do not ask for fused."""
    recipe = Recipe(lr=1e-3, final_lr_ratio=0.1, warmup_fraction=0.0, weight_decay=0.0)
    task = Task()
    task.model = nn.Linear(4, 2)
    trainer = Trainer(task, default_settings(recipe, device="cpu", fused_optimizer=False))
    saved = trainer.state_dict()
    for group in saved["optimizer"]["param_groups"]:
        group["fused"] = True
    trainer.load_state_dict(saved)
    assert all(group["fused"] is None for group in trainer.optimizer.param_groups)


def test_channels_last_is_for_tasks_that_slide_convolutions():
    vit = build_backbone(run_config(*TINY).backbone, 16)
    assert not slides_convolutions(vit)  # a patch embedding: stride = kernel
    assert slides_convolutions(build_backbone(run_config(*TINY, "backbone=resnet18").backbone, 32))
    assert slides_convolutions(Segmenter(vit, "multilevel", 3, 255, image_size=16))  # its 3x3 fusion
    assert not slides_convolutions(Segmenter(vit, "linear", 3, 255, image_size=16))  # 1x1 only
    batch = channels_last({"image": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long)})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["mask"].is_contiguous()


@pytest.fixture
def restore_matmul_precision():
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.conv.fp32_precision = before[1]


def test_tf32_switches_cuda_matmuls_and_convolutions_only(restore_matmul_precision):
    cpu_matmuls = torch.backends.mkldnn.matmul.fp32_precision
    allow_tf32(True)
    assert torch.get_float32_matmul_precision() == "high"  # read back by meter/peak.py
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.mkldnn.matmul.fp32_precision == cpu_matmuls
    allow_tf32(False)
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert set_tf32(True, torch.device("cpu")) is False  # nothing changed on CPU
    assert torch.get_float32_matmul_precision() == "highest"


def fake_cuda(mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
    return mode.from_tensor(tensor).to(CUDA)


def on_fake_cuda(method: str):
    """The registered `method` built at CPU size and planned (on_plan reads once per run, on the host, as the
    loop's planning does after the metered first step), then moved with a batch of its views to CUDA-typed
    fake tensors (torch's FakeTensorMode: no device needed). Inside the mode a tensor the method makes on the
    host and mixes in raises FakeTensorDeviceMismatchError, and a value read back to the host (`.item()`,
    `float(t)`, a data-dependent branch) raises DataDependentOutputException."""
    run = run_config(*TINY, *small(method), "train.num_workers=0")
    task, batches = build(run)
    batch = next(batches)
    task.on_plan(100)
    mode = FakeTensorMode()
    with mode:
        task._apply(lambda t: fake_cuda(mode, t))
        fake = {k: fake_cuda(mode, v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return mode, task, fake


@contextlib.contextmanager
def cuda_bf16_autocast():
    """bf16 autocast on the CUDA dispatch key, as `torch.autocast("cuda", dtype=torch.bfloat16)` turns it
    on: the context manager itself refuses (and warns) where no CUDA driver exists, the dispatch key does
    not, so CUDA-typed fake tensors run through autocast's casts as on a GPU."""
    enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    torch.set_autocast_enabled("cuda", True)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", dtype)


def linear_output_dtypes(module: nn.Module) -> tuple[set[torch.dtype], list]:
    """The dtypes the linear layers inside `module` return (autocast's bf16 ops: layer norms and softmax
    return float32), and the hooks' handles to remove."""
    seen: set[torch.dtype] = set()

    def hook(_module, _args, output):
        seen.add(output.dtype)

    return seen, [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_methods_step_runs_on_cuda_tensors_alone_under_bf16_with_no_host_read(method):
    """Each registered method's step hooks, views' forward, loss and EMA update on CUDA-typed tensors
    under bf16 autocast, as the GPU path runs them (`train.precision=bf16`): the backbone computes in
    bf16, the loss is a finite-shaped scalar on the device. Backward needs a real device."""
    mode, task, fake = on_fake_cuda(method)
    dtypes, handles = linear_output_dtypes(task.backbone)
    try:
        with mode:
            task.train()
            clock = Clock.of(0.3)
            task.on_step_start(clock)
            with cuda_bf16_autocast():
                out = task(fake)
            task.on_step_end(clock)
    finally:
        for handle in handles:
            handle.remove()
    assert out.loss.device.type == "cuda" and out.loss.shape == ()
    assert dtypes == {torch.bfloat16}, f"the backbone's linear layers returned {dtypes} under bf16 autocast"
    assert all(v.device.type == "cuda" for v in out.logs.values() if isinstance(v, torch.Tensor))
    assert {t.device.type for t in (*task.parameters(), *task.buffers())} == {"cuda"}


class CudaDraws:
    """Uniform draws made on the (fake) CUDA device, standing in for batched.Draws, whose generator
    would have to be a CUDA one: torch.Generator(device="cuda") needs a driver, which fake tensors do
    not replace. What the views do with the draws (every op after them) runs as on a GPU."""

    def rows(self, copies: int, per: int):
        def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.rand(copies * per, *shape, dtype=dtype, device=CUDA)

        return rand


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_methods_device_views_run_on_cuda_tensors_alone_with_no_host_read(method):
    """augment_on=device on a GPU: each method's batched views (crops, resampling, jitter, blur,
    solarisation, normalisation) on a CUDA-typed uint8 batch make CUDA tensors only, with no host read
    (a data-dependent branch would raise). Only the draws' generator is not the run's (CudaDraws)."""
    run = run_config(*TINY, *small(method))
    method_ = build_method(run.method, build_backbone(run.backbone, 16), build_dataset(run.dataset).info)
    views = on_device(method_.views())
    if views is None:
        pytest.skip(f"{method}'s views run per sample only (train.augment_on=auto runs them in the loader)")
    mode = FakeTensorMode()
    constant.cache_clear()  # the constants it copies to a device once must be this mode's
    with mode:
        batch = {
            "image": fake_cuda(mode, torch.zeros(4, 3, 16, 16, dtype=torch.uint8)),
            IMAGE_SIZE: fake_cuda(mode, torch.full((4, 2), 16, dtype=torch.int64)),
            "label": fake_cuda(mode, torch.zeros(4, dtype=torch.int64)),
        }
        with torch.no_grad():
            out = views(batch, CudaDraws())
    constant.cache_clear()
    made = [v for v in out.values() if isinstance(v, torch.Tensor)]
    made += [t for v in out.values() if isinstance(v, list) for t in v]
    assert made and all(t.device.type == "cuda" for t in made)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_the_segmenter_s_step_runs_on_cuda_tensors_alone_under_bf16_with_no_host_read(head):
    """The transfer's fine-tuning step (every head) on CUDA-typed tensors under bf16 autocast: the
    backbone's readout, the head, the upsampled logits and the ignore-aware cross-entropy stay on the
    device, with no host read."""
    backbone = build_backbone(run_config(*TINY).backbone, 16)
    model = Segmenter(backbone, head, num_classes=6, ignore_index=255, image_size=16)
    mode = FakeTensorMode()
    with mode:
        model._apply(lambda t: fake_cuda(mode, t))
        batch = {
            "image": fake_cuda(mode, torch.zeros(2, 3, 16, 16)),
            "mask": fake_cuda(mode, torch.zeros(2, 16, 16, dtype=torch.int64)),
        }
        model.train()
        with cuda_bf16_autocast():
            out = model(batch)
    assert out.loss.device.type == "cuda" and out.loss.shape == ()
    assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"cuda"}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_methods_monitor_read_runs_on_cuda_tensors_alone_with_no_host_read(method):
    """What the label-free monitors read of each registered method (its features, embedding, logits), on
    CUDA-typed tensors: the monitors read on the training device between steps."""
    mode, task, _ = on_fake_cuda(method)
    with mode, torch.no_grad():
        task.eval()
        seen = task.monitor_outputs(fake_cuda(mode, torch.zeros(4, 3, 16, 16)))
    assert "features" in seen and all(v.device.type == "cuda" and v.shape[0] == 4 for v in seen.values())
