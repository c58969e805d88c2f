"""The fine-tuning trainer: the engine's :class:`~unimae.core.engine.Trainer` with a task's loss, validation
metrics, best-model selection and anomaly calibration, and the learning-curve figure.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unimae.apps.finetune_config import ANOMALY_DEFAULTS, FinetuneConfig, dump_finetune_config
from unimae.apps.finetune_data import FinetuneData
from unimae.apps.finetune_model import _no_weight_decay
from unimae.core import distributed as du
from unimae.core import metrics as M
from unimae.core.checkpoint import load_tensors, save_checkpoint
from unimae.core.engine import Trainer, read_metrics
from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path, save_png
from unimae.core.optim import param_groups_layer_decay, param_groups_weight_decay
from unimae.core.precision import autocast
from unimae.core.tasks import AnomalyTask, ClassifyTask, SegmentTask, get_task, mixup_draw
from unimae.domains.base import Sample

__all__ = [
    "FinetuneTrainer",
    "save_learning_curve",
]


_mixup_draw = mixup_draw  # the old name (the task layer owns it now)


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
class FinetuneTrainer(Trainer):
    """The pretraining :class:`~unimae.core.engine.Trainer` with a task loss, a task metric and the best checkpoint.

    Everything else (AMP, accumulation, warmup/cosine, resume, DDP, CSV log, atomic checkpoints) is the
    engine's. Args beyond the engine's:

    Args:
        task: ``"classify"``, ``"segment"`` or ``"anomaly"``.
        data: the :class:`FinetuneData` (its ``train`` is the training dataset, ``val`` the validation samples).
        task_info: the checkpoint's task entries (:func:`~unimae.core.inference.task_metadata`).
        init_info: the ``init`` record of :func:`load_init`.
        weight: class weights (CE ``weight`` / BCE ``pos_weight``) or None.
        anomaly: anomaly settings (``k``, ``sigma``, ``top_fraction``, ``fpr``).
    """

    def __init__(
        self,
        model: nn.Module,
        data: FinetuneData,
        *,
        task: str,
        config: FinetuneConfig,
        out_dir: str | Path,
        task_info: Mapping[str, Any],
        init_info: Mapping[str, Any],
        weight: torch.Tensor | None = None,
        anomaly: Mapping[str, Any] | None = None,
        seed: int = 0,
        resume: bool | str | Path = False,
        run_config: Mapping[str, Any] | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        channels: Sequence[str] | None = None,
    ) -> None:
        contract = dict(task_info["contract"])
        super().__init__(
            model, data.train, config=config, out_dir=out_dir, val_data=None, seed=seed, contract=contract,
            resume=resume, run_config=run_config, on_step=on_step, channels=channels,
        )  # fmt: skip
        self.task = task
        self.task_def = get_task(task)
        self.data = data
        self.task_info = dict(task_info)
        self.init_info = dict(init_info)
        self.anomaly = {**ANOMALY_DEFAULTS, **dict(anomaly or {})}
        self.multi_label = bool(task_info.get("multi_label"))
        self.class_names = list(task_info["class_names"])
        self.weight = weight
        options = self.task_def.monitors(self.multi_label)
        self.monitor = options[0] if config.monitor is None else look_up(config.monitor, options, what=f"{task} monitor")
        self.higher_is_better = self.monitor != "loss"
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.progress_desc = f"finetune {task}"
        self.batch_keys = self.task_def.batch_keys
        self.metric_fields = self._fields()
        self.loss_module = self.task_def.make_loss(
            self.class_names, weight=weight, dice_weight=config.dice_weight, ce_weight=config.ce_weight,
            label_smoothing=config.label_smoothing,
        )  # fmt: skip

    # -- engine hooks --------------------------------------------------------------------------------
    def _setup(self) -> None:
        super()._setup()
        if self.loss_module is not None:
            self.loss_module.to(self.device)
        if self.is_main and self.run_config is not None:  # with task, init and anomaly (the engine's omits them)
            with atomic_path(self.out_dir / "config.yaml") as tmp:
                tmp.write_text(dump_finetune_config(self.run_config))

    def _fields(self) -> tuple[str, ...]:
        base = ["step", "epoch", "loss"]
        vals = [f"val_{m}" for m in self.task_def.monitors(self.multi_label)]
        return tuple(base + list(self.task_def.loss_parts) + ["lr", "samples_per_s", "time"] + vals)

    def _param_groups(self, raw: nn.Module) -> list[dict[str, Any]]:
        cfg: FinetuneConfig = self.config  # type: ignore[assignment]
        if cfg.mode == "linear":
            for p in raw.encoder.parameters():
                p.requires_grad_(False)
        nwd = _no_weight_decay(raw)
        if cfg.layer_decay is not None and cfg.layer_decay < 1.0 and cfg.mode == "full":
            return param_groups_layer_decay(raw, cfg.weight_decay, cfg.layer_decay, no_weight_decay=nwd)
        return param_groups_weight_decay(raw, cfg.weight_decay, no_weight_decay=nwd)

    def _pick_preview(self) -> dict[str, torch.Tensor] | None:
        return super()._pick_preview() if self.task_def.mae_training else None

    def _contract(self) -> dict[str, Any]:
        c = dict(self.contract)
        if self.task_def.mae_training:
            c.update({k: v for k, v in super()._contract().items() if k not in c})
        return c

    def _checkpoint_meta(self) -> dict[str, Any]:
        out = {k: v for k, v in self.task_info.items() if k != "contract"}
        out.update(
            init=self.init_info, monitor=f"val_{self.monitor}", best_value=self.best_value, best_step=self.best_step,
            metrics=dict(self.last_metrics),
        )  # fmt: skip
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "last_metrics": self.last_metrics}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self.last_metrics = dict(state.get("last_metrics") or {})
        best = self.out_dir / "best.safetensors"
        if self.task_def.calibrated and self.best_step is not None and best.is_file():
            self.best_state, _ = load_tensors(self.out_dir / "best", device="cpu")  # for the final calibration

    def _train_mode(self) -> None:
        if self.config.mode == "linear":  # type: ignore[attr-defined]
            self.raw.encoder.eval()  # a frozen encoder: no drop path / dropout noise in the features

    def _forward_loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        if model.training:
            self._train_mode()
        if self.task_def.mae_training:
            return super()._forward_loss(model, batch, gen)
        image = batch["image"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        extra = {"channels": self.channels} if self.channels is not None else {}
        mix = None
        if self.task_def.mixup and model.training and self.config.mixup > 0:  # type: ignore[attr-defined]
            mix = mixup_draw(len(image), float(self.config.mixup), gen)  # type: ignore[attr-defined]
            if mix is not None:
                lam, perm = mix
                image = lam * image + (1.0 - lam) * image[perm.to(image.device)]
                valid = valid & valid[perm.to(valid.device)]
        with autocast(self.precision, self.device):
            logits = model(image, valid=valid, **extra)
        key = self.batch_keys[0]
        if key not in batch:
            raise InputError(f"a training item has no {key}")
        target = batch[key].to(self.device)
        if self.loss_module is not None:
            return self.loss_module(logits, target, valid)
        return {"loss": self._classify_loss(logits, target, mix)}

    def _classify_loss(
        self, logits: torch.Tensor, label: torch.Tensor, mix: tuple[float, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The classification task's loss with this run's class weights, label smoothing and multi-label flag."""
        return _CLASSIFY.loss(
            logits, label, multi_label=self.multi_label, weight=self.weight,
            label_smoothing=self.config.label_smoothing, mix=mix,  # type: ignore[attr-defined]
        )  # fmt: skip

    def _has_validation(self) -> bool:
        return self.data.val is not None

    # -- validation ----------------------------------------------------------------------------------
    def _val_indices(self) -> list[int]:
        n = min(len(self.data.val), self.config.val_batches * self.config.batch_size)  # type: ignore[arg-type]
        return list(range(self.info.rank, n, self.info.world_size))

    def _gather(self, rows: list[tuple[int, Any]]) -> list[Any]:
        merged = [r for part in du.all_gather_objects(rows) for r in part]
        return [value for _, value in sorted(merged, key=lambda r: r[0])]

    def _validation_metrics(self) -> dict[str, float]:
        raw = self.raw
        raw.eval()
        try:
            with torch.no_grad():
                metrics = getattr(self, f"_validate_{self.task_def.name}")()
        except InputError as err:
            raise InputError(f"validation at step {self.progress.step}: {err}") from err
        finally:
            raw.train()
        self.last_metrics = metrics
        self._keep_best(metrics)
        return {f"val_{k}": v for k, v in metrics.items()}

    def _keep_best(self, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        better = self.best_value is None or (value > self.best_value if self.higher_is_better else value < self.best_value)
        if not better:
            return
        self.best_value, self.best_step = float(value), self.progress.step
        if self.task_def.calibrated:  # kept for threshold calibration after training (every rank)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.raw.state_dict().items()}
        if self.is_main:
            save_checkpoint(
                self.out_dir / "best", self.raw, contract=self._contract(), step=self.progress.step,
                epoch=self.progress.epoch, config=self.run_config, **self._checkpoint_meta(),
            )  # fmt: skip

    def _validate_classify(self) -> dict[str, float]:
        val, tf = self.data.val, self.data.eval_transform
        rows: list[tuple[int, Any]] = []
        idx = self._val_indices()
        bs = self.config.batch_size
        for start in range(0, len(idx), bs):
            chunk = idx[start : start + bs]
            views = [tf(val[i], 0) for i in chunk]  # type: ignore[index]
            x = torch.stack([v.image.float() for v in views])
            vm = torch.stack([v.valid.bool() for v in views])
            logits = _CLASSIFY.logits(self.raw, x, vm, channels=self.channels, precision=self.precision, device=self.device)
            labels = [v.label for v in views]
            if any(lab is None for lab in labels):
                raise InputError("a validation image has no label")
            y = torch.stack([torch.as_tensor(lab) for lab in labels]).to(self.device)
            for j, i in enumerate(chunk):
                loss = self._classify_loss(logits[j : j + 1], y[j : j + 1]).item()
                prob = _CLASSIFY.probabilities(logits[j], self.multi_label)
                rows.append((i, (prob.cpu().numpy(), y[j].cpu().numpy(), loss)))
        cases = self._gather(rows)
        probs = np.stack([c[0] for c in cases])
        targets = np.stack([c[1] for c in cases]) if self.multi_label else np.array([int(c[1]) for c in cases])
        r = M.classification_metrics(probs, targets, class_names=self.class_names, multi_label=self.multi_label)
        out = {k: r.get(k) for k in self.task_def.monitors(self.multi_label) if k != "loss"}
        out["loss"] = float(np.mean([c[2] for c in cases]))
        return {k: (math.nan if v is None else float(v)) for k, v in out.items()}

    def _run(self) -> dict[str, Any]:
        """How validation runs a model on one sample (the task layer's ``infer`` options): once when the sample
        fits the input size, else by Gaussian-blended windows with ``train.val_overlap``."""
        return {"input_size": list(self.data.input_size), "channels": self.channels, "precision": self.precision,
                "device": self.device, "direct": None, "overlap": self.config.val_overlap,  # type: ignore[attr-defined]
                "sw_batch_size": 4, **self.task_def.infer_settings(self.task_info)}  # fmt: skip

    def _validate_segment(self) -> dict[str, float]:
        k = len(self.class_names)
        rows: list[tuple[int, Any]] = []
        for i in self._val_indices():
            s = self.data.val[i]  # type: ignore[index]
            if s.mask is None:
                raise InputError("a validation image has no mask")
            probs = _SEGMENT.infer(self.raw, s.image, s.valid, **self._run())
            pred = probs.argmax(0).cpu()
            valid = s.valid.bool()
            dice, iou = M.dice_iou(pred, s.mask, k, valid=valid)
            conf = M.label_confusion(pred, s.mask.clamp(0, k - 1), k, valid=valid)
            rows.append((i, (dice, iou, conf)))
        cases = self._gather(rows)
        r = M.segmentation_metrics(
            np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases]), class_names=self.class_names,
            confusion=np.sum([c[2] for c in cases], axis=0),
        )  # fmt: skip
        return {"mean_dice": _f(r["mean_dice"]), "mean_iou": _f(r["mean_iou"]), "pooled_dice": _f(r["pooled"]["mean_dice"])}

    def _anomaly_case(self, s: Sample, index: int, keep_pixels: int = 0) -> tuple[float, int, np.ndarray | None]:
        """Score (and label, and optionally sampled valid pixel values) of one validation sample."""
        a = self.anomaly
        label = self._anomaly_label(s)
        view = s
        if self.raw.spatial_dims == 2:
            view = self.data.eval_transform(s, 0)
        amap = _ANOMALY.infer(self.raw, view.image, view.valid, **self._run()).cpu()
        valid = view.valid.bool()
        score = _ANOMALY.score(amap, valid, float(a["top_fraction"]))
        pixels = None
        if keep_pixels and bool(valid.any()):
            values = amap[valid]
            if values.numel() > keep_pixels:
                g = torch.Generator().manual_seed(int(index))
                values = values[torch.randperm(values.numel(), generator=g)[:keep_pixels]]
            pixels = values.numpy()
        return score, label, pixels

    def _anomaly_label(self, s: Sample) -> int:
        """1 for an anomalous validation image: a class other than the normal one, else lesion pixels."""
        normal = self.data.normal_index
        if s.label is not None and s.label.numel() > 1:  # multi-hot: any positive class but the normal one
            hot = s.label.reshape(-1) > 0.5
            if normal is not None:
                hot[normal] = False
            return int(bool(hot.any()))
        if s.label is not None:
            return int(int(s.label) != (0 if normal is None else normal))
        if s.mask is not None:
            m = s.mask.bool()
            return int(bool((m & s.valid.bool()).any()) if m.shape == s.valid.shape else bool(m.any()))
        raise InputError("a validation image has neither a label nor a mask")

    def _validate_anomaly(self) -> dict[str, float]:
        rows = [(i, self._anomaly_case(self.data.val[i], i)[:2]) for i in self._val_indices()]  # type: ignore[index]
        cases = self._gather(rows)
        scores = np.array([c[0] for c in cases])
        labels = np.array([c[1] for c in cases])
        out = {"image_auroc": _f(M.auroc(scores, labels)) if 0 < labels.sum() < len(labels) else math.nan}
        if labels.sum() < len(labels):
            normal = scores[labels == 0]
            out["loss"] = float(normal.mean())  # the mean normal score: how well normal images are reconstructed
        return out

    def calibrate(self, fpr: float, max_pixels: int = 2_000_000) -> dict[str, Any]:
        """Image and pixel thresholds at ``fpr`` on the *normal* validation images (anomaly only)."""
        val = self.data.val
        if val is None:
            return {}
        idx = self._val_indices()
        per_case = max(1000, max_pixels // max(1, len(val)))  # type: ignore[arg-type]
        self.raw.eval()
        with torch.no_grad():
            rows = [(i, self._anomaly_case(val[i], i, keep_pixels=per_case)) for i in idx]  # type: ignore[index]
        cases = self._gather(rows)
        normal = [c for c in cases if c[1] == 0]
        if not normal:
            warnings.warn("no normal validation image to calibrate the anomaly thresholds on; they stay unset", stacklevel=2)
            return {}
        scores = torch.tensor([c[0] for c in normal], dtype=torch.float64)
        pixels = torch.from_numpy(np.concatenate([c[2] for c in normal if c[2] is not None]).astype(np.float64))
        return {**_ANOMALY.calibrate(scores, pixels, fpr), "calibration_images": len(normal)}


_CLASSIFY, _SEGMENT, _ANOMALY = (get_task(t.name) for t in (ClassifyTask, SegmentTask, AnomalyTask))


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


# ------------------------------------------------------------------------------------------------
# the learning curve
# ------------------------------------------------------------------------------------------------
def save_learning_curve(metrics_csv: str | Path, path: str | Path, *, monitor: str, title: str = "") -> Path:
    """A PNG with the training loss (left) and the validation metric ``monitor`` (right) against the step."""
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_csv)
    fig = Figure(figsize=(9.0, 3.4), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    if pts:
        ax.plot(*zip(*pts), color="tab:blue", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    vals = [(r["step"], r[monitor]) for r in rows if r.get(monitor) is not None and math.isfinite(r[monitor])]
    if vals:
        ax2.plot(*zip(*vals), color="tab:orange", marker="o", ms=3, lw=1.2)
        pick = min if monitor.endswith("loss") else max
        best = pick(vals, key=lambda v: v[1])
        ax2.plot([best[0]], [best[1]], marker="*", ms=12, color="tab:red", ls="none", label=f"best {best[1]:.4g}")
        ax2.legend(loc="best", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("step")
    ax2.set_ylabel(monitor.replace("_", " "))
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
