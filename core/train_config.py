"""The ``train`` section of a config: :class:`TrainConfig`, checked on construction.

Its own module so that the apps and the fine-tuning config can read and check training settings
without the training loop (:mod:`unimae.core.engine` re-exports it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unimae.core.config import check_keys
from unimae.core.errors import InputError, look_up
from unimae.core.precision import PRECISIONS

__all__ = ["TrainConfig"]

_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """The ``train`` section of a config: every field is a ``train.<name>=value`` override.

    Attributes:
        max_steps: optimizer steps to run; resuming a finished run with a larger value continues it.
        batch_size: samples per process per micro-batch.
        accum_steps: micro-batches accumulated per optimizer step.
        lr: absolute peak learning rate; None scales ``blr`` by the effective batch.
        blr: base learning rate; ``lr = blr * batch_size * accum_steps * world_size / 256`` (MAE).
        min_lr: learning rate at the end of the cosine.
        warmup_steps: linear warmup steps; None = 5% of ``max_steps`` (MAE's 40 of 800 epochs).
        weight_decay: AdamW decoupled weight decay (none on norms, biases and ``no_weight_decay()``).
        betas: AdamW betas.
        clip_grad: clip the gradient norm to this value; None = no clipping.
        precision: ``auto`` (bf16 where the hardware supports it), ``fp32`` or ``bf16``.
        device: ``auto`` (the local GPU if any), ``cpu`` or ``cuda``.
        num_workers: DataLoader worker processes; None = 0 on CPU, up to 8 per GPU.
        norm_pix: reconstruct normalised patches (MAE's target).
        gradient_weight: weight of the gradient-map loss when the model has that branch.
        log_every: steps between rows of ``metrics.csv`` (each row averages the steps since the last).
        preview_every: steps between PNG previews (and one at the end); 0 = none.
        val_every: steps between validation losses (and one at the end) when there is validation data.
        val_batches: most validation batches per evaluation.
        save_every: steps between checkpoints (and one at the end).
        keep_last: numbered checkpoints kept on disk (older ones are deleted); 0 keeps all.
        progress: show a start summary and a progress bar (rank 0).
        tensorboard: also log to ``out_dir/tb`` when tensorboard is installed.
        record_indices: write the sample indices each rank trained on to ``sample_indices.json``.
    """

    max_steps: int = 10_000
    batch_size: int = 64
    accum_steps: int = 1
    lr: float | None = None
    blr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None
    precision: str = "auto"
    device: str = "auto"
    num_workers: int | None = None
    norm_pix: bool = True
    gradient_weight: float = 0.5
    log_every: int = 10
    preview_every: int = 1000
    val_every: int = 1000
    val_batches: int = 16
    save_every: int = 1000
    keep_last: int = 2
    progress: bool = True
    tensorboard: bool = True
    record_indices: bool = False

    def __post_init__(self) -> None:
        self.max_steps = _int("max_steps", self.max_steps, 1)
        self.batch_size = _int("batch_size", self.batch_size, 1)
        self.accum_steps = _int("accum_steps", self.accum_steps, 1)
        self.lr = None if self.lr is None else _float("lr", self.lr, 0.0)
        self.blr = _float("blr", self.blr, 0.0)
        self.min_lr = _float("min_lr", self.min_lr, 0.0)
        if self.warmup_steps is not None:
            self.warmup_steps = _int("warmup_steps", self.warmup_steps, 0)
        self.weight_decay = _float("weight_decay", self.weight_decay, 0.0)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise InputError(f"train.betas must be two numbers like [0.9, 0.95], got {self.betas!r}")
        self.betas = (_float("betas", self.betas[0], 0.0, 1.0), _float("betas", self.betas[1], 0.0, 1.0))
        self.clip_grad = None if self.clip_grad is None else _float("clip_grad", self.clip_grad, 0.0)
        self.precision = look_up(str(self.precision), PRECISIONS, what="train.precision")
        self.device = str(self.device)
        if self.device.split(":")[0] not in _DEVICES:
            look_up(self.device, _DEVICES, what="train.device")
        if self.num_workers is not None:
            self.num_workers = _int("num_workers", self.num_workers, 0)
        self.gradient_weight = _float("gradient_weight", self.gradient_weight, 0.0)
        for name in ("log_every", "val_batches", "save_every"):
            setattr(self, name, _int(name, getattr(self, name), 1))
        for name in ("preview_every", "val_every", "keep_last"):
            setattr(self, name, _int(name, getattr(self, name), 0))
        for name in ("norm_pix", "progress", "tensorboard", "record_indices"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"train.{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TrainConfig:
        """Build from the ``train`` section; an unknown key lists the known ones with a close match."""
        values = dict(values or {})
        check_keys("train", values, cls.keys())
        return cls(**values)

    def warmup(self) -> int:
        """Warmup steps actually used (5% of ``max_steps`` when unset, never more than ``max_steps``)."""
        w = int(round(0.05 * self.max_steps)) if self.warmup_steps is None else self.warmup_steps
        return min(w, self.max_steps)


def _int(name: str, value: Any, low: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or value < low:
        raise InputError(f"train.{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _float(name: str, value: Any, low: float, high: float | None = None) -> float:
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out) or out < low or (high is not None and out >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise InputError(f"train.{name} must be a number {bound}, got {value!r}")
    return out
