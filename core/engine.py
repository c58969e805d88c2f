"""The MAE pretraining engine: a plain-PyTorch training loop with resumable, atomic checkpoints.

:class:`Trainer` runs ``max_steps`` optimizer steps of masked-autoencoder pretraining over a dataset of
dicts ``{"image": (C, *S) float, "valid": (*S) bool}`` (the domain plugins' ``train_dataset``):

* seeded: data order (a :class:`~torch.utils.data.DistributedSampler` seeded per epoch), augmentation
  (the dataset's ``set_epoch``), and the masks, drawn from a generator seeded by ``(seed, step, rank,
  micro-batch)``, so a run is reproducible and a resumed run continues the uninterrupted one exactly;
* AdamW + warmup/cosine (:mod:`unimae.core.optim`), gradient accumulation and clipping, bf16 autocast
  where the hardware runs it (:mod:`unimae.core.precision`), DDP under ``torchrun``
  (:mod:`unimae.core.distributed`; each rank reads a different shard, only rank 0 writes).

What a run writes (rank 0 only; checkpoints, models, previews and ``config.yaml`` atomically: a
temporary file, then a rename; ``metrics.csv`` is appended and flushed row by row)::

    out_dir/
      config.yaml                       the resolved config of the run (when given one)
      metrics.csv                       step, epoch, loss, pixel, gradient, lr, samples_per_s, time, val_loss
      previews/step_0000500.png         input | masked | reconstruction (middle slice of volumes)
      checkpoints/step_0001000.{safetensors,json}        the model (core.checkpoint format, with contract)
      checkpoints/step_0001000.state.{safetensors,json}  optimizer, scheduler, step, epoch, RNG states
      checkpoints/last.{safetensors,json}                the newest model; its JSON names its state file
      model.{safetensors,json}          the final model (load with core.checkpoint.load_checkpoint)
      tb/                               TensorBoard events, when tensorboard is installed
      sample_indices.json               with ``record_indices``: the sample indices each rank trained on

Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from unimae.core import distributed as du
from unimae.core.checkpoint_io import load_tensors, read_checkpoint_meta, save_checkpoint, save_tensors
from unimae.core.config import check_keys, dump_config
from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path
from unimae.core.losses import mae_loss
from unimae.core.optim import build_optimizer, build_scheduler, param_groups_weight_decay, scaled_lr
from unimae.core.precision import PRECISIONS, autocast, resolve_precision

__all__ = [
    "TrainConfig",
    "Trainer",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "METRIC_FIELDS",
    "mask_generator",
    "seed_everything",
    "read_metrics",
    "save_preview",
]

METRIC_FIELDS = ("step", "epoch", "loss", "pixel", "gradient", "lr", "samples_per_s", "time", "val_loss")
STATE_FORMAT = "unimae-train-state"
_STEP_JSON = re.compile(r"step_(\d+)\.json")
_DEVICES = ("auto", "cpu", "cuda")


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
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


class NonFiniteLossError(InputError):
    """The loss became NaN or Inf (diverged training or bad data); raised on every rank."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training, after a checkpoint of the last completed step was saved."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"checkpoint saved at step {step} ({checkpoint})" if checkpoint else f"stopped at step {step}"
        super().__init__(f"interrupted; {where}; continue with resume=true")
        self.step = step
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------------------
# seeding
# ------------------------------------------------------------------------------------------------
def _mix(*values: int) -> int:
    """A 63-bit seed from non-negative integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1])) & (2**63 - 1)


def mask_generator(seed: int, step: int, rank: int = 0, micro: int = 0) -> torch.Generator:
    """The CPU generator that draws the masks of one micro-batch: a pure function of its arguments."""
    return torch.Generator().manual_seed(_mix(seed, step, rank, micro))


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python ``random``, numpy's global RNG and torch (all devices) from ``(seed, rank)``."""
    s = _mix(seed, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _encode_rng(states: Sequence[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states of every rank as tensors (``rng.{rank}.*``) and JSON scalars."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for rank, st in enumerate(states):
        tensors[f"rng.{rank}.torch"] = st["torch"]
        name, keys, pos, has_gauss, cached = st["numpy"]
        tensors[f"rng.{rank}.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        version, internal, gauss_next = st["python"]
        tensors[f"rng.{rank}.python"] = torch.tensor(internal, dtype=torch.int64)
        for i, t in enumerate(st.get("cuda", [])):
            tensors[f"rng.{rank}.cuda.{i}"] = t
        meta[str(rank)] = {
            "numpy": [name, int(pos), int(has_gauss), float(cached)],
            "python": [int(version), gauss_next],
            "cuda_devices": len(st.get("cuda", [])),
        }
    return tensors, meta


def _restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for ``rank``."""
    m = meta.get(str(rank))
    if m is None or f"rng.{rank}.torch" not in tensors:
        return False
    torch.set_rng_state(tensors[f"rng.{rank}.torch"].to(torch.uint8))
    name, pos, has_gauss, cached = m["numpy"]
    np.random.set_state((name, tensors[f"rng.{rank}.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = m["python"]
    random.setstate((version, tuple(int(v) for v in tensors[f"rng.{rank}.python"].tolist()), gauss_next))
    n_cuda = int(m.get("cuda_devices", 0))
    if n_cuda and torch.cuda.is_available() and n_cuda == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"rng.{rank}.cuda.{i}"].to(torch.uint8) for i in range(n_cuda)])
    return True


# ------------------------------------------------------------------------------------------------
# optimizer state <-> safetensors + JSON
# ------------------------------------------------------------------------------------------------
def _encode_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _decode_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------
# data: an epoch-aware sampler that can resume in the middle of an epoch
# ------------------------------------------------------------------------------------------------
class _EpochSampler(Sampler):
    """Yields ``(epoch, index)`` over this rank's shard of one epoch, after skipping ``skip`` indices.

    Carrying the epoch in each index lets persistent DataLoader workers apply ``set_epoch`` themselves.
    """

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.skip = int(epoch), int(skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in islice(iter(self.base), self.skip, None):
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class _EpochView(Dataset):
    """Index with ``(epoch, index)``: sets the dataset's epoch, returns ``image``, ``valid``, ``index`` and ``keys``.

    ``keys`` are further item keys to pass through when present (e.g. ``label``, ``mask`` for fine-tuning).
    """

    def __init__(self, dataset: Dataset, keys: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.keys = tuple(keys)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = self.dataset[index]
        if not isinstance(item, Mapping) or "image" not in item:
            raise TypeError(f"training datasets must return dicts with an 'image' tensor, got {type(item).__name__}")
        out = {"image": item["image"], "index": torch.tensor(index)}
        for key in ("valid", *self.keys):
            if item.get(key) is not None:
                out[key] = item[key]
        return out


# ------------------------------------------------------------------------------------------------
# metrics: CSV (+ TensorBoard)
# ------------------------------------------------------------------------------------------------
class _MetricsLog:
    """Rows of ``fields`` (default :data:`METRIC_FIELDS`) appended to ``metrics.csv`` (flushed per row), plus TensorBoard.

    On resume the rows after the resumed step (logged after the last checkpoint) are dropped first,
    with an atomic rewrite, so the CSV reads as one uninterrupted run.
    """

    def __init__(
        self, out_dir: Path, *, resume_step: int | None, tensorboard: bool, fields: Sequence[str] = METRIC_FIELDS
    ) -> None:
        self.path = out_dir / "metrics.csv"
        self.fields = tuple(fields)
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
            self._rewrite(kept)
        else:
            self._rewrite([])
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields)
        w.writeheader()
        w.writerows({k: _fmt(r.get(k)) for k in self.fields} for r in rows)
        with atomic_path(self.path) as tmp:
            tmp.write_text(buf.getvalue())

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in self.fields})
        self.file.flush()
        if self.tb is not None:
            step = int(row["step"])
            for k in self.fields:
                if k not in ("step", "epoch", "time") and row.get(k) is not None:
                    self.tb.add_scalar(f"{'val' if k.startswith('val_') else 'train'}/{k}", float(row[k]), step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: resumed runs compare exactly
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv`` as dicts of numbers, every column (empty cells -> None; a torn last line is skipped)."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            try:
                row = {k: (None if v in ("", None) else float(v)) for k, v in raw.items() if k is not None}
                row["step"] = int(row["step"])
                row["epoch"] = int(row["epoch"])
            except (TypeError, ValueError):
                continue
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# previews
# ------------------------------------------------------------------------------------------------
_RGB_WAVELENGTHS = (0.665, 0.560, 0.490)  # µm: red, green, blue (Sentinel-2 B04, B03, B02)


def _display_channels(channels: Sequence[Mapping[str, Any]] | None, n: int) -> list[int]:
    """Three channels as RGB (by wavelength when the bands are optical, else the first three), or one."""
    if n < 3:
        return [0]
    waves = [c.get("wavelength") for c in (channels or [])][:n]
    if len(waves) == n and all(w is not None for w in waves):
        picks = [int(np.argmin([abs(float(w) - target) for w in waves])) for target in _RGB_WAVELENGTHS]
        if len(set(picks)) == 3 and all(abs(float(waves[p]) - t) < 0.05 for p, t in zip(picks, _RGB_WAVELENGTHS)):
            return picks
    return [0, 1, 2]


def _plane(t: torch.Tensor, orientation: str | None) -> np.ndarray:
    """``(C, *S)`` -> ``(C, rows, cols)``: 2D as is; a volume's middle slice along its last axis.

    For ``RAS`` volumes (``(C, I, J, K)``, the CT plugin's model space) that is the axial slice in
    radiological display: patient's right on the viewer's left, anterior at the top.
    """
    t = t.detach().float().cpu()
    if t.ndim == 4:
        t = t[..., t.shape[-1] // 2]  # (C, I, J)
        if orientation == "RAS":
            t = t.flip(1).transpose(1, 2).flip(1)
    return t.numpy()


def save_preview(
    path: str | Path,
    image: torch.Tensor,
    masked: torch.Tensor,
    reconstruction: torch.Tensor,
    *,
    hidden: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    channels: Sequence[Mapping[str, Any]] | None = None,
    orientation: str | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of ``input | masked | reconstruction`` for one ``(C, *S)`` sample (atomically).

    Volumes show the middle slice of their last axis (axial, radiological, for ``orientation="RAS"``).
    Three or more channels are shown as RGB (picked by wavelength for multispectral bands), otherwise
    the first channel in grey. All panels share the input's 1-99 percentile display range over ``valid``
    pixels; invalid pixels are black and ``hidden`` ``(*S)`` (masked-out patches) is grey.
    """
    from matplotlib.figure import Figure

    picks = _display_channels(channels, image.shape[0])
    img, msk, rec = (_plane(t, orientation)[picks] for t in (image, masked, reconstruction))
    shape = img.shape[1:]
    vm = _plane(valid[None], orientation)[0] > 0.5 if valid is not None else np.ones(shape, dtype=bool)
    hid = _plane(hidden[None], orientation)[0] > 0.5 if hidden is not None else np.zeros(shape, dtype=bool)
    ref = img[:, vm] if vm.any() else img.reshape(img.shape[0], -1)
    lo = np.percentile(ref, 1, axis=1)[:, None, None]
    hi = np.percentile(ref, 99, axis=1)[:, None, None]
    scale = np.where(hi - lo > 1e-8, hi - lo, 1.0)

    def show(a: np.ndarray, grey_hidden: bool) -> np.ndarray:
        a = np.clip((a - lo) / scale, 0.0, 1.0) * vm[None]
        if grey_hidden:
            a = np.where(hid[None], 0.5, a)
        return np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0]

    panels = [("input", show(img, False)), ("masked", show(msk, True)), ("reconstruction", show(rec, False))]
    h, w = shape
    fig = Figure(figsize=(3 * 3.2, 3.2 * h / max(w, 1) + 0.5), dpi=100)
    for i, (name, arr) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(arr, cmap=None if arr.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
@dataclass
class _Progress:
    step: int = 0  # completed optimizer steps
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch consumed by completed steps (this process)
    elapsed: float = 0.0  # training seconds over all sessions
    saved_step: int = -1
    window: list[torch.Tensor] = field(default_factory=list)
    window_samples: int = 0
    window_start: float = 0.0
    last_loss: float | None = None


class Trainer:
    """Masked-autoencoder pretraining of ``model`` on ``train_data``.

    Args:
        model: a :class:`~unimae.core.mae.MaskedAutoencoder` (or a module with the same ``forward``
            contract and a ``config`` of constructor arguments, for checkpoints).
        train_data: a dataset of dicts ``{"image": (C, *S), "valid": (*S)}`` of one fixed size, ideally
            with ``set_epoch`` (the plugins' ``TrainingView``).
        config: the :class:`TrainConfig`.
        out_dir: where the run writes (see the module docstring).
        val_data: optional validation dataset of the same kind (``val_every`` / ``val_batches``).
        seed: the run's seed (data order, masks, RNG streams).
        contract: the preprocessing contract stored with every checkpoint (``domain``, ``normalization``,
            ``input_size`` ...); ``spatial_dims``, ``channels``, ``patch_size``, ``mask_ratio``,
            ``masking`` and ``norm_pix`` are filled in from the model when missing.
        resume: False (a fresh run; ``out_dir`` must not hold one), True (continue from
            ``out_dir/checkpoints/last``) or the path of a checkpoint written by this engine.
        run_config: the resolved config, stored in checkpoint metadata for provenance and written to
            ``out_dir/config.yaml``.
        channels: band names of the data's channels, passed to a spectral model's ``forward`` when
            the data's band order differs from the model's (None: the model's own order).
        on_step: called on every rank after each optimizer step as ``on_step(step, metrics)``.
    """

    #: columns of ``metrics.csv`` (subclasses log their own parts and validation metrics)
    metric_fields: tuple[str, ...] = METRIC_FIELDS
    #: item keys besides ``image`` / ``valid`` that training batches carry (fine-tuning: ``label``, ``mask``)
    batch_keys: tuple[str, ...] = ()
    #: the progress bar's label
    progress_desc: str = "pretrain"

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        *,
        config: TrainConfig,
        out_dir: str | Path,
        val_data: Dataset | None = None,
        seed: int = 0,
        contract: Mapping[str, Any] | None = None,
        resume: bool | str | Path = False,
        run_config: Mapping[str, Any] | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        channels: Sequence[str] | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        self.model = model
        self.train_data = train_data
        self.val_data = val_data
        self.config = config
        self.out_dir = Path(out_dir)
        self.seed = int(seed)
        self.contract = dict(contract or {})
        self.resume = resume
        self.run_config = dict(run_config) if run_config is not None else None
        self.on_step = on_step
        self.channels = list(channels) if channels is not None else None
        self.progress = _Progress()
        self._warned_unscored = False
        self.indices: list[int] = []

    # -- setup ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def _setup(self) -> None:
        cfg = self.config
        self.info = du.init_distributed(cfg.device)
        self.device = self.info.device
        self.is_main = self.info.is_main
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        raw = du.unwrap(self.model).to(self.device)
        self.raw = raw
        world = self.info.world_size
        self.effective_batch = cfg.batch_size * cfg.accum_steps * world
        self.lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, self.effective_batch)
        if cfg.min_lr > self.lr:
            raise InputError(f"train.min_lr ({cfg.min_lr:g}) is above the peak lr ({self.lr:g})")
        self.optimizer = build_optimizer(self._param_groups(raw), self.lr, betas=cfg.betas)
        self.scheduler = build_scheduler(
            self.optimizer, warmup_steps=cfg.warmup(), total_steps=cfg.max_steps, lr=self.lr, min_lr=cfg.min_lr
        )
        self._make_loaders()
        resume_step = self._resume_or_start()
        self.model = du.wrap_ddp(raw, self.info)
        self.log = None
        if self.is_main:
            self.log = _MetricsLog(
                self.out_dir, resume_step=resume_step, tensorboard=cfg.tensorboard, fields=self.metric_fields
            )
        if self.is_main and self.run_config is not None:
            with atomic_path(self.out_dir / "config.yaml") as tmp:
                tmp.write_text(dump_config(self.run_config))
        self._preview_item = self._pick_preview()

    def _loader(self, data: Dataset, *, shuffle: bool, drop_last: bool) -> tuple[DataLoader, _EpochSampler]:
        cfg = self.config
        info = self.info
        base = DistributedSampler(
            data, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=self.seed, drop_last=drop_last
        )
        sampler = _EpochSampler(base)
        workers = cfg.num_workers
        if workers is None:
            cpus = os.cpu_count() or 1
            workers = min(8, max(1, cpus // self.info.world_size - 1)) if self.device.type == "cuda" else 0
        loader = DataLoader(
            _EpochView(data, self.batch_keys),
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # keeps the global RNG out of data loading
        )
        return loader, sampler

    def _make_loaders(self) -> None:
        cfg = self.config
        n = len(self.train_data)  # type: ignore[arg-type]
        per_rank = n // self.info.world_size
        if per_rank < cfg.batch_size * cfg.accum_steps:
            raise InputError(
                f"the training data has {n} samples, fewer than one step needs per process "
                f"(batch_size {cfg.batch_size} x accum_steps {cfg.accum_steps} x {self.info.world_size} "
                "process(es)); lower train.batch_size or add data"
            )
        self.loader, self.sampler = self._loader(self.train_data, shuffle=True, drop_last=True)
        self.val_loader = None
        if self.val_data is not None and len(self.val_data) > 0:  # type: ignore[arg-type]
            self.val_loader, val_sampler = self._loader(self.val_data, shuffle=False, drop_last=False)
            val_sampler.set_epoch(0)

    def _param_groups(self, raw: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (AdamW weight decay except on norms, biases and tokens)."""
        return param_groups_weight_decay(raw, self.config.weight_decay)

    def _pick_preview(self) -> dict[str, torch.Tensor] | None:
        if not self.is_main or self.config.preview_every == 0:
            return None
        data = self.val_loader.dataset.dataset if self.val_loader is not None else self.train_data
        return _EpochView(data)[(0, 0)]

    # -- resume ----------------------------------------------------------------------------------
    def _resume_or_start(self) -> int | None:
        """Load model/optimizer/scheduler/progress/RNG when resuming; returns the resumed step or None."""
        last = self.checkpoint_dir / "last.json"
        if self.resume is False or self.resume is None:
            if last.is_file():
                raise InputError(
                    f"{self.out_dir} already holds a run ({last.relative_to(self.out_dir)}); "
                    "pass resume=true to continue it, or choose another out_dir"
                )
            seed_everything(self.seed, self.info.rank)
            return None
        target = last if self.resume is True else Path(self.resume)
        if self.resume is True and not last.is_file():
            raise InputError(f"resume=true but {self.out_dir} has no checkpoint (checkpoints/last.json) to resume")
        meta = read_checkpoint_meta(target)
        state_name = meta.get("train_state")
        model_name = meta.get("checkpoint")
        if not state_name or not model_name:
            raise InputError("not a resumable UniMAE training checkpoint (no train_state in its JSON)", target)
        folder = Path(target).parent
        tensors, _ = load_tensors(folder / model_name, device="cpu")
        try:
            self.raw.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "mismatch"
            raise InputError(
                f"checkpoint does not fit the configured model ({first}); resume with the same model settings",
                folder / model_name,
            ) from None
        state_t, state = load_tensors(folder / state_name, device="cpu")
        if state.get("format") != STATE_FORMAT:
            raise InputError(f"not a training-state file (format {state.get('format')!r})", folder / state_name)
        try:
            self.optimizer.load_state_dict(_decode_optimizer(state_t, state["optimizer"]))
        except (ValueError, KeyError) as err:
            raise InputError(f"optimizer state does not fit the model ({err})", folder / state_name) from None
        p = self.progress
        p.step, p.epoch, p.batches_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])
        self._restore_schedule(state["scheduler"], p.step)
        p.elapsed = float(state.get("elapsed", 0.0))
        p.saved_step = p.step
        if int(state.get("world_size", 1)) != self.info.world_size:
            # the same samples are not re-split mid-epoch across a different number of processes
            p.epoch, p.batches_in_epoch = p.epoch + (1 if p.batches_in_epoch else 0), 0
            if self.is_main:
                print(f"unimae: resuming a {state.get('world_size')}-process run on {self.info.world_size}; "
                      f"starting epoch {p.epoch} afresh")  # fmt: skip
        self._load_extra_state(state.get("extra") or {})
        if not _restore_rng(state_t, state.get("rng", {}), self.info.rank):
            seed_everything(_mix(self.seed, p.step), self.info.rank)
        return p.step

    def _restore_schedule(self, saved: Mapping[str, Any], step: int) -> None:
        """Continue the schedule at ``step`` with this run's settings (peak lr, warmup, ``max_steps``).

        With unchanged settings this reproduces the saved learning rates exactly; a larger
        ``train.max_steps`` (continuing a finished run) stretches the cosine to the new end.
        """
        keep = {k: v for k, v in saved.items() if k not in ("lr_lambdas", "base_lrs", "_last_lr")}
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **keep})
        lrs = [base * fn(step) for base, fn in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, base, lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs, lrs):
            group["initial_lr"], group["lr"] = base, lr
        self.scheduler._last_lr = lrs  # what get_last_lr() reports

    # -- run -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps``; returns ``{"step", "loss", "model", "checkpoint", "out_dir", "rank"}``.

        ``model`` and ``checkpoint`` are the paths rank 0 wrote (None on other ranks).

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (message names the step).
            InputError: bad input data or settings (message names the step when it happens in training).
            TrainingInterrupted: on Ctrl-C, after saving a checkpoint of the last completed step.
        """
        self._setup()
        cfg = self.config
        from tqdm.auto import tqdm

        p = self.progress
        if self.is_main and cfg.progress:
            n_params = sum(t.numel() for t in self.raw.parameters())
            start = f"resuming at step {p.step}" if p.step else "starting"
            print(
                f"unimae: {start}: {n_params / 1e6:.1f}M parameters on {self.device} ({self.precision}), "
                f"effective batch {self.effective_batch}, peak lr {self.lr:.3g}, warmup {cfg.warmup()} of "
                f"{cfg.max_steps} steps; writing to {self.out_dir}",
                file=sys.stderr,
            )
        self.pbar = tqdm(
            total=cfg.max_steps, initial=p.step, desc=self.progress_desc, unit="step", dynamic_ncols=True,
            disable=not (self.is_main and cfg.progress),
        )  # fmt: skip
        p.window_start = time.perf_counter()
        self._session_start = time.perf_counter() - p.elapsed
        try:
            with self._stop_at_step_boundary():
                self._loop()
        except KeyboardInterrupt:
            saved = None
            if p.step > p.saved_step:
                saved = self._save(gather=False)
            raise TrainingInterrupted(p.step, saved) from None
        finally:
            self.pbar.close()
            if self.log is not None:
                self.log.close()
        checkpoint = self._save() if p.step > p.saved_step else self.checkpoint_dir / "last.json"
        checkpoint = checkpoint if self.is_main else None
        model_json = None
        if self.is_main:
            model_json = save_checkpoint(
                self.out_dir / "model", self.raw, contract=self._contract(), step=p.step, epoch=p.epoch,
                config=self.run_config, **self._checkpoint_meta(),
            )  # fmt: skip
        self._write_indices()
        du.barrier()
        return {
            "step": p.step, "loss": p.last_loss, "model": model_json, "checkpoint": checkpoint,
            "out_dir": self.out_dir, "rank": self.info.rank,
        }  # fmt: skip

    @contextlib.contextmanager
    def _stop_at_step_boundary(self) -> Iterator[None]:
        """SIGTERM (a cluster scheduler's preemption notice, ``kill``) and a first Ctrl-C end training at a step
        boundary: the step in flight completes, then the run checkpoints and stops (exit status 130 from the
        CLI); ``resume=true`` continues it. A second Ctrl-C interrupts at once. The handlers only set a flag,
        so an optimizer step is never cut in half. Installed in the main thread only, while training."""
        self._stop_signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self._stop_signal is not None:
                raise KeyboardInterrupt  # the second Ctrl-C
            self._stop_signal = signum
            if signum == signal.SIGINT and self.is_main:
                print("\nunimae: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _check_stop(self) -> None:
        signum = getattr(self, "_stop_signal", None)
        if du.is_distributed():  # every rank stops after the same step, or the others would wait forever
            flag = torch.tensor([float(signum or 0)], device=self.device)
            signum = int(du.all_reduce_max(flag).item()) or None
        if signum is not None:
            raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    def _loop(self) -> None:
        cfg, p = self.config, self.progress
        while p.step < cfg.max_steps:
            self.sampler.set_epoch(p.epoch, skip=p.batches_in_epoch * cfg.batch_size)
            batches = iter(self.loader)
            while p.step < cfg.max_steps:
                micro = list(islice(batches, cfg.accum_steps))
                if len(micro) < cfg.accum_steps:
                    break  # end of the epoch (an incomplete accumulation group is dropped)
                self._train_step(micro)
                self._check_stop()
            else:
                break  # max_steps reached inside the epoch: keep the position for a later resume
            p.epoch += 1
            p.batches_in_epoch = 0

    def _forward_loss(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        image = batch["image"].to(self.device, non_blocking=True)
        valid = batch.get("valid")
        valid = valid.to(self.device, non_blocking=True) if valid is not None else None
        extra = {"channels": self.channels} if self.channels is not None else {}
        with autocast(self.precision, self.device):
            out = model(image, valid=valid, generator=gen, **extra)
        parts = mae_loss(out, norm_pix=self.config.norm_pix, gradient_weight=self.config.gradient_weight)
        if self.progress.step == 0 and model.training:
            self._check_scored(out)
        return parts

    def _check_scored(self, out: Mapping[str, Any]) -> None:
        """Warn once when a batch has no hidden patch inside ``valid``: its loss is 0 and nothing is learnt."""
        scored = out["mask"] if out.get("token_valid") is None else out["mask"] & out["token_valid"]
        if self.is_main and not self._warned_unscored and not bool(scored.any()):
            self._warned_unscored = True
            warnings.warn(
                "no hidden patch of the first batch lies inside the valid region, so its loss is 0: the input "
                "is too small for the patch size or mostly invalid (raise data.input_size or lower model.patch_size)",
                stacklevel=2,
            )

    def _train_step(self, micro: list[dict[str, torch.Tensor]]) -> None:
        cfg, p = self.config, self.progress
        step_index = p.step  # 0-based index of the step being taken
        n = len(micro)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        try:
            for k, batch in enumerate(micro):
                gen = mask_generator(self.seed, step_index, self.info.rank, k)
                sync = self.model.no_sync() if du.is_distributed() and k < n - 1 else contextlib.nullcontext()
                with sync:
                    parts = self._forward_loss(self.model, batch, gen)
                    (parts["loss"] / n).backward()
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float() / n
                if cfg.record_indices:
                    self.indices.extend(int(i) for i in batch["index"])
        except InputError as err:
            raise InputError(f"step {step_index + 1}: {err}") from err
        names = ["loss", *(k for k in sums if k != "loss")]  # MAE: loss, pixel[, gradient]
        values = du.all_reduce_mean(torch.stack([sums[k] for k in names]))
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        if not bool(torch.isfinite(values).all()):
            raise NonFiniteLossError(
                f"the loss became {values[0].item()} at step {step_index + 1} (lr {lr:.3g}); "
                "lower train.lr, set train.clip_grad, or check the data"
            )
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        p.step += 1
        p.batches_in_epoch += n
        p.window.append(values)
        p.window_samples += n * cfg.batch_size * self.info.world_size
        self._after_step(names, lr)

    def _after_step(self, names: list[str], lr: float) -> None:
        cfg, p = self.config, self.progress
        final = p.step == cfg.max_steps
        now = time.perf_counter()  # samples/s counts training only, not validation, previews or saving
        val: dict[str, float] = {}
        if cfg.val_every and (p.step % cfg.val_every == 0 or final) and self._has_validation():
            val = self._validation_metrics()
        metrics: dict[str, Any] = {}
        if p.step % cfg.log_every == 0 or final or val:
            mean = torch.stack(p.window).mean(0).tolist()
            metrics = dict(zip(names, mean))
            metrics.update(
                step=p.step, epoch=p.epoch, lr=lr, **val,
                samples_per_s=p.window_samples / max(now - p.window_start, 1e-9),
                time=now - self._session_start,
            )  # fmt: skip
            p.last_loss = metrics["loss"]
            p.window, p.window_samples, p.window_start = [], 0, now
            if self.log is not None:
                self.log.write(metrics)
            post = {"loss": f"{metrics['loss']:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{metrics['samples_per_s']:.1f}"}
            if val:
                name, value = next(iter(val.items()))
                post[name] = f"{value:.4f}"
            self.pbar.set_postfix(post, refresh=False)
        self.pbar.update(1)
        if self.is_main and cfg.preview_every and (p.step % cfg.preview_every == 0 or final):
            self._preview()
        if p.step % cfg.save_every == 0 and not final:
            self._save()
        p.window_start += time.perf_counter() - now  # leave the time spent here out of the next rate
        if self.on_step is not None:
            self.on_step(p.step, metrics)

    # -- evaluation ------------------------------------------------------------------------------
    def _has_validation(self) -> bool:
        """Whether :meth:`_validation_metrics` has data to run on."""
        return self.val_loader is not None

    def _validation_metrics(self) -> dict[str, float]:
        """The ``val_*`` columns of ``metrics.csv`` at a validation step (pretraining: ``val_loss``)."""
        return {"val_loss": self._validate()}

    @torch.no_grad()
    def _validate(self) -> float:
        """Mean MAE loss over up to ``val_batches`` batches with fixed masks (comparable across steps)."""
        raw = self.raw
        raw.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        try:
            for i, batch in enumerate(self.val_loader):  # type: ignore[arg-type]
                if i >= self.config.val_batches:
                    break
                gen = mask_generator(self.seed, 2**40 + i, self.info.rank, 0)
                total[0] += self._forward_loss(raw, batch, gen)["loss"].double()
                total[1] += 1
        except InputError as err:
            raise InputError(f"validation at step {self.progress.step}: {err}") from err
        finally:
            raw.train()
        if du.is_distributed():
            torch.distributed.all_reduce(total)
        return float(total[0] / total[1].clamp(min=1))

    @torch.no_grad()
    def _preview(self) -> Path | None:
        from unimae.core.mae import reconstruct_image
        from unimae.core.patch_embed import unpatchify

        item = self._preview_item
        if item is None:
            return None
        raw = self.raw
        raw.eval()
        try:
            image = item["image"][None].to(self.device)
            valid = item.get("valid")
            valid_b = valid[None].to(self.device) if valid is not None else None
            extra = {"channels": self.channels} if self.channels is not None else {}
            with autocast(self.precision, self.device):
                out = raw(image, valid=valid_b, generator=mask_generator(self.seed, 2**41, 0, 0), **extra)
            views = reconstruct_image(out, raw.patch_size, norm_pix=self.config.norm_pix)
            tokens = out["mask"].float()[:, :, None, None].expand(-1, -1, 1, math.prod(raw.patch_size))
            crop = tuple(slice(0, s) for s in out["spatial_shape"])
            hidden = unpatchify(tokens, out["grid"], raw.patch_size)[(0, 0, *crop)]
        finally:
            raw.train()
        path = self.out_dir / "previews" / f"step_{self.progress.step:07d}.png"
        return save_preview(
            path, item["image"], views["masked"][0], views["reconstruction"][0], hidden=hidden, valid=valid,
            channels=self._input_channels(), orientation=self.contract.get("orientation"),
            title=f"step {self.progress.step}",
        )  # fmt: skip

    def _input_channels(self) -> list[dict[str, Any]] | None:
        """Descriptions of the data's channels (for choosing preview colours)."""
        known = getattr(self.raw, "channels", None)
        if known is None or self.channels is None:
            return known
        by_name = {c["name"]: c for c in known}
        return [by_name.get(n, {"name": n, "wavelength": None}) for n in self.channels]

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_meta(self) -> dict[str, Any]:
        """Extra JSON entries of every model checkpoint (fine-tuning: task, classes, metrics)."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """JSON state a subclass needs to resume exactly (stored in the training-state file)."""
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_extra_state` when resuming."""

    def _contract(self) -> dict[str, Any]:
        raw = self.raw
        c = dict(self.contract)
        c.setdefault("spatial_dims", getattr(raw, "spatial_dims", None))
        c.setdefault("channels", getattr(raw, "channels", None))
        ps = getattr(raw, "patch_size", None)
        c.setdefault("patch_size", list(ps) if isinstance(ps, (tuple, list)) else ps)
        c.setdefault("mask_ratio", getattr(raw, "mask_ratio", None))
        c.setdefault("masking", getattr(raw, "masking", None))
        c.setdefault("norm_pix", self.config.norm_pix)
        return c

    def _save(self, gather: bool = True) -> Path | None:
        """Write ``step_N`` (model), ``step_N.state`` (training state) and then ``last``; rank 0 only."""
        p = self.progress
        states = du.all_gather_objects(_rng_state()) if gather else [_rng_state()]
        if not self.is_main:
            p.saved_step = p.step
            return None
        folder = self.checkpoint_dir
        name = f"step_{p.step:07d}"
        state_name = f"{name}.state"
        p.elapsed = time.perf_counter() - self._session_start
        extra = dict(step=p.step, epoch=p.epoch, checkpoint=name, train_state=state_name, config=self.run_config)
        save_checkpoint(folder / name, self.raw, contract=self._contract(), **extra, **self._checkpoint_meta())
        opt_t, opt_meta = _encode_optimizer(self.optimizer.state_dict())
        rng_t, rng_meta = _encode_rng(states)
        state_meta = {
            "format": STATE_FORMAT, "version": 1, "step": p.step, "epoch": p.epoch,
            "batches_in_epoch": p.batches_in_epoch, "world_size": self.info.world_size, "seed": self.seed,
            "elapsed": p.elapsed, "lr": self.lr, "optimizer": opt_meta, "scheduler": self.scheduler.state_dict(),
            "rng": rng_meta, "checkpoint": name, "extra": self._extra_state(),
        }  # fmt: skip
        save_tensors(folder / state_name, {**opt_t, **rng_t}, state_meta)
        _link_or_copy(folder / f"{name}.safetensors", folder / "last.safetensors")
        with atomic_path(folder / "last.json") as tmp:
            tmp.write_text((folder / f"{name}.json").read_text())
        self._prune(folder)
        p.saved_step = p.step  # only now: an interrupted save is redone by the Ctrl-C handler
        return folder / "last.json"

    def _prune(self, folder: Path) -> None:
        keep = self.config.keep_last
        if keep <= 0:
            return
        steps = sorted(int(m.group(1)) for f in folder.iterdir() if (m := _STEP_JSON.fullmatch(f.name)))
        for step in steps[:-keep]:
            for f in folder.glob(f"step_{step:07d}.*"):
                f.unlink(missing_ok=True)

    def _write_indices(self) -> None:
        if not self.config.record_indices:
            return
        per_rank = du.all_gather_objects(self.indices)
        if self.is_main:
            with atomic_path(self.out_dir / "sample_indices.json") as tmp:
                tmp.write_text(json.dumps({"world_size": len(per_rank), "ranks": per_rank}))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` the same content as ``src`` (a hard link where possible, else a copy)."""
    import shutil

    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
