"""Timing helpers for the benchmarks: CUDA-synchronised wall-clock timing of training steps.

``run_alternating`` runs several training-step variants round-robin in one process (one step of each per
round, the order reversed every other round) and returns each timed step's seconds and those of its optimiser
step (``timed_opt_step``); ``min_median_max`` summarises per-repeat figures.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_opt_step(opt: torch.optim.Optimizer, device: torch.device) -> float:
    """``opt.step()``; returns its seconds (synchronised on CUDA)."""
    sync(device)
    t0 = time.perf_counter()
    opt.step()
    sync(device)
    return time.perf_counter() - t0


def run_alternating(
    variants: dict[str, Callable[[torch.Tensor], Any]],
    make_input: Callable[[int], torch.Tensor],
    warmup: int,
    steps: int,
    device: torch.device,
    log: Callable[[str], None],
    label: str = "",
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Round-robin one step per variant per round (order reversed every other round); returns the timed steps'
    seconds and, per step, the seconds of its optimiser step."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    opt_times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(warmup + steps):
        x = make_input(r)
        sync(device)
        took = {}
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            loss, opt_s = variants[name](x)
            sync(device)
            took[name] = time.perf_counter() - t0
            if not math.isfinite(float(loss)):
                raise RuntimeError(f"{name}: non-finite loss at round {r + 1}")
            if r >= warmup:
                times[name].append(took[name])
                opt_times[name].append(opt_s)
        tag = "warm-up" if r < warmup else "timed"
        log(f"    {label}round {r + 1}/{warmup + steps} ({tag}): " + ", ".join(f"{k} {took[k]:.3f}s" for k in order))
    return times, opt_times


def min_median_max(values: Sequence[float]) -> dict[str, float]:
    """``{"min", "median", "max"}`` of ``values``, rounded to 3 decimals."""
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}
