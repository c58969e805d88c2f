"""Checkpoints of the pretraining engine: resuming a run and saving, pruning and indexing its checkpoints.

:class:`CheckpointsMixin` is the part of :class:`~unimae.core.engine.Trainer` that reads and writes
``out_dir/checkpoints`` (the layout is in :mod:`unimae.core.engine`'s docstring): ``step_N`` (the model, in the
:mod:`unimae.core.checkpoint_io` format with its contract), ``step_N.state`` (optimizer, scheduler, progress,
RNG states; nothing pickled), ``last`` (the newest of them), and ``sample_indices.json``. It uses the trainer's
attributes set up in ``Trainer._setup`` (``raw``, ``optimizer``, ``scheduler``, ``progress``, ``info``,
``is_main``, ``config``, ``seed``, ``out_dir``, ``resume``, ``run_config``, ``contract``, ``indices``).
Subclasses add to what is stored through :meth:`~CheckpointsMixin._checkpoint_meta`,
:meth:`~CheckpointsMixin._extra_state` and :meth:`~CheckpointsMixin._load_extra_state`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unimae.core import distributed as du
from unimae.core.checkpoint_io import load_tensors, read_checkpoint_meta, save_checkpoint, save_tensors
from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path, link_or_copy
from unimae.core.optim import resume_schedule
from unimae.core.train_state import (
    STATE_FORMAT,
    decode_optimizer,
    encode_optimizer,
    encode_rng,
    mix_seed,
    restore_rng,
    rng_state,
    seed_everything,
)

__all__ = ["CheckpointsMixin"]

_STEP_JSON = re.compile(r"step_(\d+)\.json")


class CheckpointsMixin:
    """Resume from and write the training checkpoints of a :class:`~unimae.core.engine.Trainer`."""

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

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
            self.optimizer.load_state_dict(decode_optimizer(state_t, state["optimizer"]))
        except (ValueError, KeyError) as err:
            raise InputError(f"optimizer state does not fit the model ({err})", folder / state_name) from None
        p = self.progress
        p.step, p.epoch, p.batches_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])
        resume_schedule(self.scheduler, self.optimizer, state["scheduler"], p.step)
        p.elapsed = float(state.get("elapsed", 0.0))
        p.saved_step = p.step
        if int(state.get("world_size", 1)) != self.info.world_size:
            # the same samples are not re-split mid-epoch across a different number of processes
            p.epoch, p.batches_in_epoch = p.epoch + (1 if p.batches_in_epoch else 0), 0
            if self.is_main:
                print(f"unimae: resuming a {state.get('world_size')}-process run on {self.info.world_size}; "
                      f"starting epoch {p.epoch} afresh")  # fmt: skip
        self._load_extra_state(state.get("extra") or {})
        if not restore_rng(state_t, state.get("rng", {}), self.info.rank):
            seed_everything(mix_seed(self.seed, p.step), self.info.rank)
        return p.step

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
        states = du.all_gather_objects(rng_state()) if gather else [rng_state()]
        if not self.is_main:
            p.saved_step = p.step
            return None
        folder = self.checkpoint_dir
        name = f"step_{p.step:07d}"
        state_name = f"{name}.state"
        p.elapsed = time.perf_counter() - self._session_start
        extra = dict(step=p.step, epoch=p.epoch, checkpoint=name, train_state=state_name, config=self.run_config)
        save_checkpoint(folder / name, self.raw, contract=self._contract(), **extra, **self._checkpoint_meta())
        opt_t, opt_meta = encode_optimizer(self.optimizer.state_dict())
        rng_t, rng_meta = encode_rng(states)
        state_meta = {
            "format": STATE_FORMAT, "version": 1, "step": p.step, "epoch": p.epoch,
            "batches_in_epoch": p.batches_in_epoch, "world_size": self.info.world_size, "seed": self.seed,
            "elapsed": p.elapsed, "lr": self.lr, "optimizer": opt_meta, "scheduler": self.scheduler.state_dict(),
            "rng": rng_meta, "checkpoint": name, "extra": self._extra_state(),
        }  # fmt: skip
        save_tensors(folder / state_name, {**opt_t, **rng_t}, state_meta)
        link_or_copy(folder / f"{name}.safetensors", folder / "last.safetensors")
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
