"""Training throughput on one CUDA GPU: images/s and MFU of supervised ViT-B/16 at 224 in bf16, and of
every method at its reference size (configs/method/<name>.yaml) on ViT-B/16 at 224; and the CUDA FLOP
count of one supervised ViT-B/16 step against the reference, 105.15 GFLOPs per image.

usage: python benchmarks/gpu.py [--batch-size 256] [--method-batch-size 128] [--warmup 5] [--steps 20]
                                [--methods supervised,simclr,...] [--compile] [OVERRIDE ...]

Each case is built as budgetssl-pretrain builds it (the method's own config, train.precision=bf16 and the
GPU path's defaults: TF32, fused AdamW, channels-last where a task slides convolutions, torch.compile with
--compile), draws one batch from the method's views and keeps it on the GPU (the data path is
benchmarks/data_wait.py's subject), meters one eager step as the training loop does, runs `--warmup`
steps, then times `--steps` steps between two device synchronisations. MFU = FLOPs per step x steps /
seconds / the GPU's dense bf16 peak (meter/peak.py's datasheet table). A case that runs out of memory is
retried at half the batch. One line per case, the FLOP check, then a summary line with every figure.
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from functools import partial

import torch

METHODS = ["supervised", "simclr", "byol", "dino", "mae", "mae_tiny", "clip"]
REFERENCE_STEP_PER_IMAGE = (
    105_147_150_336  # ViT-B/16 at 224, forward + backward (tests/data/reference_flops.json)
)
REFERENCE_FORWARD_PER_IMAGE = 35_126_120_448
MIN_BATCH = 8


def overrides(method: str, batch: int, extra: list[str], compile_: bool) -> list[str]:
    return [
        "backbone=vit_base",
        "dataset.image_size=224",
        f"dataset.num_train={2 * batch}",  # one batch is drawn: no larger synthetic set to render
        f"method={method}",
        f"train.batch_size={batch}",
        "train.precision=bf16",
        "train.device=cuda",
        "train.num_workers=0",
        "train.progress=false",
        "energy.track=false",
        "logger.wandb.mode=disabled",
        f"train.compile={str(compile_).lower()}",
        *extra,
    ]


def run_case(method: str, batch: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """Build, meter one step, warm up, time; the figures of one case."""
    from budgetssl.config.compose import compose_config
    from budgetssl.engine.trainer import Trainer, to_device
    from budgetssl.meter.counter import PassCounter
    from budgetssl.meter.peak import device_peak
    from budgetssl.plugins import check_config
    from budgetssl.stages.pretrain import build, loop_settings

    run = check_config(compose_config(overrides(method, batch, extra, args.compile)))
    task, batches = build(run)
    trainer = Trainer(task, loop_settings(run))
    batch_on_device = to_device(next(batches), trainer.device)
    task.train()
    counter = PassCounter()
    # The metered (eager) first step, as the loop runs it; schedules and EMA teachers told of a plan
    # (1000 steps) before its after-step work, as the loop tells them.
    trainer.step(batch_on_device, counter, 0.0, before_step_end=partial(task.on_plan, 1000))
    for i in range(args.warmup):
        trainer.step(batch_on_device, None, 0.01 * (i + 1))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        loss, _ = trainer.step(batch_on_device, None, 0.1 + 0.8 * i / max(1, args.steps))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = device_peak(trainer.device, "bf16")
    flops = counter.total
    achieved = flops * args.steps / seconds
    result = {
        "method": method,
        "batch": batch,
        "images_per_s": batch * args.steps / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "gflops_per_step": flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak.flops_per_s if peak.flops_per_s else float("nan"),
        "peak_source": peak.source,
        "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "final_loss": float(loss),
        "runtime": trainer.runtime(),
        "breakdown": counter.passes,
    }
    del trainer, task, batches, batch_on_device
    return result


def measured(method: str, batch: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """The case at `batch`, or at half of it (and so on) where the GPU runs out of memory."""
    while True:
        try:
            return run_case(method, batch, args, extra)
        except torch.OutOfMemoryError:
            if batch // 2 < MIN_BATCH:
                raise
            print(f"{method}: out of memory at batch {batch}; retrying at {batch // 2}", flush=True)
            batch //= 2
        finally:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch._dynamo.reset()


def line(case: str, r: dict) -> str:
    return (
        f"{case:<24} batch={r['batch']:<4} images/s={r['images_per_s']:9.1f} step_ms={r['step_ms']:8.1f} "
        f"GFLOPs/step={r['gflops_per_step']:10.1f} TFLOP/s={r['achieved_tflops']:7.1f} mfu={r['mfu']:.3f} "
        f"mem_GB={r['max_memory_gb']:.1f} " + " ".join(f"{k}={v}" for k, v in r["runtime"].items())
    )


def flop_check(r: dict) -> tuple[bool, str]:
    """Supervised ViT-B/16 at 224: one step's FLOPs on CUDA, less the classifier's (its forward and the
    2x of its backward), per image, against the reference forward + backward of the backbone."""
    forward = r["breakdown"]["forward"]
    head = forward.get("head", 0)
    per_image = (sum(p["total"] for p in r["breakdown"].values()) - 3 * head) / r["batch"]
    backbone_forward = forward.get("backbone", 0) / r["batch"]
    ok = abs(per_image / REFERENCE_STEP_PER_IMAGE - 1) < 1e-6
    ok = ok and abs(backbone_forward / REFERENCE_FORWARD_PER_IMAGE - 1) < 1e-6
    return ok, (
        f"flop_check supervised ViT-B/16 224 bf16 on CUDA: {per_image / 1e9:.2f} GFLOPs per image per step "
        f"(reference {REFERENCE_STEP_PER_IMAGE / 1e9:.2f}), backbone forward {backbone_forward / 1e9:.2f} "
        f"(reference {REFERENCE_FORWARD_PER_IMAGE / 1e9:.2f}): {'ok' if ok else 'MISMATCH'}"
    )


def summary(device: str, headline: dict, cases: dict[str, dict], ok: bool, compiled: bool) -> str:
    """The last line: every figure, as key=value."""
    figures = " ".join(
        f"mfu_{m}={r['mfu']:.3f} images_per_s_{m}={r['images_per_s']:.1f}" for m, r in cases.items()
    )
    return (
        f"supervised_vit_b16_bf16_images_per_s={headline['images_per_s']:.1f} "
        f"supervised_vit_b16_bf16_mfu={headline['mfu']:.3f} {figures} "
        f"flop_check={'ok' if ok else 'MISMATCH'} device={device.replace(' ', '_')} compile={compiled}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=256, help="supervised ViT-B/16's headline case")
    parser.add_argument("--method-batch-size", type=int, default=128, help="each method's case")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile, inductor)")
    args, extra = parser.parse_known_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device visible; nothing to measure (run it on a GPU machine)")
        return 0
    name = torch.cuda.get_device_name()
    print(
        f"device: {name}; torch {torch.__version__}; compile={args.compile}; overrides: {extra}", flush=True
    )
    headline = measured("supervised", args.batch_size, args, extra)
    print(line("supervised (headline)", headline), flush=True)
    print(f"peak: {headline['peak_source']}", flush=True)
    ok, check = flop_check(headline)
    print(check, flush=True)
    cases = {}
    for method in [m for m in args.methods.split(",") if m]:
        cases[method] = measured(method, args.method_batch_size, args, extra)
        print(line(method, cases[method]), flush=True)
    print(summary(name, headline, cases, ok, args.compile))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
