"""Device choice and mixed precision (autocast, and a gradient scaler for fp16), and TF32 on CUDA.

bf16 autocast runs on CPU and CUDA; fp16 needs CUDA (its loss scaler guards against underflow). TF32
(Ampere and later) runs fp32 matmuls and convolutions on tensor cores with a 10-bit mantissa and fp32
accumulation; it changes no FLOP count, only how fast and how exactly they are computed.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from budgetssl.engine.distributed import local_device
from budgetssl.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    local = local_device(name)  # under torchrun: this process's own GPU
    if local is not None:
        return local
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def allow_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 for CUDA's fp32 matmuls and cuDNN's fp32 convolutions, process-wide.

    Through torch's float32 matmul precision, which meter/peak.py reads back ("high": TF32 on CUDA),
    leaving the CPU's (oneDNN) fp32 matmuls as they were; cuDNN's convolutions have their own switch.
    """
    cpu_matmuls = torch.backends.mkldnn.matmul.fp32_precision
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.mkldnn.matmul.fp32_precision = cpu_matmuls
    torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"


def set_tf32(enabled: bool, device: torch.device) -> bool:
    """TF32 as `train.tf32` says, on CUDA (and cuDNN's autotuner, which picks the fastest convolution
    algorithm per input shape); whether TF32 is in effect: False on CPU and on GPUs older than Ampere,
    which have no TF32 units."""
    if device.type != "cuda":
        return False
    allow_tf32(enabled)
    torch.backends.cudnn.benchmark = True
    return enabled and torch.cuda.get_device_capability(device)[0] >= 8


class Precision:
    def __init__(self, precision: str, device: torch.device, tf32: bool = True) -> None:
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
        self.precision = precision
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.tf32 = set_tf32(tf32, device)  # what is in effect, for the record

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])
