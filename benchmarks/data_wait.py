"""How long each method's training, the transfer and the probe wait for data at the demo settings.

For every registered method (the registry's, supervised first; `--methods` picks some) at the CPU demo
sizes (configs/method/cpu/, vit_nano at 16 px, batch 32, the synthetic set, the configured
`train.num_workers` and `train.augment_on` defaults; one torch thread, as `make demo` runs two runs at a
time on two cores), the real batch stream feeds the real loop (engine.loop.train) for
`--steps` steps; the time the loop spends in `next(batches)` (waiting for the next batch) over the loop's
wall time is the share. The record's `data_wait_share` is the same quotient over the whole pretraining.

`transfer`: the same for the fine-tuning of the demo's transfer (its synthetic set, batch 32, the linear
head on a random-init vit_nano: the step of any backbone of that size), its own stream and loop
(transfer/finetune.py training_batches, segmenter). `probe`: the frozen probe's pieces one after the
other (readout/segmentation.py): its views of the `readout.probe_images` training images (loading
included), the feature pass over them, the linear heads' fit; the share is the views' time over the
three's.

usage: python benchmarks/data_wait.py [--steps 60] [--threads 1] [--methods supervised,...]
       [--stages pretrain,transfer,probe] [OVERRIDE ...]
The last line: data_wait_share <method>=<share> ... for every method, then transfer=, probe=.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Iterator
from typing import Any

import torch

from budgetssl.backbones.backbone import build_backbone
from budgetssl.config.compose import compose_config
from budgetssl.engine.distributed import World
from budgetssl.engine.loop import train
from budgetssl.meter.budget import StepBudget
from budgetssl.methods.registry import METHODS
from budgetssl.plugins import check_config
from budgetssl.readout.classify import evenly_spaced, linear_settings
from budgetssl.readout.features import compute_features
from budgetssl.readout.linear import Segmentation, fit_linear
from budgetssl.readout.segmentation import probe_views, read_features
from budgetssl.stages.pretrain import build, loop_settings
from budgetssl.transfer.base import build_segmentation
from budgetssl.transfer.finetune import probe_config, segmenter, training_batches, transfer_settings

DEMO = ["dataset.image_size=16", "train.progress=false", "energy.track=false", "logger.wandb.mode=disabled"]
STAGES = ("pretrain", "transfer", "probe")


class Waited:
    """A batch stream that adds up the seconds its consumer waits in `next`."""

    def __init__(self, batches: Iterator[dict[str, Any]]) -> None:
        self.batches, self.seconds = batches, 0.0

    def __iter__(self) -> Waited:
        return self

    def __next__(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - t0


def waited(batches: Waited, wall: float, steps: int) -> dict[str, float]:
    """The loop's share of `wall` spent waiting for `batches`, and the wait and the step per step, ms."""
    return {
        "share": batches.seconds / wall,
        "wait_ms": 1e3 * batches.seconds / steps,
        "step_ms": 1e3 * wall / steps,
    }


def measure(method: str, steps: int, overrides: list[str]) -> dict[str, float]:
    run = check_config(compose_config([f"method=cpu/{method}", *DEMO, *overrides]))
    task, stream = build(run)
    batches = Waited(stream)
    t0 = time.perf_counter()
    result = train(task, batches, loop_settings(run), StepBudget(steps), label="pretrain")
    out = waited(batches, time.perf_counter() - t0, steps)
    stream.close()  # the loop ends the thread of a stream it is given itself, not one wrapped
    recorded = getattr(result, "data_wait_share", None)  # the loop's own figure, where it keeps one
    if recorded is not None:
        out["recorded"] = recorded
    return out


def measure_transfer(steps: int, overrides: list[str]) -> dict[str, float]:
    run = check_config(compose_config(["+experiment=demo", *DEMO, *overrides]))
    cfg, world = run.transfer, World()
    torch.manual_seed(run.seed)
    train_set = build_segmentation(cfg, "train")
    model = segmenter(cfg, build_backbone(run.backbone, cfg.image_size), train_set.info, world)
    stream = training_batches(cfg, train_set, run.train, run.seed, world)
    batches = Waited(stream)
    t0 = time.perf_counter()
    result = train(model, batches, transfer_settings(cfg, run.train), StepBudget(steps), label="transfer")
    out = waited(batches, time.perf_counter() - t0, steps) | {"recorded": result.data_wait_share}
    stream.close()
    return out


def measure_probe(overrides: list[str]) -> dict[str, float]:
    run = check_config(compose_config(["+experiment=demo", *DEMO, *overrides]))
    cfg, readout = probe_config(run.transfer), run.readout
    torch.manual_seed(run.seed)
    train_set = build_segmentation(cfg, "train")
    info = train_set.info
    model = segmenter(cfg, build_backbone(run.backbone, cfg.image_size), info, World())
    indices = evenly_spaced(len(train_set), readout.probe_images or len(train_set))
    t0 = time.perf_counter()
    cpu = torch.device("cpu")
    chunks = list(probe_views(cfg, train_set, indices, run.seed, readout.batch_size, run.train, cpu))
    t1 = time.perf_counter()

    read = functools.partial(read_features, model)
    features, _ = compute_features(model.backbone, read, [c[0] for c in chunks], cpu)
    t2 = time.perf_counter()
    masks = torch.cat([c[1] for c in chunks])
    settings = linear_settings(readout, readout.probe_batch_size, readout.probe_lrs, model.head.norm.eps)
    fit_linear(features, masks, info.num_classes, Segmentation(info.num_classes, info.ignore_index), settings)
    t3 = time.perf_counter()
    return {
        "share": (t1 - t0) / (t3 - t0),
        "views_ms": 1e3 * (t1 - t0) / len(chunks),
        "features_ms": 1e3 * (t2 - t1) / len(chunks),
        "head_s": t3 - t2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs one per run)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered one)")
    parser.add_argument("--stages", default=",".join(STAGES), help="of " + ", ".join(STAGES))
    args, overrides = parser.parse_known_args()
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        parser.error(f"--stages takes {', '.join(STAGES)}; got {args.stages}")
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} steps={args.steps} overrides={overrides}")
    print(f"{'method':<11}{'wait ms/step':>13}{'step ms':>9}{'share':>8}{'recorded':>10}")
    shares = {}
    every = sorted(METHODS.names(), key=lambda name: (name != "supervised", name))
    methods = (args.methods.split(",") if args.methods else every) if "pretrain" in stages else []
    for method in methods:
        r = measure(method, args.steps, overrides)
        shares[method] = r["share"]
        recorded = f"{r['recorded']:.3f}" if "recorded" in r else "-"
        print(
            f"{method:<11}{r['wait_ms']:>13.2f}{r['step_ms']:>9.2f}{r['share']:>8.3f}{recorded:>10}",
            flush=True,
        )
    if "transfer" in stages:
        r = measure_transfer(args.steps, overrides)
        shares["transfer"] = r["share"]
        print(
            f"{'transfer':<11}{r['wait_ms']:>13.2f}{r['step_ms']:>9.2f}{r['share']:>8.3f}"
            f"{r['recorded']:>10.3f}",
            flush=True,
        )
    if "probe" in stages:
        r = measure_probe(overrides)
        shares["probe"] = r["share"]
        print(
            f"probe: views {r['views_ms']:.1f} ms, feature pass {r['features_ms']:.1f} ms per chunk of "
            f"readout.batch_size; heads' fit {r['head_s']:.2f} s; views' share {r['share']:.3f}",
            flush=True,
        )
    print("data_wait_share " + " ".join(f"{m}={s:.3f}" for m, s in shares.items()))


if __name__ == "__main__":
    main()
