"""What the harness costs beyond the training it measures: the harness's step against a hand-written one.

For every registered method (the registry's; `--methods` picks some) at the CPU demo sizes
(configs/method/cpu/, vit_nano at 16 px, batch 32, one thread as
`make demo` runs), in one process, on the same pre-made batches (data excluded: benchmarks/data_wait.py
measures it), against a plain step: the same task (model and loss), an optimizer of the same class on the
same parameter groups, the same lr schedule, the method's own hooks (EMA teachers, DINO's frozen last
layer) and the recipe's clipping, written out by hand.
- loop overhead (`loop ms`): the real loop (engine.loop.train: pricing, schedules, loss reads, metrics every
  `train.log_every` steps to a temporary file, no checkpoints) run for `--steps` steps after its metered
  first step, its step time minus the time inside Trainer.step, median over `--repeats` runs;
- the update: Trainer.step and the plain step timed one step each in turn (alternating which goes first),
  `--pairs` pairs, medians: on a shared machine a step-by-step alternation is what keeps the load equal;
- `ratio` = (Trainer.step + loop overhead) / plain step; `est` = (plain step + loop overhead + what
  Trainer.step adds on a task with no work, `trainer_overhead_ms`) / plain step: the same ratio from
  the overheads measured where no real work hides them; `loops` cross-checks it with whole loops (the
  real loop against a plain loop reading its loss every `log_every` steps, pairs in alternating order,
  median of the pairs' ratios), noisier where other processes share the cores;
- the meter: a metered step (under the FLOP counter) minus an ordinary one (median over `--repeats`) plus
  the one-image count the record adds (`flops_per_image`), as a share of a 100-step run of harness steps;
  each metered step starts from the counter's memos emptied (meter/counter.py PLANS and COUNTS), as a
  run's first step does in its fresh process, and the one-image count follows it, as in a run.
Times are this process's CPU time by default (`--clock cpu`: on a machine other processes share, wall
time swings by +-30% between identical steps; CPU time does not count the time another process held the
core, and with one torch thread and no data loading it is the steps' own time); `--clock wall` for wall time.

usage: python benchmarks/overhead.py [--steps 10] [--repeats 6] [--pairs 100] [--threads 1] [--methods ...]
The last line: harness_vs_plain=<worst ratio over methods> meter_share=<worst share over methods>
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import budgetssl.engine.loop as loop_module
import budgetssl.meter.counter as counter_module
from budgetssl.config.compose import compose_config
from budgetssl.engine.recipe import clip_per_parameter
from budgetssl.engine.task import StepOutput, Task
from budgetssl.engine.trainer import Trainer, to_device
from budgetssl.meter.budget import StepBudget
from budgetssl.meter.counter import PassCounter, flops_per_image
from budgetssl.methods.registry import METHODS
from budgetssl.plugins import check_config
from budgetssl.record.metrics import MetricsLog
from budgetssl.stages.pretrain import build, loop_settings

DEMO = ["dataset.image_size=16", "train.progress=false", "energy.track=false", "logger.wandb.mode=disabled"]
PREMADE = 8  # batches made once and cycled: both loops see the same ones
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


class Clock:
    """Seconds spent inside a wrapped callable (and how many calls)."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += clock() - t0
                self.calls += 1

        return timed


def harness(task, batches: list[dict[str, Any]], settings, steps: int, folder: Path) -> tuple[float, float]:
    """Seconds per step of the real loop after its metered first step, and of that the seconds per step
    outside Trainer.step (the loop's own overhead)."""
    first_done: list[float] = []
    real_first, real_step = loop_module.first_step, Trainer.step
    work = Clock()

    def first(*args: Any, **kwargs: Any):
        out = real_first(*args, **kwargs)
        first_done.append(clock())
        return out

    timed_step = work.wrap(real_step)

    def step(self, batch, counter, fraction, before_step_end=None):
        if counter is not None:  # the metered step: not part of the steps timed here
            return real_step(self, batch, counter, fraction, before_step_end)
        return timed_step(self, batch, counter, fraction, before_step_end)

    loop_module.first_step, Trainer.step = first, step  # type: ignore[method-assign]
    try:
        log = MetricsLog(folder / "metrics.jsonl")
        loop_module.train(
            task, itertools.cycle(batches), settings, StepBudget(steps + 1), log, label="pretrain"
        )
        end = clock()
    finally:
        loop_module.first_step, Trainer.step = real_first, real_step  # type: ignore[method-assign]
    total = end - first_done[0]
    return total / steps, (total - work.seconds) / steps


