"""Where the training time goes, in the record: data wait, metering, checkpoints, achieved FLOP/s and MFU
against a peak from the datasheet table, the config or (on CPU) a measurement cached per machine; and
checkpoints written in the background, exactly and atomically."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch

from budgetssl.engine.checkpoint_files import Checkpoints, read_checkpoint
from budgetssl.engine.loop import train
from budgetssl.engine.resume import Timing
from budgetssl.files import DiskFull
from budgetssl.meter import peak
from budgetssl.meter.budget import StepBudget
from conftest import METHOD_NAMES
from test_budget import SETTINGS, Regression, batches


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-PCIE-40GB", "tf32", 156.0),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
        ("NVIDIA H100 80GB HBM3", "tf32", 494.5),
        ("NVIDIA H100 PCIe", "fp16", 756.5),
        ("NVIDIA H100 NVL", "bf16", 835.5),
        ("NVIDIA H200", "bf16", 989.5),
        ("NVIDIA H200", "fp32", 67.0),
        ("NVIDIA H200 NVL", "fp16", 835.5),
    ],
)
def test_the_accelerator_table_gives_dense_datasheet_peaks(name, dtype, tflops):
    found = peak.accelerator_peak(name, dtype)
    assert found.flops_per_s == pytest.approx(tflops * 1e12)
    assert "datasheet" in found.source and f"dense {dtype}" in found.source


def test_an_unknown_accelerator_has_no_peak_and_says_how_to_give_one():
    found = peak.accelerator_peak("Some Accelerator X", "bf16")
    assert found.flops_per_s is None and "train.peak_flops_per_s" in found.source


def test_the_matmul_dtype_follows_the_precision():
    cpu = torch.device("cpu")
    assert peak.matmul_dtype("bf16", cpu) == "bf16" and peak.matmul_dtype("fp32", cpu) == "fp32"


def test_the_cpu_peak_is_measured_once_per_machine_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def measure(dtype, threads, largest=peak.CPU_MATRIX):
        calls.append((dtype, threads))
        return 5e10, 1024

    monkeypatch.setattr(peak, "measure_cpu", measure)
    first = peak.device_peak(torch.device("cpu"), "fp32")
    again = peak.device_peak(torch.device("cpu"), "fp32")
    assert first.flops_per_s == again.flops_per_s == 5e10
    assert len(calls) == 1 and "cached" in again.source and "cached" not in first.source
    assert "1024x1024 fp32" in first.source  # the size measured
    assert peak.cpu_model() in again.source
    (key,) = json.loads((tmp_path / "budgetssl" / "peak_flops.json").read_text())
    assert peak.cpu_model() in key and torch.__version__ in key
    assert f"{torch.get_num_threads()} threads" in key
    assert peak.device_peak(torch.device("cpu"), "fp32", override=1e9).flops_per_s == 1e9  # the config's
    assert len(calls) == 1


def test_a_real_cpu_measurement_is_a_plausible_rate():
    flops, n = peak.measure_cpu("fp32", 1, largest=256)
    assert 1e8 < flops < 1e13 and n == 256


def test_the_measured_product_grows_until_it_takes_long_enough(monkeypatch):
    """A CPU that emulates bf16 is measured on a smaller product than one with bf16 units, instead of
    spending a minute on a 2048 product; a fast product grows to the largest size."""
    monkeypatch.setattr(peak, "CPU_LONG_ENOUGH_S", 0.0)
    assert peak.measure_cpu("fp32", 1, largest=1024)[1] == peak.CPU_START
    monkeypatch.setattr(peak, "CPU_LONG_ENOUGH_S", float("inf"))
    assert peak.measure_cpu("fp32", 1, largest=1024)[1] == 1024


class Slow:
    """Batches that take `seconds` each to arrive."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.batches = seconds, batches()

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.batches)


