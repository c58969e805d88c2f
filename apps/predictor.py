"""The inference side of the predict layer: a loaded task model and its domain plugin, one input at a time.

::

    predictor = load_predictor("runs/fundus_segment/best")          # cached by path + mtime
    pred = predictor.predict("image.tif")                           # -> Prediction (source grid)

What each task does (``input_size`` and the preprocessing come from the checkpoint's contract):

* **classify**: ``read -> preprocess -> eval transform`` (the domain's deterministic resize / letterbox /
  centre crop to ``input_size``) ``-> softmax`` (``sigmoid`` for multi-label models).
* **segment**: ``read -> preprocess`` then a Gaussian-blended sliding window with ``roi = input_size``
  over the whole preprocessed image (2D at full resolution, so 1-pixel vessels survive; 3D on the
  resampled grid), then back to the *source* grid with the plugin's ``to_source_grid``.
* **anomaly**: the MAE's reconstruction error over ``k`` complementary masks; 2D images on the eval
  transform's view, volumes by sliding window; mapped back to the source grid; the image score is the
  mean of the top fraction of the map; thresholds come from the checkpoint or an override.
* Domains that ``stream`` (GeoTIFF scenes) run segmentation and anomaly maps tile by tile
  (:mod:`unimae.apps.predict_stream`).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.apps.predict_stream import SceneStreaming, top_mean
from unimae.apps.prediction import Prediction, _threshold_mask, class_fractions, clean_meta
from unimae.core.checkpoint import checkpoint_paths, load_checkpoint
from unimae.core.errors import InputError, look_up
from unimae.core.inference import parse_task_metadata
from unimae.core.models import MAEClassifier, MAESegmenter  # noqa: F401  (registers the task model classes)
from unimae.core.precision import PRECISIONS, default_device, resolve_precision
from unimae.core.tasks import Task, get_task
from unimae.core.tta import task_tta
from unimae.domains import get_domain, guess_domain
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.display import in_model_space, valid_np

__all__ = ["Predictor", "load_predictor", "clear_predictor_cache", "resolve_device", "SEGMENT_MODES"]

SEGMENT_MODES = ("sliding", "resize")


# ------------------------------------------------------------------------------------------------
# devices and the model cache
# ------------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... checked."""
    if device is None or str(device) == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type not in ("cpu", "mps"):
        raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


_CACHE: OrderedDict[tuple, Predictor] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 4


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def load_predictor(
    checkpoint: str | Path, *, device: str | torch.device = "auto", precision: str = "auto", tta: str | None = None
) -> Predictor:
    """A :class:`Predictor` for a task checkpoint (``NAME``, ``NAME.json`` or ``NAME.safetensors``); ``tta``
    overrides the checkpoint's test-time augmentation (:mod:`unimae.core.tta`; None: the checkpoint's own).

    Predictors are cached by checkpoint path, file modification times, device, precision and ``tta`` (the
    :data:`CACHE_SIZE` most recent), so an app can call this on every request; a checkpoint rewritten on
    disk is loaded afresh. Raises :class:`InputError` for a missing, corrupt or non-task checkpoint.
    """
    tensor_path, json_path = checkpoint_paths(checkpoint)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    key = (str(json_path.resolve()), _mtime(json_path), _mtime(tensor_path), str(dev), prec, tta)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        model, meta = load_checkpoint(checkpoint, device=dev)
        predictor = Predictor(model, meta, checkpoint=str(json_path), device=dev, precision=prec, tta=tta)
        for old in [k for k in _CACHE if k[0] == key[0] and k[3:] == key[3:]]:
            del _CACHE[old]  # an older version of the same file
        _CACHE[key] = predictor
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return predictor