class Plain:
    """A minimal hand-written training step doing the harness step's work: the same task (model and
    loss), an optimizer of the same class on the same parameter groups (so the same implementation:
    for-loop, foreach or fused), the same lr schedule, the method's own hooks and the recipe's clipping."""

    def __init__(self, task, trainer: Trainer) -> None:
        self.task, self.recipe = task, trainer.recipe
        self.optimizer = type(trainer.optimizer)([dict(g) for g in trainer.optimizer.param_groups])
        self.params = [p for p in task.parameters() if p.requires_grad]

    def step(self, batch: dict[str, Any], fraction: float) -> torch.Tensor:
        task, recipe = self.task, self.recipe
        lr = recipe.lr_at(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        task.on_step_start(fraction)
        out = task(batch)
        out.loss.backward()
        task.on_after_backward(fraction)
        if recipe.grad_clip is not None:
            if recipe.grad_clip_mode == "per_param":
                clip_per_parameter(self.params, recipe.grad_clip)  # DINO's clip, as the recipe states it
            else:
                torch.nn.utils.clip_grad_norm_(self.params, recipe.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        task.on_step_end(fraction)
        return out.loss.detach()


def plain_loop(plain: Plain, batches: list[dict[str, Any]], steps: int, log_every: int) -> float:
    """Seconds per step of a hand-written loop: the plain step, the loss read every `log_every` steps."""
    t0 = clock()
    for i in range(steps):
        loss = plain.step(batches[i % len(batches)], i / max(1, steps - 1))
        if i == 0 or (i + 1) % log_every == 0 or i == steps - 1:
            float(loss)
    return (clock() - t0) / steps


def interleaved(
    trainer: Trainer, plain: Plain, batches: list[dict[str, Any]], pairs: int
) -> tuple[float, float]:
    """Median seconds of the harness's update (Trainer.step) and of the plain step, timed one step
    each in turn (in alternating order) on the same batch, so both see the same load."""
    ours, theirs = [], []
    for i in range(pairs):
        batch, fraction = batches[i % len(batches)], 0.5
        for which in ("harness", "plain") if i % 2 == 0 else ("plain", "harness"):
            t0 = clock()
            if which == "harness":
                trainer.step(batch, None, fraction)
                ours.append(clock() - t0)
            else:
                plain.step(batch, fraction)
                theirs.append(clock() - t0)
    return statistics.median(ours), statistics.median(theirs)


class Tiny(Task):
    """A task with next to no work (one 8x4 linear layer): what Trainer.step adds to a step shows."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 4)

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        return StepOutput(((self.layer(batch["x"]) - batch["y"]) ** 2).mean())


def trainer_overhead(settings, pairs: int) -> float:
    """Seconds Trainer.step takes beyond the plain step on a task with next to no work (medians of
    `pairs` steps each, timed in turn): the update's own machinery, free of the noise of real work."""
    task = Tiny()
    trainer = Trainer(task, settings)
    batches = [{"x": torch.randn(16, 8), "y": torch.randn(16, 4)} for _ in range(PREMADE)]
    ours, theirs = interleaved(trainer, Plain(task, trainer), batches, pairs)
    return ours - theirs


def meter_cost(trainer: Trainer, batch: dict[str, Any], repeats: int) -> float:
    """Median seconds a metered step (under the FLOP counter, memos empty) costs beyond an unmetered one."""
    extra = []
    for _ in range(repeats):
        counter_module.PLANS.clear()  # what the counter learns of ops and shapes: a run learns it once
        counter_module.COUNTS.clear()
        t0 = clock()
        trainer.step(batch, PassCounter(), 0.5)
        t1 = clock()
        trainer.step(batch, None, 0.5)
        t2 = clock()
        extra.append((t1 - t0) - (t2 - t1))
    return statistics.median(extra)


def measure(
    method: str, steps: int, repeats: int, pairs: int, folder: Path, update: float
) -> dict[str, float]:
    run = check_config(compose_config([f"method=cpu/{method}", *DEMO]))
    task, stream = build(run)
    settings = loop_settings(run)
    trainer = Trainer(task, settings)  # the harness's update, and the plain step's optimizer groups
    plain = Plain(task, trainer)
    task.train()
    batches = [to_device(next(stream), trainer.device) for _ in range(PREMADE)]
    plain_loop(plain, batches, 3, settings.log_every)  # warm-up
    loops, own, p = [], [], []
    for i in range(repeats):  # whole loops, pairs in alternating order
        for which in ("harness", "plain") if i % 2 == 0 else ("plain", "harness"):
            gc.collect()
            if which == "harness":
                step, overhead = harness(task, batches, settings, steps, folder)
                loops.append(step)
                own.append(overhead)
            else:
                p.append(plain_loop(plain, batches, steps, settings.log_every))
    gc.collect()
    trainer_step, plain_step = interleaved(trainer, plain, batches, pairs)
    loop_overhead = statistics.median(own)
    meter = meter_cost(trainer, batches[0], repeats)
    t0 = clock()
    flops_per_image(task.backbone, run.dataset.image_size)  # type: ignore[arg-type]
    meter += clock() - t0
    harness_step = trainer_step + loop_overhead
    return {
        "harness_ms": 1e3 * harness_step,
        "plain_ms": 1e3 * plain_step,
        "ratio": harness_step / plain_step,
        "estimate": (plain_step + update + loop_overhead) / plain_step,
        "loop_overhead_ms": 1e3 * loop_overhead,
        "loop_ratio": statistics.median(a / b for a, b in zip(loops, p, strict=True)),
        "meter_ms": 1e3 * meter,
        "meter_share": meter / (100 * harness_step + meter),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per whole loop")
    parser.add_argument("--repeats", type=int, default=6, help="pairs of whole loops; metered steps")
    parser.add_argument("--pairs", type=int, default=100, help="pairs of single steps, timed in turn")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs one per run)")
    parser.add_argument(  # every registered method, as benchmarks/data_wait.py asks the registry
        "--methods", default=",".join(sorted(METHODS.names(), key=lambda name: (name != "supervised", name)))
    )
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: this process's CPU time")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    columns = [("harness ms", 11), ("plain ms", 10), ("ratio", 7), ("est", 7), ("loop ms", 9), ("loops", 7)]
    columns += [("meter ms", 10), ("meter %", 9)]
    settings = f"threads={args.threads} steps={args.steps} repeats={args.repeats} pairs={args.pairs}"
    print(f"{settings} clock={args.clock}")
    print("method".ljust(11) + "".join(name.rjust(width) for name, width in columns))
    results = {}
    first = check_config(compose_config([f"method=cpu/{args.methods.split(',')[0]}", *DEMO]))
    update = trainer_overhead(loop_settings(first), 20 * args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            r = results[method] = measure(method, args.steps, args.repeats, args.pairs, Path(tmp), update)
            print(
                f"{method:<11}{r['harness_ms']:>11.2f}{r['plain_ms']:>10.2f}{r['ratio']:>7.3f}{r['estimate']:>7.3f}"
                f"{r['loop_overhead_ms']:>9.3f}{r['loop_ratio']:>7.3f}{r['meter_ms']:>10.1f}"
                f"{100 * r['meter_share']:>9.2f}",
                flush=True,
            )
    worst_loop = max(r["loop_overhead_ms"] for r in results.values())
    print(
        f"trainer_overhead_ms={1e3 * update:.3f} (Trainer.step minus the plain step, on a task with no work)"
    )
    print(f"loop_overhead_ms={worst_loop:.3f} (worst method: the loop's step time minus Trainer.step's)")
    worst_ratio = max(r["ratio"] for r in results.values())
    worst_meter = max(r["meter_share"] for r in results.values())
    print(f"harness_vs_plain={worst_ratio:.3f} meter_share={worst_meter:.4f}")


if __name__ == "__main__":
    main()
