"""The peak FLOP/s of the device a run trained on, for the record's model FLOP utilisation (`mfu`).

Accelerators: the vendor's datasheet figure for the dtype the matmuls ran in, dense (the datasheets of
the sparsity-capable parts print the 2:4-sparse figure and say the dense one is half of it). CPU: no
datasheet describes the threads a run got, so the peak is measured once, by a large matrix product on
that many threads, and cached per machine (`$XDG_CACHE_HOME/budgetssl/peak_flops.json`, keyed by CPU
model, threads, dtype and torch version). `train.peak_flops_per_s` overrides both. FLOPs count a fused
multiply-add as 2, as the datasheets and the meter do.

The same table prices a sweep before it runs (budgetssl-plan) and what reaching a predicted budget costs
(budgetssl-report, which reads it without loading torch): `plan.device` names an accelerator of it
(ACCELERATORS: h100_sxm, a100, ...), whose peak and board power turn FLOPs into GPU-hours and energy.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from budgetssl.errors import ConfigError
from budgetssl.files import write_json

if TYPE_CHECKING:  # torch is imported where a device is measured: the table alone is read without it
    import torch

A100 = "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"
H100 = "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM, H100 PCIe and H100 NVL columns)"
H200 = "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200: H200 SXM, H200 NVL columns)"
SPARSE = 2  # the datasheets' tensor-core figures are "with sparsity"; dense is half (their footnote)


@dataclass(frozen=True)
class Accelerator:
    """One accelerator of the datasheet table: the name budgetssl-plan's `plan.device` gives it, the part,
    its datasheet, its maximum board power (the datasheet's "Max thermal design power (TDP)", the top of
    a configurable range) and its dense peak FLOP/s by the dtype the matmuls run in."""

    name: str
    part: str
    sheet: str
    watts: float
    peaks: dict[str, float]


# Dense peak FLOP/s by accelerator and dtype; the key is matched in torch.cuda.get_device_name() (lower
# case, first match in this order). Each value as printed in the datasheet named beside it.
PEAKS: dict[str, Accelerator] = {
    "h200 nvl": Accelerator("h200_nvl", "NVIDIA H200 NVL", H200, 600, {
        "fp32": 60e12, "tf32": 835e12 / SPARSE, "bf16": 1671e12 / SPARSE, "fp16": 1671e12 / SPARSE,
    }),
    "h200": Accelerator("h200_sxm", "NVIDIA H200 SXM", H200, 700, {  # also GH200's GPU
        "fp32": 67e12, "tf32": 989e12 / SPARSE, "bf16": 1979e12 / SPARSE, "fp16": 1979e12 / SPARSE,
    }),
    "h100 nvl": Accelerator("h100_nvl", "NVIDIA H100 NVL", H100, 400, {  # TDP 350-400 W
        "fp32": 60e12, "tf32": 835e12 / SPARSE, "bf16": 1671e12 / SPARSE, "fp16": 1671e12 / SPARSE,
    }),
    "h100 pcie": Accelerator("h100_pcie", "NVIDIA H100 PCIe", H100, 350, {  # TDP 300-350 W
        "fp32": 51e12, "tf32": 756e12 / SPARSE, "bf16": 1513e12 / SPARSE, "fp16": 1513e12 / SPARSE,
    }),
    "h100": Accelerator("h100_sxm", "NVIDIA H100 SXM", H100, 700, {
        "fp32": 67e12, "tf32": 989e12 / SPARSE, "bf16": 1979e12 / SPARSE, "fp16": 1979e12 / SPARSE,
    }),
    # Printed dense, beside sparse. Power: the SXM4 module's 400 W (the PCIe cards: 250 W at 40 GB,
    # 300 W at 80 GB).
    "a100": Accelerator("a100", "NVIDIA A100 (SXM4 and PCIe, 40 and 80 GB)", A100, 400, {
        "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12,
    }),
}  # fmt: skip

# budgetssl-plan's names for them (plan.device=h100_sxm), in the table's order.
ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in PEAKS.values()}


def accelerator_named(name: str) -> Accelerator:
    """The accelerator `plan.device` names; a ConfigError listing the valid names for any other."""
    if name not in ACCELERATORS:
        raise ConfigError(
            f"plan.device={name!r} is not in the peak table (meter/peak.py); valid: {', '.join(ACCELERATORS)}"
        )
    return ACCELERATORS[name]


def accelerator_of(device_name: str) -> Accelerator | None:
    """The table's accelerator for a device called `device_name` (torch.cuda.get_device_name, as a
    record's environment holds it): the first key found in its lower-case name, else None."""
    lowered = device_name.lower()
    return next((a for key, a in PEAKS.items() if key in lowered), None)


