"""Where a student trains and in which precision: one place for every student type.

    device = resolve_device("auto")            # cuda if present, else mps, else cpu
    with autocast(device, "bf16"):
        loss = model(batch)
    scaler = grad_scaler(device, "fp16")       # loss scaling: fp16 only

Under `accelerate launch` / `torchrun` (WORLD_SIZE > 1) a CUDA process takes the GPU
of its LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from factory.errors import StillhouseError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: DeviceName = "auto") -> torch.device:
    """The torch device for a config's `device`; a device that is not there is a one-line error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise StillhouseError("device: cuda, but torch sees no CUDA GPU here (use device: auto or cpu)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if name == "mps":
        if not _mps_available():
            raise StillhouseError("device: mps, but torch sees no Apple MPS device here (use device: auto or cpu)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise StillhouseError(f"device: {name!r} is not one of auto, cpu, cuda, mps")


def check_precision(device: torch.device, precision: Precision) -> None:
    """Refuse combinations torch cannot run, before any model is loaded."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise StillhouseError(f"precision: {precision!r} is not one of fp32, bf16, fp16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise StillhouseError(f"precision: bf16, but {torch.cuda.get_device_name(device)} has no bf16 (use fp16)")


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """Mixed precision for the forward pass: weights stay fp32, matmuls run in bf16/fp16."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """Loss scaling keeps small fp16 gradients from flushing to zero; a no-op unless precision is fp16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