def clear_predictor_cache() -> None:
    """Forget every cached predictor (frees their models)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ------------------------------------------------------------------------------------------------
# the predictor
# ------------------------------------------------------------------------------------------------
class Predictor(SceneStreaming):
    """A loaded task model with its domain plugin and input contract.

    Args:
        model: the model from :func:`~unimae.core.checkpoint.load_checkpoint` (eval mode).
        meta: the checkpoint's JSON (see :func:`~unimae.core.inference.task_metadata`).
        checkpoint: where it came from (for reports).
        device: where the model runs.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; outputs are float32).
        overlap: sliding-window overlap fraction.
        sw_batch_size: sliding windows per forward pass.
        tile: streamed GeoTIFF tile (window) size in pixels.
        tile_overlap: pixels shared by neighbouring streamed tiles (at most ``tile / 2``).
        segment_mode: 2D segmentation at full resolution by sliding window (``"sliding"``) or on the
            eval transform's resized view (``"resize"``); default: the contract's ``segment_mode``, else
            ``"sliding"``.
        tta: test-time augmentation of classification and segmentation, one of
            :data:`~unimae.core.tta.TTA_MODES`; default: the contract's ``tta``, else ``"none"``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: Mapping[str, Any],
        *,
        checkpoint: str | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        overlap: float = 0.25,
        sw_batch_size: int = 4,
        tile: int = 512,
        tile_overlap: int = 64,
        segment_mode: str | None = None,
        tta: str | None = None,
    ) -> None:
        info = parse_task_metadata(meta, checkpoint)
        self.meta_info: dict[str, Any] = info  # the task entries, filled in
        self.checkpoint = checkpoint
        self.meta = dict(meta)
        self.task: str = info["task"]
        self.task_def: Task = get_task(self.task)
        self.domain: str = info["domain"]
        self.plugin: DomainPlugin = get_domain(self.domain)
        if self.task not in self.plugin.tasks:
            raise InputError(f"the {self.domain} domain has no {self.task} task", checkpoint)
        self.class_names: list[str] = list(info["class_names"])
        n_out = getattr(model, "config", {}).get("num_classes")
        if self.task_def.class_outputs and n_out is not None and int(n_out) != len(self.class_names):
            raise InputError(f"checkpoint lists {len(self.class_names)} class names but its model has {n_out} outputs", checkpoint)
        self.multi_label: bool = bool(info["multi_label"])
        self.contract: dict[str, Any] = dict(info["contract"])
        self.anomaly: dict[str, Any] = dict(info.get("anomaly") or {})
        self.spatial_dims = int(self.contract["spatial_dims"])
        if self.spatial_dims != self.plugin.spatial_dims:
            raise InputError(f"a {self.spatial_dims}D checkpoint for the {self.plugin.spatial_dims}D {self.domain} domain", checkpoint)
        self.input_size = tuple(int(s) for s in self.contract["input_size"])
        self.preprocess_kwargs: dict[str, Any] = dict(self.contract.get("preprocess") or {})
        params = inspect.signature(self.plugin.preprocess).parameters
        unknown = sorted(set(self.preprocess_kwargs) - set(params) - {"self", "sample"})
        if unknown and not any(q.kind is q.VAR_KEYWORD for q in params.values()):
            raise InputError(f"checkpoint preprocess options {unknown} are not {self.domain} preprocess options "
                             f"({', '.join(k for k in params if k != 'sample')})", checkpoint)  # fmt: skip
        self.device = torch.device(device)
        self.precision = look_up(precision, PRECISIONS[1:], what="precision")
        self.model = model.to(self.device).eval()
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.tile = int(tile)
        self.tile_overlap = int(tile_overlap)
        mode = segment_mode or self.contract.get("segment_mode") or "sliding"
        self.segment_mode = look_up(mode, SEGMENT_MODES, what="segment mode")
        self.tta = task_tta(tta if tta is not None else self.contract.get("tta"), self.task_def, self.spatial_dims)
        enc = model.encoder
        self.spectral = enc.channel_mode == "spectral"
        self.model_channels = [c["name"] for c in enc.channels]
        self.in_chans = int(enc.in_chans)

    def __repr__(self) -> str:
        return (f"Predictor({self.domain} {self.task}, {len(self.class_names)} classes, input {self.input_size}, "
                f"{self.device} {self.precision})")  # fmt: skip

    @property
    def not_reliable(self) -> str | None:
        """Why the model should not be trusted when its model card says ``reliable: false`` (the card's caveats,
        else a generic line); None for every other model. The app then withholds the anomaly verdict and outline,
        and ``unimae predict`` warns."""
        card = self.meta.get("model_card")
        if isinstance(card, Mapping) and card.get("reliable") is False:
            return str(card.get("caveats") or "its model card marks it not reliable")
        return None

    @property
    def num_outputs(self) -> int:
        """Channels of the per-pixel output: classes (segment) or 1 (anomaly)."""
        return len(self.class_names) if self.task_def.per_pixel and self.task_def.class_outputs else 1

    # -- inputs ------------------------------------------------------------------------------------
    def check_input(self, path: str | Path) -> None:
        """Raise :class:`InputError` for a missing file or one of another domain than the model's (one the model's
        domain does not :meth:`~unimae.domains.base.DomainPlugin.sniff` as its own while another domain does)."""
        p = Path(path)
        if not p.exists():
            raise InputError("file not found", p)
        if not self.plugin.accepts(p):
            what = "folder" if p.is_dir() else (f"{''.join(p.suffixes[-2:]) or 'extension-less'} file")
            raise InputError(
                f"is a {what}, not a {self.domain} input; this {self.domain} {self.task} model reads "
                f"{', '.join(self.plugin.extensions)}",
                p,
            )
        try:
            if self.plugin.sniff(p) > 0:
                return  # the model's domain reads it (perhaps not as its first choice: a grey fundus photo)
            other = guess_domain(p)
        except InputError:
            return  # no domain claims it: the reader says what is wrong
        raise InputError(f"looks like a {other.name} image, but this model is for {self.domain} ({self.task})", p)

    def load(self, source: str | Path | Sample) -> tuple[Sample, Sample]:
        """``(source-grid sample, model-space sample)`` for a path or a :class:`Sample`."""
        if isinstance(source, Sample):
            src = source
            model_sample = source if in_model_space(source.meta) else self._preprocess(source)
        else:
            self.check_input(source)
            src = self.plugin.read_for_model(source, dict(self.contract.get("read") or {}))
            model_sample = self._preprocess(src)
        self.check_channels(model_sample)
        return src, model_sample

    def _preprocess(self, sample: Sample) -> Sample:
        """``plugin.preprocess`` with the checkpoint's options; channels are checked before and after."""
        if "select_bands" not in self.preprocess_kwargs:
            self.check_channels(sample)  # say "wrong band count" before any band-specific preprocessing fails
        return self.plugin.preprocess(sample, **self.preprocess_kwargs)

    def check_channels(self, sample: Sample) -> None:
        """Raise :class:`InputError` when the sample's channels cannot feed the model."""
        path = sample.meta.get("path")
        names = [str(c.get("name")) for c in sample.meta.get("channels") or []]
        n = int(sample.image.shape[0])
        if self.spectral:
            try:
                self.model.encoder.patch_embed.band_indices(names or None)
            except InputError as err:
                raise InputError(f"{err} (the model knows {', '.join(self.model_channels)})", path) from None
            if names and len(names) != n:
                raise InputError(f"{n} channels but {len(names)} band names", path)
        elif n != self.in_chans:
            kind = self.plugin.channel_noun or "channel(s)"
            got = f" ({', '.join(names)})" if names and len(names) == n and len(names) <= 16 else ""
            raise InputError(
                f"has {n} {kind}{got} but this model expects {self.in_chans} ({', '.join(self.model_channels)})", path
            )

    def _channel_arg(self, sample: Sample) -> list[str] | None:
        if not self.spectral:
            return None
        return [str(c["name"]) for c in sample.meta["channels"]]

    # -- model calls ---------------------------------------------------------------------------------
    def _infer(self, sample: Sample, *, direct: bool, progress: bool = False) -> torch.Tensor:
        """The task's one-sample inference (:meth:`~unimae.core.tasks.base.Task.infer`, the path validation
        takes too) on a model-space sample: once on the whole sample (``direct``), else by windows blended
        on the CPU. Per-pixel outputs are ``(K, *S)`` (segment) or ``(*S)`` (anomaly), float32 on the CPU."""
        run: dict[str, Any] = {"channels": self._channel_arg(sample), "precision": self.precision, "device": self.device,
                               **self.task_def.infer_settings(self.meta_info)}  # fmt: skip
        if self.task_def.symmetric:
            run["tta"] = self.tta
        if self.task_def.per_pixel:
            run.update(input_size=self.input_size, direct=direct, overlap=self.overlap, sw_batch_size=self.sw_batch_size,
                       out_device="cpu", progress=progress)  # fmt: skip
        with torch.inference_mode():
            return self.task_def.infer(self.model, sample.image, sample.valid, **run).float().cpu()

    def _sliding(self, sample: Sample, progress: bool = False) -> torch.Tensor:
        """Blended per-pixel output ``(K, *S)`` (float32, CPU) of the model over a model-space sample."""
        out = self._infer(sample, direct=False, progress=progress)
        return out if out.ndim == sample.image.ndim else out[None]

    def _eval_view(self, sample: Sample) -> Sample:
        return self.plugin.augment(train=False, input_size=self.input_size)(sample, 0)

    def _infer_map(self, sample: Sample, on_view: bool, progress: bool) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """A per-pixel task's output and the ``meta`` of the grid it is on: in one pass on the evaluation view
        (``on_view``), else by windows over the whole preprocessed sample."""
        if on_view:
            view = self._eval_view(sample)
            return self._infer(view, direct=True), view.meta
        return self._infer(sample, direct=False, progress=progress), sample.meta

    # -- the public API -----------------------------------------------------------------------------
    def predict(
        self,
        source: str | Path | Sample,
        *,
        threshold: float | None = None,
        image_threshold: float | None = None,
        keep_source: bool = True,
        progress: bool = False,
    ) -> Prediction:
        """Run the model on a file (or a :class:`Sample`, raw or already in model space).

        Args:
            source: a path the domain reads, or a sample.
            threshold: anomaly: the pixel threshold (default: the calibrated one); multi-label
                classification: the decision threshold (default 0.5). Ignored for segmentation.
            image_threshold: anomaly: override the calibrated image threshold.
            keep_source: keep the read sample in :attr:`Prediction.source` (for displays).
            progress: show a progress bar over sliding-window batches or streamed tiles.

        Returns:
            A :class:`Prediction` on the source grid. GeoTIFF segmentation/anomaly go through the
            streamed tiler (kept in memory here; :meth:`predict_geotiff` streams to files).
        """
        t0 = time.perf_counter()
        if self.plugin.streams and self.task_def.per_pixel:
            pred = self._predict_scene(source, threshold=threshold, image_threshold=image_threshold, progress=progress)
        else:
            src, sample = self.load(source)
            pred = getattr(self, f"_{self.task_def.name}")(src, sample, threshold, image_threshold, progress)
            pred.source = src if keep_source else None
        pred.checkpoint = self.checkpoint
        pred.seconds = time.perf_counter() - t0
        return pred

    def _new(self, meta: Mapping[str, Any], **kw: Any) -> Prediction:
        return Prediction(task=self.task, domain=self.domain, class_names=list(self.class_names),
                          meta=clean_meta(meta), multi_label=self.multi_label,
                          preprocess=dict(self.preprocess_kwargs), tta=self.tta, **kw)  # fmt: skip

    def _classify(
        self, src: Sample, sample: Sample, threshold: float | None, image_threshold: float | None = None, progress: bool = False
    ) -> Prediction:
        probs = self._infer(self._eval_view(sample), direct=True)
        p = {n: float(q) for n, q in zip(self.class_names, probs.cpu().tolist())}
        if self.multi_label:
            thr = 0.5 if threshold is None else float(threshold)
            predicted = [n for n, q in p.items() if q > thr]
        else:
            thr, predicted = None, [max(p, key=p.get)]
        return self._new(src.meta, probabilities=p, predicted=predicted, threshold=thr)

    def _segment(
        self, src: Sample, sample: Sample, threshold: float | None = None, image_threshold: float | None = None,
        progress: bool = False,
    ) -> Prediction:  # fmt: skip
        probs, model_meta = self._infer_map(sample, self.segment_mode == "resize" and self.spatial_dims == 2, progress)
        labels = probs.argmax(0).numpy().astype(np.int64)
        labels = np.where(valid_np(model_meta, labels.shape), labels, 0)
        out = np.asarray(self.plugin.to_source_grid(labels, model_meta, kind="labels")).astype(np.int64)
        out = np.where(valid_np(src.meta, out.shape), out, 0)
        dtype = np.uint8 if len(self.class_names) <= 256 else np.int32
        return self._new(src.meta, label_map=out.astype(dtype), class_fractions=class_fractions(out, src.meta, self.class_names))

    def _anomaly(
        self, src: Sample, sample: Sample, threshold: float | None, image_threshold: float | None, progress: bool
    ) -> Prediction:
        top = float(self.anomaly.get("top_fraction", 0.01))
        amap, model_meta = self._infer_map(sample, self.spatial_dims == 2, progress)  # 2D: as validation scored it
        valid_model = torch.from_numpy(valid_np(model_meta, tuple(amap.shape)))
        amap = amap * valid_model
        score = top_mean(amap.numpy(), valid_model.numpy(), top)
        heat = np.asarray(self.plugin.to_source_grid(amap.numpy().astype(np.float32), model_meta, kind="heat"))
        heat = np.where(valid_np(src.meta, heat.shape), np.maximum(heat.astype(np.float32), 0.0), 0.0).astype(np.float32)
        return self._anomaly_result(src.meta, heat, score, threshold, image_threshold)

    def _anomaly_result(
        self, meta: Mapping[str, Any], heat: np.ndarray | None, score: float, threshold: float | None,
        image_threshold: float | None, mask: np.ndarray | None = None,
    ) -> Prediction:  # fmt: skip
        thr = self.anomaly.get("pixel_threshold") if threshold is None else float(threshold)
        ithr = self.anomaly.get("image_threshold") if image_threshold is None else float(image_threshold)
        if mask is None and heat is not None:
            mask = _threshold_mask(heat, meta, thr)
        return self._new(
            meta, heatmap=heat, score=float(score), threshold=None if thr is None else float(thr),
            image_threshold=None if ithr is None else float(ithr), anomaly_mask=mask,
            is_anomalous=None if ithr is None else bool(score > float(ithr)),
        )  # fmt: skip