CPU_MATRIX = 2048  # the largest measured product: (n x n) @ (n x n), 2 n^3 FLOPs
CPU_START = 256  # the first size tried; doubled until one product takes CPU_LONG_ENOUGH_S
# Chosen: long enough that timer and call overhead are under 1% of the product. A CPU without bf16
# units emulates bf16 products: one 2048 product took 50 s on this project's 2-core CI machine, so the
# size stops growing once a product is long enough rather than always being 2048.
CPU_LONG_ENOUGH_S = 0.1
CPU_REPEATS = 3  # after one warm-up; the fastest counts


@dataclass(frozen=True)
class Peak:
    flops_per_s: float | None  # one device (one process on CPU); None: unknown
    source: str  # where the figure came from


def dtype_of(precision: str, tf32: bool) -> str:
    """The dtype a run's matrix products run in: bf16/fp16 under autocast, else TF32 where fp32 matmuls
    may use it (`tf32`), else fp32."""
    if precision in ("bf16", "fp16"):
        return precision
    return "tf32" if tf32 else "fp32"


def matmul_dtype(precision: str, device: torch.device) -> str:
    """The dtype the run's matrix products ran in: bf16/fp16 under autocast, else fp32, or TF32 where
    CUDA was allowed to use it for fp32 matmuls."""
    import torch

    return dtype_of(precision, device.type == "cuda" and torch.get_float32_matmul_precision() != "highest")


def accelerator_peak(name: str, dtype: str) -> Peak:
    """The datasheet's dense peak of the accelerator called `name` (torch.cuda.get_device_name)."""
    found = accelerator_of(name)
    if found is not None:
        return Peak(found.peaks[dtype], f"{found.part}, dense {dtype}: {found.sheet}")
    known = ", ".join(a.part for a in PEAKS.values())
    return Peak(None, f"no peak known for {name!r} (known: {known}); set train.peak_flops_per_s")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "budgetssl" / "peak_flops.json"


def measure_cpu(dtype: str, threads: int, largest: int = CPU_MATRIX) -> tuple[float, int]:
    """FLOP/s of the fastest of a few (n x n) matrix products on `threads` threads, and the n measured:
    n doubles from CPU_START until one product takes CPU_LONG_ENOUGH_S, up to `largest`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kind = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        g = torch.Generator().manual_seed(0)
        n = min(CPU_START, largest)
        while True:
            a, b = (torch.randn(n, n, generator=g).to(kind) for _ in range(2))
            start = time.perf_counter()
            torch.mm(a, b)  # warm-up, and how long one product takes at this size
            if time.perf_counter() - start >= CPU_LONG_ENOUGH_S or 2 * n > largest:
                break
            n *= 2
        best = float("inf")
        for _ in range(CPU_REPEATS):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        return 2 * n**3 / best, n
    finally:
        torch.set_num_threads(previous)


def cpu_peak(dtype: str, threads: int) -> Peak:
    """The measured peak of this machine's CPU on `threads` threads, from the cache when measured before."""
    import torch

    model = cpu_model()
    key = f"{model} | {threads} threads | {dtype} | torch {torch.__version__}"
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    how = f"{dtype} matrix products on {threads} thread(s) of {model}"
    if isinstance(cached.get(key), (int, float)):
        return Peak(float(cached[key]), f"measured ({how}; cached in {path})")
    flops, n = measure_cpu(dtype, threads)
    try:
        write_json(path, {**cached, key: flops})
    except OSError:
        pass  # a read-only cache: measured again next time
    return Peak(flops, f"measured ({n}x{n} {how})")


def device_peak(device: torch.device, precision: str, override: float | None = None) -> Peak:
    """The peak FLOP/s of one training device: `override` (train.peak_flops_per_s) when set, the
    datasheet for an accelerator, a measurement (cached) for the CPU on this process's threads."""
    import torch

    dtype = matmul_dtype(precision, device)
    if override is not None:
        return Peak(float(override), f"train.peak_flops_per_s (the run's {dtype} matmuls)")
    if device.type == "cuda":
        return accelerator_peak(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak(dtype, torch.get_num_threads())
    return Peak(None, f"no peak known for device type {device.type}; set train.peak_flops_per_s")
