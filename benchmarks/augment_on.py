"""Where the views should run: per sample in the loader or batched on the device (`train.augment_on`).

For each method at the demo's settings (`+experiment=demo`: 16-px synthetic scenes, batch 32, the
methods' cpu/ configs, vit_nano) this builds the real batch stream twice, augment_on=loader and
augment_on=device, and times in one process, alternating:
- `data ms`: one batch out of the stream (views, collate and, for device, the batched views), with the
  scenes already rendered; rendering is the same for both paths and is printed first, per batch: cold
  (a run's first sight of each scene without the store) and read back from the on-disk store
  (data/sets/synthetic.py SceneCache, a fresh process's memory);
- `samples/s`: of the data path alone;
- `step ms`: one training step on that batch (forward, backward, optimizer; trainer.step, unmetered);
- `data %`: data / (data + step), the share of a step spent waiting for data with num_workers=0.
Medians over `--batches` batches. torch runs `--threads` threads (the demo: 1, two runs on two cores).

usage: python benchmarks/augment_on.py [--batches 20] [--threads 1] [--methods supervised,clip,...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from budgetssl.config.compose import compose_config
from budgetssl.data.base import build_dataset
from budgetssl.data.sets.synthetic import CHUNK, SceneCache, scene
from budgetssl.engine.trainer import Trainer
from budgetssl.plugins import check_config
from budgetssl.stages.pretrain import build, loop_settings

METHODS = ("supervised", "clip", "mae", "dino", "byol", "simclr")
PATHS = ("loader", "device")
# The demo's settings on a 1024-scene stream, every scene rendered before timing.
DEMO = ["+experiment=demo", "dataset.num_train=1024", "train.num_workers=0"]


def render_ms(run, batch_size: int, batches: int = 10) -> tuple[float, float]:
    """Milliseconds to get the scenes of one batch (random indices): rendered, and read from the store
    by a fresh SceneCache (a new process's): the same on either path."""
    d = run.dataset
    indices = torch.randint(0, d.num_train, (batches, batch_size)).tolist()
    start = time.perf_counter()
    for index in indices[0]:
        scene(d.data_seed, "train", index, d.image_size, d.max_objects)
    cold = (time.perf_counter() - start) * 1e3
    with tempfile.TemporaryDirectory() as folder:
        SceneCache(folder=Path(folder))(d.data_seed, "train", 0, d.image_size, d.max_objects)  # the version
        for first in range(0, d.num_train, CHUNK):  # fill the store
            SceneCache(folder=Path(folder)).chunk((d.data_seed, "train", first, d.image_size, d.max_objects))
        fresh = SceneCache(folder=Path(folder))
        start = time.perf_counter()
        for batch in indices:
            for index in batch:
                fresh(d.data_seed, "train", index, d.image_size, d.max_objects)
        stored = (time.perf_counter() - start) * 1e3 / batches
    return cold, stored


def measure(method: str, batches: int) -> dict[str, tuple[float, float]]:
    """{path: (data ms, step ms)} medians over `batches` batches, the paths alternating."""
    streams, trainers, times = {}, {}, {p: ([], []) for p in PATHS}
    for path in PATHS:
        run = check_config(
            compose_config([*DEMO, f"method=cpu/{method}", f"train.augment_on={path}", "train.device=cpu"])
        )
        task, stream = build(run)
        streams[path], trainers[path] = stream, Trainer(task, loop_settings(run))
        trainers[path].step(next(stream), None, 0.0)  # warm up both
    for _ in range(batches):
        for path in PATHS:
            start = time.perf_counter()
            batch = next(streams[path])
            mid = time.perf_counter()
            trainers[path].step(batch, None, 0.5)
            end = time.perf_counter()
            times[path][0].append((mid - start) * 1e3)
            times[path][1].append((end - mid) * 1e3)
    return {p: (statistics.median(d), statistics.median(s)) for p, (d, s) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    run = check_config(compose_config(DEMO))
    batch_size = run.train.batch_size
    # Render every scene the streams will draw, so that both paths time their views alone.
    dataset = build_dataset(run.dataset, "train")
    cold, stored = render_ms(run, batch_size)
    for index in range(len(dataset)):
        dataset[index]
    header = f"{'method':<11}" + "".join(
        f"{f'{p} data ms':>17}{'samples/s':>11}{'step ms':>9}{'data %':>8}" for p in PATHS
    )
    print(
        f"scenes of one batch of {batch_size} (either path): rendered {cold:.1f} ms, "
        f"from the store with a fresh memory cache {stored:.1f} ms"
    )
    print(header)
    print("-" * len(header))
    worst = {p: 0.0 for p in PATHS}
    for method in args.methods.split(","):
        result = measure(method, args.batches)
        cells = ""
        for path in PATHS:
            data, step = result[path]
            share = data / (data + step)
            worst[path] = max(worst[path], share)
            cells += f"{data:>17.1f}{batch_size / data * 1e3:>11.0f}{step:>9.1f}{100 * share:>7.1f}%"
        print(f"{method:<11}{cells}")
    print(" ".join(f"worst_data_share_{p}={worst[p]:.3f}" for p in PATHS))


if __name__ == "__main__":
    main()
