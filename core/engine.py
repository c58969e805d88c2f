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
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from unimae.core import distributed as du
from unimae.core.checkpoint_io import save_checkpoint
from unimae.core.config import dump_config
from unimae.core.errors import InputError
from unimae.core.engine_checkpoints import CheckpointsMixin
from unimae.core.fileio import atomic_path
from unimae.core.losses import mae_loss
from unimae.core.mae import reconstruct_image
from unimae.core.metrics_log import METRIC_FIELDS, MetricsLog, read_metrics
from unimae.core.optim import build_optimizer, build_scheduler, param_groups_weight_decay, scaled_lr
from unimae.core.patch_embed import unpatchify
from unimae.core.precision import autocast, resolve_precision
from unimae.core.preview import save_preview
from unimae.core.train_config import TrainConfig
from unimae.core.train_data import EpochSampler, EpochView
from unimae.core.train_state import Progress, mask_generator, seed_everything

# TrainConfig, METRIC_FIELDS, read_metrics, save_preview, mask_generator and seed_everything live in their
# own modules (train_config, metrics_log, preview, train_state) and are re-exported here, where code imported
# them from before the engine was split.
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
# the trainer
# ------------------------------------------------------------------------------------------------
class Trainer(CheckpointsMixin):
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
        self.progress = Progress()
        self._warned_unscored = False
        self.indices: list[int] = []

    # -- setup ---------------------------------------------------------------------------------

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
            self.log = MetricsLog(
                self.out_dir, resume_step=resume_step, tensorboard=cfg.tensorboard, fields=self.metric_fields
            )
        if self.is_main and self.run_config is not None:
            with atomic_path(self.out_dir / "config.yaml") as tmp:
                tmp.write_text(dump_config(self.run_config))
        self._preview_item = self._pick_preview()

    def _loader(self, data: Dataset, *, shuffle: bool, drop_last: bool) -> tuple[DataLoader, EpochSampler]:
        cfg = self.config
        info = self.info
        base = DistributedSampler(
            data, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=self.seed, drop_last=drop_last
        )
        sampler = EpochSampler(base)
        workers = cfg.num_workers
        if workers is None:
            cpus = os.cpu_count() or 1
            workers = min(8, max(1, cpus // self.info.world_size - 1)) if self.device.type == "cuda" else 0
        loader = DataLoader(
            EpochView(data, self.batch_keys),
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
        return EpochView(data)[(0, 0)]


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