def test_the_loop_says_where_its_time_went(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints", every=4)
    settings = replace(SETTINGS, log_every=5)
    result = train(Regression(), Slow(0.02), settings, StepBudget(10), checkpoints=checkpoints)
    timing = result.timing
    assert timing is not None
    assert 0.2 <= timing.data < result.wall_seconds
    assert 0.5 < result.data_wait_share < 1  # this task computes almost nothing: it mostly waits
    assert timing.checkpoints == 3  # steps 4 and 8, and the end
    assert 0 < timing.checkpoint < result.wall_seconds
    # The meter's time is the first step's excess over an ordinary step: at most the whole first step
    # (on a loaded machine this tiny task's first step can be no slower than an ordinary one: 0).
    assert timing.first_step > 0 and 0 <= result.meter_seconds <= timing.first_step + timing.probes
    assert result.meter_seconds == timing.meter_seconds(result.wall_seconds, result.steps)


def test_the_meter_is_the_probes_and_what_the_first_step_took_beyond_an_ordinary_one():
    timing = Timing(data=2.0, first_step=1.5, probes=0.25, checkpoint=0.5, monitor=0.5)
    # 11 steps in 13.75 s: 9.0 s outside data, checkpoints, probes, monitors and the first step -> 0.9 s
    # an ordinary step, so the first step's metering took 1.5 - 0.9 s.
    assert timing.meter_seconds(13.75, 11) == pytest.approx(0.25 + 0.6)
    assert timing.meter_seconds(13.75, 1) == 1.75  # no other step: all of it
    assert Timing(first_step=0.1).meter_seconds(10.0, 11) == 0.0  # never below zero


def test_a_background_checkpoint_writes_the_state_of_its_step(tmp_path):
    """Training changes the weights in place right after a save: the file still holds them as saved."""
    checkpoints = Checkpoints(tmp_path, config={"a": 1})
    weight = torch.zeros(1000)
    base = {"spent": 0, "plan": {}, "optimizer": {}}
    checkpoints.save({**base, "step": 1, "model": {"w": weight}})
    weight.add_(1.0)  # the next step, while the write may still be under way
    checkpoints.save({**base, "step": 2, "model": {"w": weight}})  # waits for the first
    checkpoints.wait()
    assert torch.equal(read_checkpoint(tmp_path / "step_000000001.pt")["model"]["w"], torch.zeros(1000))
    assert torch.equal(read_checkpoint(tmp_path / "step_000000002.pt")["model"]["w"], torch.ones(1000))
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_error_writing_in_the_background_is_raised_by_the_next_wait(tmp_path, monkeypatch):
    from budgetssl.engine import checkpoint_files as checkpoint

    def full(path, state):
        raise DiskFull("no space left on the test filesystem")

    monkeypatch.setattr(checkpoint, "write_atomically", full)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save({"step": 1, "spent": 0, "plan": {}, "optimizer": {}, "model": {}})
    with pytest.raises(DiskFull, match="no space left"):
        checkpoints.wait()
    checkpoints.wait()  # raised once


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_meter_counts_what_flop_counter_mode_counts_pass_by_pass_and_part_by_part(method):
    """The meter's own dispatch mode (engine's metered step) against torch's FlopCounterMode on the same
    step, for every method (DINO: a teacher, multi-crop calls of one backbone; MAE: a decoder; CLIP: a text
    tower)."""
    from contextlib import contextmanager

    from torch.utils.flop_counter import FlopCounterMode

    from budgetssl.engine.trainer import Trainer, to_device
    from budgetssl.meter.counter import PassCounter, custom_rules
    from budgetssl.stages.pretrain import build, loop_settings
    from conftest import TINY, run_config, small

    class Reference(PassCounter):
        @contextmanager
        def count(self, name, root=None):
            with FlopCounterMode(display=False, custom_mapping=custom_rules()) as fc:
                yield
            entry = {"total": int(fc.get_total_flops())}
            prefix = type(root).__name__ + "." if root is not None else None
            for key, ops in fc.get_flop_counts().items():
                if prefix and key.startswith(prefix) and "." not in key[len(prefix) :]:
                    entry[key[len(prefix) :]] = int(sum(ops.values()))
            self.passes[name] = entry

    run = run_config(*TINY, *small(method))
    task, stream = build(run)
    trainer = Trainer(task, loop_settings(run))
    batch = to_device(next(stream), trainer.device)
    counted = {}
    for counter in (Reference(), PassCounter()):
        torch.manual_seed(0)  # MAE's masks: the same step twice
        trainer.step(batch, counter, 0.0)
        counted[type(counter).__name__] = counter.passes
    assert counted["PassCounter"] == counted["Reference"]
    assert len(counted["PassCounter"]["forward"]) > 2  # split by part


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_no_training_step_waits_for_the_gpu(method, monkeypatch):
    """Every unmetered step of the real loop (the method's forward and hooks, backward, optimizer) runs
    under CUDA's sync debug mode set to error: an op that makes the host wait for the device (a loss or
    a logged value read, a momentum read back, a boolean mask) fails the step. Reads happen only in
    LossReader.read and in the metrics rows of logged steps, outside the steps checked here."""
    from budgetssl.engine.loop import train
    from budgetssl.engine.trainer import Trainer
    from budgetssl.meter.budget import StepBudget
    from budgetssl.stages.pretrain import build, loop_settings
    from conftest import TINY, run_config, small

    real = Trainer.step

    def checked(self, batch, counter, fraction, before_step_end=None):
        if counter is not None:  # the metered first step plans the budget on the host
            return real(self, batch, counter, fraction, before_step_end)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(self, batch, counter, fraction, before_step_end)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "step", checked)
    run = run_config(*TINY, *small(method), "train.device=cuda", "train.precision=bf16")
    task, batches = build(run)
    result = train(task, batches, loop_settings(run), StepBudget(6))
    assert result.steps == 6 and result.loss_reads == 2  # the first step and the last
