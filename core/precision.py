"""Device and precision selection: bf16 autocast where the hardware runs it natively, fp32 otherwise."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from unimae.core.errors import look_up

if TYPE_CHECKING:  # torch is imported on use: PRECISIONS is read by the CLI's argument parsers
    import torch

__all__ = ["PRECISIONS", "cpu_supports_bf16", "default_device", "resolve_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str = "auto", device: torch.device | str | None = None) -> str:
    """``"auto"`` -> ``"bf16"`` on GPUs that support it and on bf16-capable CPUs, else ``"fp32"``."""
    import torch

    look_up(precision, PRECISIONS, what="precision")
    if precision != "auto":
        return precision
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A bf16 autocast context for ``precision="bf16"``, a no-op for fp32."""
    import torch

    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
