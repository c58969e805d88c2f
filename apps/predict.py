"""The predict layer shared by ``unimae predict`` and the Gradio app: pure functions, no UI.

::

    predictor = load_predictor("runs/fundus_segment/best")          # cached by path + mtime
    pred = predictor.predict("image.tif")                           # -> Prediction (source grid)
    files = write_prediction(pred, "out", "image")                  # PNG / NIfTI / GeoTIFF + overlay + JSON
    predictor.predict_geotiff("scene.tif", "out")                   # streamed: the scene never sits in memory
    predict_paths("runs/ct_segment/best", "scans/", "out")          # a folder, with a CSV and one-line errors

What each task does (``input_size`` and the preprocessing come from the checkpoint's contract):

* **classify**: ``read -> preprocess -> eval transform`` (the domain's deterministic resize / letterbox /
  centre crop to ``input_size``) ``-> softmax`` (``sigmoid`` for multi-label models).
* **segment**: ``read -> preprocess`` then a Gaussian-blended sliding window with ``roi = input_size``
  over the whole preprocessed image (2D at full resolution, so 1-pixel vessels survive; 3D on the
  resampled CT grid), then back to the *source* grid with the domain's own inverse (CT: the source
  affine and shape).
* **anomaly**: the MAE's reconstruction error over ``k`` complementary masks; 2D images on the eval
  transform's view, volumes by sliding window; mapped back to the source grid; the image score is the
  mean of the top fraction of the map; thresholds come from the checkpoint or an override.
* **GeoTIFF** segmentation and anomaly maps are streamed tile by tile (read a window with context,
  preprocess, sliding window, blend overlaps, write finished blocks): peak memory does not grow with
  the scene.

Results keep the input's geometry: label and heat maps on the source grid, written with the domain's
``write`` (NIfTI with the source affine, GeoTIFF with the source CRS / transform / nodata, PNG for
pictures). Reports never contain patient fields.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import io
import json
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.apps.commands import add_predict_parser  # noqa: F401 (re-exported)
from unimae.core.anomaly import anomaly_map
from unimae.core.checkpoint import checkpoint_paths, load_checkpoint
from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path
from unimae.core.inference import (
    TopFraction,
    make_contract,
    parse_task_metadata,
    sliding_window,
    stream_blend,
    task_metadata,
)
from unimae.core.models import MAEClassifier, MAESegmenter  # noqa: F401  (registers the task model classes)
from unimae.core.precision import PRECISIONS, autocast, default_device, resolve_precision
from unimae.domains import get_domain
from unimae.domains.base import DomainPlugin, Sample, check_pixel_limit

__all__ = [
    "Prediction",
    "Predictor",
    "PredictSummary",
    "load_predictor",
    "clear_predictor_cache",
    "resolve_device",
    "write_prediction",
    "predict_paths",
    "collect_inputs",
    "add_predict_parser",
    "run_predict",
    "task_metadata",
    "make_contract",
    "display_image",
    "overlay_image",
    "result_suffix",
    "safe_meta",
]

PROG = "unimae"
SEGMENT_MODES = ("sliding", "resize")
_PATIENT = re.compile(r"patient|birth|accession|physician|operator|institution|study_?id|other_?ids|ethnic|address", re.I)
_REPORT_KEYS = (
    "spatial_dims", "channels", "spacing", "spacing_unit", "spacing_units", "affine", "crs_name", "crs",
    "transform", "nodata", "modality", "source_shape", "orientation", "source_format", "units", "dtype",
    "band_preset", "photometric", "source_dtype", "fov_source",
)  # fmt: skip
_PALETTE = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
        (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    ],
    dtype=np.float32,
)  # fmt: skip
_RESULT_SUFFIX = {"ct": ".nii.gz", "multispectral": ".tif"}


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """A model's result for one input, on the input's *source* grid.

    Attributes:
        task, domain, class_names: from the checkpoint.
        meta: the source geometry (``read``'s meta: affine / CRS / transform / nodata / spacing /
            ``source_shape``, ``valid`` on the source grid); never patient fields.
        source: the input as read (source grid), for displays; None for streamed scenes.
        probabilities: classify: ``{class: probability}`` (softmax, or sigmoid if ``multi_label``).
        predicted: classify: the arg-max class, or every class over ``threshold`` (multi-label).
        label_map: segment: ``(*source_shape)`` integer class indices (0 outside ``valid``).
        heatmap: anomaly: ``(*source_shape)`` float32 reconstruction error (0 outside ``valid``).
        score: anomaly: the image score.
        threshold: anomaly: the pixel threshold used; classify (multi-label): the decision threshold.
        image_threshold: anomaly: the image threshold ``score`` is compared with (None if uncalibrated).
        anomaly_mask: anomaly: ``heatmap > threshold`` inside ``valid`` (None without a threshold).
        is_anomalous: anomaly: ``score > image_threshold`` (None without an image threshold).
        class_fractions: segment: fraction of the valid area per class.
        preprocess: the ``plugin.preprocess`` options the model's contract applied (e.g. the CT window).
        checkpoint: the checkpoint's JSON path.
        seconds: wall time of the prediction.
    """

    task: str
    domain: str
    class_names: list[str]
    meta: dict[str, Any]
    source: Sample | None = None
    multi_label: bool = False
    probabilities: dict[str, float] | None = None
    predicted: list[str] | None = None
    label_map: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    score: float | None = None
    threshold: float | None = None
    image_threshold: float | None = None
    anomaly_mask: np.ndarray | None = None
    is_anomalous: bool | None = None
    class_fractions: dict[str, float] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    seconds: float = 0.0

    def with_threshold(self, threshold: float | None) -> Prediction:
        """The same anomaly result with another pixel threshold: a new mask, the same heat map (no re-run)."""
        if self.task != "anomaly" or self.heatmap is None:
            raise ValueError("with_threshold applies to anomaly predictions")
        return dc_replace(self, threshold=None if threshold is None else float(threshold),
                          anomaly_mask=_threshold_mask(self.heatmap, self.meta, threshold))  # fmt: skip

    def report(self, outputs: Mapping[str, Path] | None = None) -> dict[str, Any]:
        """A JSON-serialisable report: task, classes, scores, threshold and the input's geometry."""
        rep: dict[str, Any] = {
            "file": _file_name(self.meta.get("path")),
            "checkpoint": self.checkpoint,
            "task": self.task,
            "domain": self.domain,
            "class_names": list(self.class_names),
            "preprocess": _jsonable(self.preprocess),
            "input": safe_meta(self.meta),
        }
        if self.task == "classify":
            rep.update(probabilities=self.probabilities, predicted=self.predicted, multi_label=self.multi_label)
            if self.multi_label:
                rep["threshold"] = self.threshold
        elif self.task == "segment":
            rep["class_fractions"] = self.class_fractions
        else:
            rep.update(
                score=self.score,
                pixel_threshold=self.threshold,
                image_threshold=self.image_threshold,
                is_anomalous=self.is_anomalous,
                anomalous_fraction=_mask_fraction(self.anomaly_mask, self.meta),
                heatmap_max=float(self.heatmap.max()) if self.heatmap is not None and self.heatmap.size else None,
            )
        if outputs:
            rep["outputs"] = {k: Path(v).name for k, v in outputs.items()}
        rep["seconds"] = round(float(self.seconds), 4)
        return rep


def _file_name(path: Any) -> str | None:
    return None if path is None else Path(str(path)).name


def _valid_np(meta: Mapping[str, Any], shape: Sequence[int]) -> np.ndarray:
    v = meta.get("valid")
    if v is None:
        return np.ones(tuple(shape), dtype=bool)
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    arr = arr.astype(bool)
    return arr if arr.shape == tuple(shape) else np.ones(tuple(shape), dtype=bool)


def _threshold_mask(heat: np.ndarray, meta: Mapping[str, Any], threshold: float | None) -> np.ndarray | None:
    if threshold is None:
        return None
    return (heat > float(threshold)) & _valid_np(meta, heat.shape)


def _mask_fraction(mask: np.ndarray | None, meta: Mapping[str, Any]) -> float | None:
    if mask is None:
        return None
    valid = _valid_np(meta, mask.shape)
    n = int(valid.sum())
    return float((mask & valid).sum()) / n if n else 0.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def safe_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The geometry of ``meta`` for reports: whitelisted keys, JSON types, no patient fields, no masks."""
    out: dict[str, Any] = {"file": _file_name(meta.get("path"))}
    for key in _REPORT_KEYS:
        if key in meta and meta[key] is not None and not _PATIENT.search(key):
            out[key] = _jsonable(meta[key])
    return out


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
    checkpoint: str | Path, *, device: str | torch.device = "auto", precision: str = "auto"
) -> Predictor:
    """A :class:`Predictor` for a task checkpoint (``NAME``, ``NAME.json`` or ``NAME.safetensors``).

    Predictors are cached by checkpoint path, file modification times, device and precision (the
    :data:`CACHE_SIZE` most recent), so an app can call this on every request; a checkpoint rewritten on
    disk is loaded afresh. Raises :class:`InputError` for a missing, corrupt or non-task checkpoint.
    """
    tensor_path, json_path = checkpoint_paths(checkpoint)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    key = (str(json_path.resolve()), _mtime(json_path), _mtime(tensor_path), str(dev), prec)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        model, meta = load_checkpoint(checkpoint, device=dev)
        predictor = Predictor(model, meta, checkpoint=str(json_path), device=dev, precision=prec)
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
def _in_model_space(meta: Mapping[str, Any]) -> bool:
    """True for samples already preprocessed (synthetic data, or the output of ``preprocess``)."""
    norm = meta.get("normalization")
    return isinstance(norm, Mapping) and norm.get("kind") not in (None, "scale")


def result_suffix(plugin: DomainPlugin) -> str:
    """The file suffix a domain writes results in: ``.nii.gz`` (volumes), ``.tif`` (GeoTIFF) or ``.png``."""
    suffix = getattr(plugin, "result_suffix", None)
    if isinstance(suffix, str):
        return suffix
    if plugin.name in _RESULT_SUFFIX:
        return _RESULT_SUFFIX[plugin.name]
    return ".nii.gz" if plugin.spatial_dims == 3 else ".png"


def _streams(plugin: DomainPlugin) -> bool:
    return result_suffix(plugin) == ".tif"


def _label_nodata(src_nodata: float | None, num_classes: int) -> float:
    """A nodata value for a class map: the source's when it is an integer that is not a class index."""
    if src_nodata is not None and np.isfinite(src_nodata) and float(src_nodata).is_integer():
        v = int(src_nodata)
        if (v < 0 or v >= num_classes) and -(2**31) <= v < 2**31:
            return float(v)
    return 255.0 if num_classes < 255 else 65535.0


def _heat_nodata(src_nodata: float | None) -> float:
    """A nodata value for a float heat map (errors are >= 0): the source's when negative or NaN, else NaN."""
    if src_nodata is not None and (np.isnan(src_nodata) or src_nodata < 0):
        return float(src_nodata)
    return float("nan")


def _int_dtype_for(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    for dt in ("uint8", "uint16", "int16", "int32"):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return "int32"


class Predictor:
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
    ) -> None:
        info = parse_task_metadata(meta, checkpoint)
        self.checkpoint = checkpoint
        self.meta = dict(meta)
        self.task: str = info["task"]
        self.domain: str = info["domain"]
        self.plugin: DomainPlugin = get_domain(self.domain)
        if self.task not in self.plugin.tasks:
            raise InputError(f"the {self.domain} domain has no {self.task} task", checkpoint)
        self.class_names: list[str] = list(info["class_names"])
        n_out = getattr(model, "config", {}).get("num_classes")
        if self.task != "anomaly" and n_out is not None and int(n_out) != len(self.class_names):
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
        enc = model.encoder
        self.spectral = enc.channel_mode == "spectral"
        self.model_channels = [c["name"] for c in enc.channels]
        self.in_chans = int(enc.in_chans)

    def __repr__(self) -> str:
        return (f"Predictor({self.domain} {self.task}, {len(self.class_names)} classes, input {self.input_size}, "
                f"{self.device} {self.precision})")  # fmt: skip

    @property
    def num_outputs(self) -> int:
        """Channels of the per-pixel output: classes (segment) or 1 (anomaly)."""
        return len(self.class_names) if self.task == "segment" else 1

    # -- inputs ------------------------------------------------------------------------------------
    def check_input(self, path: str | Path) -> None:
        """Raise :class:`InputError` for a missing file or one of another domain than the model's."""
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
        from unimae.domains.datasets import guess_domain_name

        try:
            guessed = guess_domain_name(p)
        except InputError:
            return  # the reader says what is wrong
        lenient = {("fundus", "xray"), ("multispectral", "fundus")}  # grey fundus photos; RGB GeoTIFFs without CRS
        if guessed != self.domain and (self.domain, guessed) not in lenient:
            raise InputError(f"looks like a {guessed} image, but this model is for {self.domain} ({self.task})", p)

    def load(self, source: str | Path | Sample) -> tuple[Sample, Sample]:
        """``(source-grid sample, model-space sample)`` for a path or a :class:`Sample`."""
        if isinstance(source, Sample):
            src = source
            model_sample = source if _in_model_space(source.meta) else self._preprocess(source)
        else:
            self.check_input(source)
            src = self.plugin.read(source)
            trained_read = dict(self.contract.get("read") or {})
            if trained_read and src.meta.get("band_source") == "band_count":
                # the file does not name its bands: read them as the training files were (e.g. EuroSAT order)
                src = self.plugin.read(source, **trained_read)
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
            kind = "bands" if self.domain == "multispectral" else "channel(s)"
            got = f" ({', '.join(names)})" if names and len(names) == n and len(names) <= 16 else ""
            raise InputError(
                f"has {n} {kind}{got} but this model expects {self.in_chans} ({', '.join(self.model_channels)})", path
            )

    def _channel_arg(self, sample: Sample) -> list[str] | None:
        if not self.spectral:
            return None
        return [str(c["name"]) for c in sample.meta["channels"]]

    # -- model calls ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        with torch.inference_mode(), autocast(self.precision, self.device):
            yield

    def _batch(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        x = sample.image.float()[None].to(self.device)
        v = sample.valid.bool()[None].to(self.device)
        return x, v

    def _window_fn(self, channels: list[str] | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """A sliding-window function of ``(n, C + 1, *roi)`` (image + validity channel)."""
        if self.task == "segment":

            def seg(xv: torch.Tensor) -> torch.Tensor:
                x, v = xv[:, :-1], xv[:, -1] > 0.5
                logits = self.model(x, valid=v, channels=channels)
                return torch.softmax(logits.float(), dim=1)

            return seg

        k, sigma = int(self.anomaly.get("k", 4)), self.anomaly.get("sigma")
        norm_pix = bool(self.anomaly.get("norm_pix", True))  # the target the MAE was trained with

        def amap(xv: torch.Tensor) -> torch.Tensor:
            x, v = xv[:, :-1], xv[:, -1] > 0.5
            out = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device=x.device)
            ok = v.flatten(1).any(1)  # windows of padding / nodata only are not run
            if bool(ok.any()):
                idx = ok.nonzero()[:, 0]
                gen = torch.Generator(device=x.device).manual_seed(0)  # the same mask partition for every window
                m = anomaly_map(self.model, x[idx], valid=v[idx], channels=channels, k=k, sigma=sigma,
                                norm_pix=norm_pix, generator=gen)  # fmt: skip
                out[idx, 0] = m.float()
            return out

        return amap

    def _sliding(self, sample: Sample, progress: bool = False) -> torch.Tensor:
        """Blended per-pixel output ``(K, *S)`` (float32, CPU) of the model over a model-space sample."""
        x, v = self._batch(sample)
        xv = torch.cat([x, v[:, None].to(x.dtype)], dim=1)
        fn = self._window_fn(self._channel_arg(sample))
        with self._running():
            out = sliding_window(
                fn, xv, self.input_size, overlap=self.overlap, mode="gaussian", sw_batch_size=self.sw_batch_size,
                device="cpu", sw_device=self.device, progress=progress,
            )  # fmt: skip
        return out[0]

    def _eval_view(self, sample: Sample) -> Sample:
        return self.plugin.augment(train=False, input_size=self.input_size)(sample, 0)

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
        if _streams(self.plugin) and self.task != "classify":
            pred = self._predict_scene(source, threshold=threshold, image_threshold=image_threshold, progress=progress)
        else:
            src, sample = self.load(source)
            if self.task == "classify":
                pred = self._classify(src, sample, threshold)
            elif self.task == "segment":
                pred = self._segment(src, sample, progress)
            else:
                pred = self._anomaly(src, sample, threshold, image_threshold, progress)
            pred.source = src if keep_source else None
        pred.checkpoint = self.checkpoint
        pred.seconds = time.perf_counter() - t0
        return pred

    def _new(self, meta: Mapping[str, Any], **kw: Any) -> Prediction:
        return Prediction(task=self.task, domain=self.domain, class_names=list(self.class_names),
                          meta=_clean_meta(meta), multi_label=self.multi_label,
                          preprocess=dict(self.preprocess_kwargs), **kw)  # fmt: skip

    def _classify(self, src: Sample, sample: Sample, threshold: float | None) -> Prediction:
        view = self._eval_view(sample)
        x, v = self._batch(view)
        with self._running():
            logits = self.model(x, valid=v, channels=self._channel_arg(view)).float()[0]
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, 0)
        p = {n: float(q) for n, q in zip(self.class_names, probs.cpu().tolist())}
        if self.multi_label:
            thr = 0.5 if threshold is None else float(threshold)
            predicted = [n for n, q in p.items() if q > thr]
        else:
            thr, predicted = None, [max(p, key=p.get)]
        return self._new(src.meta, probabilities=p, predicted=predicted, threshold=thr)

    def _segment(self, src: Sample, sample: Sample, progress: bool) -> Prediction:
        if self.segment_mode == "resize" and self.spatial_dims == 2:
            view = self._eval_view(sample)
            x, v = self._batch(view)
            with self._running():
                logits = self.model(x, valid=v, channels=self._channel_arg(view)).float()[0]
            labels = logits.argmax(0).cpu().numpy().astype(np.int64)
            model_meta = view.meta
        else:
            probs = self._sliding(sample, progress)
            labels = probs.argmax(0).numpy().astype(np.int64)
            model_meta = sample.meta
        labels = np.where(_valid_np(model_meta, labels.shape), labels, 0)
        out = _to_source(self.plugin, labels, model_meta, "labels").astype(np.int64)
        out = np.where(_valid_np(src.meta, out.shape), out, 0)
        dtype = np.uint8 if len(self.class_names) <= 256 else np.int32
        return self._new(src.meta, label_map=out.astype(dtype), class_fractions=_fractions(out, src.meta, self.class_names))

    def _anomaly(
        self, src: Sample, sample: Sample, threshold: float | None, image_threshold: float | None, progress: bool
    ) -> Prediction:
        top = float(self.anomaly.get("top_fraction", 0.01))
        if self.spatial_dims == 2:
            view = self._eval_view(sample)
            x, v = self._batch(view)
            xv = torch.cat([x, v[:, None].to(x.dtype)], dim=1)
            with self._running():
                amap = self._window_fn(self._channel_arg(view))(xv)[0, 0].float().cpu()
            model_meta = view.meta
        else:
            amap = self._sliding(sample, progress)[0]
            model_meta = sample.meta
        valid_model = torch.from_numpy(_valid_np(model_meta, tuple(amap.shape)))
        amap = amap * valid_model
        score = _top_mean(amap.numpy(), valid_model.numpy(), top)
        heat = _to_source(self.plugin, amap.numpy().astype(np.float32), model_meta, "heat").astype(np.float32)
        heat = np.where(_valid_np(src.meta, heat.shape), np.maximum(heat, 0.0), 0.0).astype(np.float32)
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

    # -- streamed scenes -----------------------------------------------------------------------------
    def _tile_predict(self, read_window: Callable[[tuple[int, int, int, int]], Sample]):
        """``window -> (values (K, h, w), valid)`` for :func:`stream_blend`: read, preprocess, sliding window."""

        def predict(win: tuple[int, int, int, int]) -> tuple[np.ndarray | None, np.ndarray]:
            sample = read_window(win)
            valid = sample.valid.numpy().astype(bool)
            if not valid.any():
                return None, valid
            return self._sliding(sample).numpy(), valid

        return predict

    def _stream(
        self,
        shape: tuple[int, int],
        read_window: Callable[[tuple[int, int, int, int]], Sample],
        sink: Callable[[int, int, np.ndarray, np.ndarray], None],
        progress: bool | str = False,
    ) -> None:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=None, desc=progress if isinstance(progress, str) else "tiles", unit="tile", leave=False)

        def on_tile(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(1)

        try:
            stream_blend(shape, self._tile_predict(read_window), sink, channels=self.num_outputs, tile=self.tile,
                         overlap=self.tile_overlap, on_tile=on_tile)  # fmt: skip
        finally:
            if bar is not None:
                bar.close()

    def _open_scene(self, source: str | Path) -> Any:
        from unimae.domains.multispectral import GeoTiffReader

        self.check_input(source)
        reader = GeoTiffReader(source)
        trained_read = dict(self.contract.get("read") or {})
        if trained_read.get("bands") is not None and reader.bandset.source == "band_count":
            reader.close()
            reader = GeoTiffReader(source, bands=trained_read["bands"])  # as the training files were read
        return reader

    def _scene_reader(self, reader: Any) -> Callable[[tuple[int, int, int, int]], Sample]:
        def read_window(win: tuple[int, int, int, int]) -> Sample:
            sample = self._preprocess(reader.read(win, allow_empty=True))
            self.check_channels(sample)
            return sample

        return read_window

    def _memory_reader(self, sample: Sample) -> Callable[[tuple[int, int, int, int]], Sample]:
        model_sample = sample if _in_model_space(sample.meta) else self._preprocess(sample)
        self.check_channels(model_sample)

        def read_window(win: tuple[int, int, int, int]) -> Sample:
            r, c, h, w = win
            meta = dict(model_sample.meta)
            meta["valid"] = model_sample.valid[r : r + h, c : c + w]
            return model_sample.replace(image=model_sample.image[:, r : r + h, c : c + w], meta=meta, mask=None)

        return read_window

    def _predict_scene(
        self, source: str | Path | Sample, *, threshold: float | None, image_threshold: float | None, progress: bool
    ) -> Prediction:
        """A scene through the streamed tiler, kept in memory (for the app and small scenes)."""
        reader = None
        if isinstance(source, Sample):
            src = source
            read_window = self._memory_reader(source)
            shape = tuple(source.spatial_shape)
        else:
            reader = self._open_scene(source)
            shape = reader.shape
            check_pixel_limit(shape, source)
            src = None
            read_window = self._scene_reader(reader)
        try:
            k = self.num_outputs
            result = np.zeros(shape, dtype=np.float32 if self.task == "anomaly" else np.int64)
            valid_all = np.zeros(shape, dtype=bool)

            def sink(r: int, c: int, values: np.ndarray, valid: np.ndarray) -> None:
                h, w = valid.shape
                valid_all[r : r + h, c : c + w] = valid
                if k == 1 and self.task == "anomaly":
                    result[r : r + h, c : c + w] = np.where(valid, values[0], 0.0)
                else:
                    result[r : r + h, c : c + w] = np.where(valid, values.argmax(0), 0)

            self._stream(shape, read_window, sink, progress)
            if reader is not None:
                src = reader.read()  # the small scene itself, for displays and the source meta
        finally:
            if reader is not None:
                reader.close()
        meta = dict(src.meta)
        meta["valid"] = torch.from_numpy(valid_all)
        if self.task == "segment":
            labels = result.astype(np.uint8 if len(self.class_names) <= 256 else np.int32)
            pred = self._new(meta, label_map=labels, class_fractions=_fractions(result, meta, self.class_names))
        else:
            score = _top_mean(result, valid_all, float(self.anomaly.get("top_fraction", 0.01)))
            pred = self._anomaly_result(meta, result, score, threshold, image_threshold)
        pred.source = src
        return pred

    def predict_geotiff(
        self,
        source: str | Path,
        out_dir: str | Path,
        *,
        stem: str | None = None,
        threshold: float | None = None,
        image_threshold: float | None = None,
        probabilities: bool = False,
        progress: bool = False,
        preview_size: int = 1024,
    ) -> dict[str, Path]:
        """Stream a GeoTIFF through the model and write the results tile by tile; the scene never sits in memory.

        Segmentation writes ``STEM_seg.tif`` (class indices) and, with ``probabilities``,
        ``STEM_probs.tif`` (one float band per class); anomaly writes ``STEM_heatmap.tif`` (float32) and
        ``STEM_anomaly_mask.tif`` (0/1). All are on the source grid (CRS, transform) with a nodata value
        that cannot be mistaken for a result (the source's when possible). Plus ``STEM_overlay.png``
        (natural-colour composite, at most ``preview_size`` pixels a side) and ``STEM.json``.

        Returns:
            ``{"seg" | "heatmap", "anomaly_mask", "probs", "overlay", "report": path}``.
        """
        import rasterio

        from unimae.domains.multispectral import GeoTiffWriter

        if self.task == "classify":
            raise InputError("predict_geotiff streams segmentation and anomaly maps; use predict() to classify")
        t0 = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or _stem(Path(source))
        mb = 64 * 2**20
        with rasterio.Env(GDAL_CACHEMAX=mb), self._open_scene(source) as reader:
            h, w = reader.shape
            probe = self._preprocess(reader.read((0, 0, min(h, 16), min(w, 16)), allow_empty=True))
            self.check_channels(probe)
            meta = reader.meta()
            may_be_invalid = bool(getattr(reader, "_needs_mask", True)) or np.issubdtype(np.dtype(reader.dtype), np.floating)
            stride = self.tile - min(self.tile_overlap, self.tile // 2)
            block = stride if stride % 16 == 0 and 16 <= stride <= 1024 else 256
            k = len(self.class_names)
            files: dict[str, Path] = {}
            preview = _Preview((h, w), preview_size, meta["channels"], getattr(self.plugin, "rgb_bands", ()))
            pix_thr = self.anomaly.get("pixel_threshold") if threshold is None else float(threshold)
            top = TopFraction(float(self.anomaly.get("top_fraction", 0.01)), h * w)
            counts = np.zeros(max(k, 1), dtype=np.int64)
            with contextlib.ExitStack() as stack:
                writers: dict[str, Any] = {}

                def open_writer(name: str, suffix: str, count: int, dtype: str, nodata: float | None, desc=None) -> None:
                    path = out_dir / f"{stem}{suffix}"
                    files[name] = path
                    writers[name] = stack.enter_context(GeoTiffWriter.like(
                        source, path, count=count, dtype=dtype, nodata=nodata, descriptions=desc, tile=block))  # fmt: skip

                if self.task == "segment":
                    nd = _label_nodata(meta.get("nodata"), k) if (may_be_invalid or meta.get("nodata") is not None) else None
                    open_writer("seg", "_seg.tif", 1, _int_dtype_for([0, k - 1] + ([nd] if nd is not None else [])), nd)
                    if probabilities:
                        open_writer("probs", "_probs.tif", k, "float32", float("nan"), list(self.class_names))
                else:
                    hnd = _heat_nodata(meta.get("nodata")) if (may_be_invalid or meta.get("nodata") is not None) else None
                    open_writer("heatmap", "_heatmap.tif", 1, "float32", hnd)
                    if pix_thr is not None:
                        open_writer("anomaly_mask", "_anomaly_mask.tif", 1, "uint8", 255.0 if hnd is not None else None)

                def read_window(win: tuple[int, int, int, int]) -> Sample:
                    raw = reader.read(win, allow_empty=True)
                    preview.add_image(win, raw.image.numpy(), raw.valid.numpy())
                    sample = self._preprocess(raw)
                    self.check_channels(sample)
                    return sample

                def sink(r: int, c: int, values: np.ndarray, valid: np.ndarray) -> None:
                    bh, bw = valid.shape
                    win = (r, c, bh, bw)
                    if self.task == "segment":
                        labels = values.argmax(0)
                        counts[:] += np.bincount(labels[valid], minlength=k)[:k]
                        wr = writers["seg"]
                        fill = wr.nodata if wr.nodata is not None else 0
                        wr.write(np.where(valid, labels, fill).astype(wr.dtype), win)
                        preview.add_overlay(win, np.where(valid, labels, 0).astype(np.float32))
                        if "probs" in writers:
                            writers["probs"].write(np.where(valid[None], values, np.nan).astype(np.float32), win)
                    else:
                        heat = np.maximum(values[0], 0.0)
                        top.update(heat[valid])
                        wr = writers["heatmap"]
                        fill = wr.nodata if wr.nodata is not None else 0.0
                        wr.write(np.where(valid, heat, fill).astype(np.float32), win)
                        preview.add_overlay(win, np.where(valid, heat, 0.0).astype(np.float32))
                        if "anomaly_mask" in writers:
                            mw = writers["anomaly_mask"]
                            m = np.where(valid, heat > pix_thr, mw.nodata if mw.nodata is not None else 0)
                            counts[0] += int((heat[valid] > pix_thr).sum())
                            mw.write(m.astype(np.uint8), win)

                self._stream((h, w), read_window, sink, progress=f"{Path(source).name} tiles" if progress else False)
            n_valid = top.count if self.task == "anomaly" else int(counts.sum())
            pred = self._new(meta)
            if self.task == "segment":
                pred.class_fractions = {n: (float(counts[i]) / n_valid if n_valid else 0.0) for i, n in enumerate(self.class_names)}
                files["overlay"] = preview.write(out_dir / f"{stem}_overlay.png", labels=True)
            else:
                score = top.mean()
                pred = self._anomaly_result(meta, None, score, threshold, image_threshold)
                files["overlay"] = preview.write(out_dir / f"{stem}_overlay.png", labels=False, threshold=pred.threshold)
            pred.checkpoint = self.checkpoint
            pred.seconds = time.perf_counter() - t0
            report = pred.report(files)
            if self.task == "anomaly":
                report["anomalous_fraction"] = (float(counts[0]) / n_valid if n_valid else 0.0) if pred.threshold is not None else None
            report["streamed"] = {"tile": self.tile, "overlap": self.tile_overlap, "block": block}
            files["report"] = _write_json(out_dir / f"{stem}.json", report)
        return files


def _clean_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``meta`` without patient-like keys (defensive: plugins never put them there)."""
    return {k: v for k, v in meta.items() if not _PATIENT.search(str(k))}


def _top_mean(values: np.ndarray, valid: np.ndarray, fraction: float) -> float:
    tf = TopFraction(fraction, int(values.size))
    tf.update(values[valid.astype(bool)])
    return tf.mean()


def _fractions(labels: np.ndarray, meta: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    valid = _valid_np(meta, labels.shape)
    n = int(valid.sum())
    counts = np.bincount(labels[valid].astype(np.int64).ravel(), minlength=len(names))[: len(names)]
    return {name: (float(counts[i]) / n if n else 0.0) for i, name in enumerate(names)}


def _to_source(plugin: DomainPlugin, array: np.ndarray, meta: Mapping[str, Any], kind: str) -> np.ndarray:
    """A label map (``kind="labels"``) or heat map (``"heat"``) on the model grid of ``meta`` -> the source grid.

    Uses the domain's own inverse (the CT source affine and shape, the fundus / X-ray letterbox); a
    plugin may provide ``to_source_grid(array, meta, kind=...)`` itself.
    """
    own = getattr(plugin, "to_source_grid", None)
    if callable(own):
        return np.asarray(own(array, meta, kind=kind))
    labels = kind == "labels"
    name = plugin.name
    if name == "ct":
        from unimae.domains.ct.preprocess import to_source_grid

        arr = array.astype(np.float32)[None]
        return to_source_grid(arr, meta, mode="nearest" if labels else "bilinear")[0].numpy()
    if name == "fundus":
        from unimae.domains.fundus.writer import to_source_grid

        return to_source_grid(array.astype(np.int64) if labels else array, meta, label=labels)
    if name == "xray":
        from unimae.domains.xray.output import to_source_grid

        return to_source_grid(array, meta, kind="labels" if labels else "heat")
    shape = tuple(int(s) for s in (meta.get("source_shape") or array.shape))
    crop = meta.get("crop")
    if crop is not None and tuple(array.shape) != shape:  # a centre crop / pad (multispectral eval view)
        r0, c0, h, w = (int(v) for v in crop)
        out = np.zeros(shape, dtype=array.dtype)
        ys, xs = max(0, r0), max(0, c0)
        ye, xe = min(shape[0], r0 + h), min(shape[1], c0 + w)
        out[ys:ye, xs:xe] = array[ys - r0 : ye - r0, xs - c0 : xe - c0]
        return out
    if tuple(array.shape) == shape:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=shape, mode="nearest" if labels else ("bilinear" if len(shape) == 2 else "trilinear"))
    return out[0, 0].numpy()


# ------------------------------------------------------------------------------------------------
# displays and overlays (also used by the app)
# ------------------------------------------------------------------------------------------------
def _stretch(band: np.ndarray, valid: np.ndarray | None, lo_pct: float = 2.0, hi_pct: float = 98.0) -> np.ndarray:
    vals = band[valid] if valid is not None and valid.any() else band.ravel()
    if not vals.size:
        return np.zeros_like(band, dtype=np.float32)
    lo, hi = np.percentile(vals, [lo_pct, hi_pct])
    return np.clip((band - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0).astype(np.float32)


def _band_order(channels: Sequence[Mapping[str, Any]], rgb_bands: Sequence[str]) -> list[int] | None:
    names = [str(c.get("name")) for c in channels]
    if rgb_bands and all(b in names for b in rgb_bands) and len(rgb_bands) == 3:
        return [names.index(b) for b in rgb_bands]
    wls = [c.get("wavelength") for c in channels]
    idx = []
    for target in (0.665, 0.56, 0.49):
        cands = [(abs(float(w) - target), i) for i, w in enumerate(wls) if w is not None]
        if not cands or min(cands)[0] > 0.05:
            return None
        idx.append(min(cands)[1])
    return idx


def _hu_window(preprocess: Mapping[str, Any] | None) -> tuple[float, float]:
    """The CT display window: the model's preprocessing window (preset name, pair or dict), else soft tissue."""
    win = (preprocess or {}).get("window")
    if isinstance(win, str):
        from unimae.domains.ct.preprocess import WINDOWS

        return WINDOWS.get(win, (40.0, 400.0))
    if isinstance(win, (list, tuple)) and len(win) == 2:
        return float(win[0]), float(win[1])
    if isinstance(win, Mapping) and "center" in win:
        return float(win["center"]), float(win["width"])
    return 40.0, 400.0


def _axial(volume: np.ndarray, affine: Any) -> np.ndarray:
    """The middle axial slice of an ``(I, J, K)`` volume, radiological display (patient right on the left)."""
    from unimae.domains.ct.geometry import to_ras_for_display

    vol = to_ras_for_display(volume, np.asarray(affine, dtype=np.float64)) if affine is not None else volume
    return np.ascontiguousarray(vol[::-1, :, vol.shape[2] // 2].T[::-1])


def display_image(
    sample: Sample, plugin: DomainPlugin | None = None, *, window: tuple[float, float] | None = None
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 view of a sample: RGB as is, grey replicated, a natural-colour composite of
    multispectral bands (2-98 % stretch), CT HU through ``window`` (middle axial slice for volumes)."""
    img = sample.image.detach().cpu().float().numpy()
    meta = sample.meta
    valid = _valid_np(meta, img.shape[1:])
    if img.ndim == 4:
        vol = img[0]
        if meta.get("units") == "HU":
            c, w = window or (40.0, 400.0)
            vol = np.clip((vol - (c - w / 2)) / w, 0.0, 1.0)
        elif _in_model_space(meta) and meta["normalization"].get("kind") == "window":
            vol = np.clip((vol + 1.0) / 2.0, 0.0, 1.0)
        else:
            vol = _stretch(vol, valid, 0.5, 99.5)
        grey = _axial(vol, meta.get("grid_affine", meta.get("affine")))
        return np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    rgb_bands = getattr(plugin, "rgb_bands", ()) if plugin is not None else ()
    if img.shape[0] >= 4 or (img.shape[0] == 3 and meta.get("crs") is not None):
        order = _band_order(meta.get("channels") or [], rgb_bands) or [0, 1, 2][: img.shape[0]]
        rgb = np.stack([_stretch(img[i], valid) for i in order], axis=-1)
    elif img.shape[0] == 3:
        in_unit = float(img.min()) >= -1e-3 and float(img.max()) <= 1.0 + 1e-3 and not _in_model_space(meta)
        rgb = np.clip(img.transpose(1, 2, 0), 0, 1) if in_unit else np.stack([_stretch(b, valid) for b in img], -1)
    else:
        grey = img[0]
        in_unit = float(grey.min()) >= -1e-3 and float(grey.max()) <= 1.0 + 1e-3 and not _in_model_space(meta)
        grey = np.clip(grey, 0, 1) if in_unit else _stretch(grey, valid, 0.5, 99.5)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb = np.where(valid[..., None], rgb, 0.0)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay_image(
    base: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    heat: np.ndarray | None = None,
    alpha: float = 0.5,
    threshold: float | None = None,
    vmax: float | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a label map (class 0 transparent, fixed colours per class) or a heat map (``inferno``, opacity
    growing with the value, the ``threshold`` contour in white) onto an ``(H, W, 3)`` uint8 image.

    Pixels outside ``valid`` become transparent (an RGBA result) when ``valid`` is given and not all True.
    """
    from matplotlib import colormaps

    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    out = base.astype(np.float32)
    if labels is not None:
        idx = np.asarray(labels).astype(np.int64)
        palette = _PALETTE[np.arange(int(idx.max(initial=0)) + 1) % len(_PALETTE)]
        palette[0] = 0.0
        wgt = (idx > 0).astype(np.float32)[..., None] * float(alpha)
        out = out * (1 - wgt) + palette[idx] * wgt
    if heat is not None:
        h = np.asarray(heat, dtype=np.float32)
        top = float(vmax) if vmax is not None else float(np.nanmax(h)) if h.size else 1.0
        norm = np.clip(h / top, 0.0, 1.0) if top > 0 else np.zeros_like(h)
        colour = colormaps["inferno"](norm)[..., :3].astype(np.float32) * 255.0
        wgt = (float(alpha) * np.sqrt(norm))[..., None]
        out = out * (1 - wgt) + colour * wgt
        if threshold is not None:
            m = h > float(threshold)
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            out[edge] = 255.0
    rgb = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if valid is not None and not valid.all():
        return np.concatenate([rgb, (valid.astype(np.uint8) * 255)[..., None]], axis=-1)
    return rgb


def _save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def _write_json(path: Path, obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path


class _Preview:
    """A decimated natural-colour composite and overlay of a streamed scene (fixed memory)."""

    def __init__(self, shape: tuple[int, int], size: int, channels: Sequence[Mapping[str, Any]], rgb_bands: Sequence[str]) -> None:
        h, w = shape
        self.step = max(1, int(np.ceil(max(h, w) / max(1, int(size)))))
        self.shape = (len(range(0, h, self.step)), len(range(0, w, self.step)))
        order = _band_order(channels, rgb_bands)
        self.order = order if order is not None else [0, 0, 0] if len(channels) < 3 else [0, 1, 2]
        self.rgb = np.zeros((3, *self.shape), dtype=np.float32)
        self.valid = np.zeros(self.shape, dtype=bool)
        self.over = np.zeros(self.shape, dtype=np.float32)

    def _slices(self, win: tuple[int, int, int, int]) -> tuple[slice, slice, slice, slice]:
        r, c, h, w = win
        s = self.step
        r0, c0 = -(-r // s) * s, -(-c // s) * s  # first sampled row/col inside the window
        return (slice(r0 - r, h, s), slice(c0 - c, w, s), slice(r0 // s, r0 // s + len(range(r0, r + h, s))),
                slice(c0 // s, c0 // s + len(range(c0, c + w, s))))  # fmt: skip

    def add_image(self, win: tuple[int, int, int, int], image: np.ndarray, valid: np.ndarray) -> None:
        sr, sc, dr, dc = self._slices(win)
        self.rgb[:, dr, dc] = image[self.order][:, sr, sc]
        self.valid[dr, dc] = valid[sr, sc]

    def add_overlay(self, win: tuple[int, int, int, int], values: np.ndarray) -> None:
        sr, sc, dr, dc = self._slices(win)
        self.over[dr, dc] = values[sr, sc]

    def write(self, path: Path, *, labels: bool, threshold: float | None = None) -> Path:
        rgb = np.stack([_stretch(b, self.valid) for b in self.rgb], axis=-1)
        base = (np.where(self.valid[..., None], rgb, 0.0) * 255 + 0.5).astype(np.uint8)
        if labels:
            img = overlay_image(base, labels=self.over.astype(np.int64), valid=self.valid)
        else:
            img = overlay_image(base, heat=self.over, threshold=threshold, valid=self.valid)
        return _save_png(img, path)


# ------------------------------------------------------------------------------------------------
# writing results
# ------------------------------------------------------------------------------------------------
def write_prediction(
    pred: Prediction, out_dir: str | Path, stem: str, *, alpha: float = 0.5, plugin: DomainPlugin | None = None
) -> dict[str, Path]:
    """Write a prediction in its input's geometry, atomically; returns ``{name: path}``.

    * segment: ``STEM_seg`` + the domain's suffix (NIfTI with the source affine, GeoTIFF with the source
      CRS / transform / nodata, PNG) and ``STEM_overlay.png`` on the original image (middle axial slice
      for volumes, natural colour for multispectral);
    * classify: the report only;
    * anomaly: ``STEM_heatmap`` (float) and, with a threshold, ``STEM_anomaly_mask`` (0/1) in the same
      formats, and ``STEM_overlay.png``;
    * always ``STEM.json``: task, classes, scores / probabilities, thresholds and the input's geometry
      (never patient fields).
    """
    plugin = plugin or get_domain(pred.domain)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = result_suffix(plugin)
    files: dict[str, Path] = {}
    meta = pred.meta
    nodata_ok = "nodata" in inspect.signature(plugin.write).parameters

    def write_map(name: str, array: np.ndarray, kw: dict[str, Any]) -> None:
        path = out_dir / f"{stem}_{name}{suffix}"
        files[name] = plugin.write(array, meta, path, **(kw if nodata_ok else {}))

    if pred.task == "segment" and pred.label_map is not None:
        k = len(pred.class_names)
        write_map("seg", pred.label_map, {"nodata": _label_nodata(meta.get("nodata"), k)})
        files["overlay"] = _overlay_file(pred, plugin, out_dir / f"{stem}_overlay.png", alpha, labels=pred.label_map)
    elif pred.task == "anomaly" and pred.heatmap is not None:
        write_map("heatmap", pred.heatmap.astype(np.float32), {"nodata": _heat_nodata(meta.get("nodata"))})
        if pred.anomaly_mask is not None:
            write_map("anomaly_mask", pred.anomaly_mask.astype(np.uint8), {"nodata": 255.0})
        files["overlay"] = _overlay_file(pred, plugin, out_dir / f"{stem}_overlay.png", alpha, heat=pred.heatmap)
    files["report"] = _write_json(out_dir / f"{stem}.json", pred.report(files))
    return files


def _overlay_file(
    pred: Prediction, plugin: DomainPlugin, path: Path, alpha: float, *, labels=None, heat=None
) -> Path | None:
    if pred.source is None:
        return None
    window = _hu_window(pred.preprocess)
    base = display_image(pred.source, plugin, window=window)
    valid = None
    if labels is not None and labels.ndim == 3:
        labels = _axial(labels, pred.meta.get("affine"))
    if heat is not None and heat.ndim == 3:
        heat = _axial(heat, pred.meta.get("affine"))
    if base.shape[:2] != (labels if labels is not None else heat).shape:
        return None  # a model-space sample on another grid than its source: nothing to overlay on
    if pred.source.image.ndim == 3:
        v = _valid_np(pred.meta, base.shape[:2])
        valid = v if pred.meta.get("crs") is not None else None
    vmax = None
    if heat is not None:
        vmax = max(float(heat.max(initial=0.0)), float(pred.threshold or 0.0) * 1.5) or None
    img = overlay_image(base, labels=labels, heat=heat, alpha=alpha, threshold=pred.threshold, vmax=vmax, valid=valid)
    return _save_png(img, path)


# ------------------------------------------------------------------------------------------------
# files and folders
# ------------------------------------------------------------------------------------------------
def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem if path.is_file() or path.suffix else name


def has_dicom_magic(path: Path) -> bool:
    """The file carries DICOM's ``DICM`` preamble marker (at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _looks_dicom(path: Path) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or has_dicom_magic(path)


def collect_inputs(inputs: str | Path, plugin: DomainPlugin) -> tuple[list[Path], list[Path]]:
    """``(inputs, skipped)`` for a file, a DICOM series folder or a folder of inputs.

    A folder's non-hidden files are all inputs (files of another kind fail with a one-line error
    rather than being skipped) except the masks of other files there (CHASE_DB1's ``_1stHO``/``_2ndHO``,
    STARE's ``.ah``/``.vk``, ``_mask``, ``_fov`` ...: see :func:`~unimae.domains.datasets.mask_files_among`),
    which are skipped; its sub-folders are inputs when the domain reads them (DICOM series) and are
    reported as skipped otherwise. A dataset folder with no files but an ``images/`` sub-folder (DRIVE's
    ``training/``) is read through that sub-folder.
    """
    from unimae.domains.datasets import image_folder_of, mask_files_among

    p = Path(inputs).expanduser()
    if not p.exists():
        raise InputError("input not found", p)
    if p.is_file():
        return [p], []
    children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
    files = [c for c in children if c.is_file()]
    if plugin.accepts(p) and any(_looks_dicom(f) for f in files[:32]):
        return [p], []
    if not files and image_folder_of(p) is not None:
        return collect_inputs(image_folder_of(p), plugin)  # type: ignore[arg-type]
    masks = mask_files_among(files)
    items, skipped = [], []
    for c in children:
        if c in masks:
            skipped.append(c)  # some image's mask: never an input
        elif c.is_file() or plugin.accepts(c):
            items.append(c)
        else:
            skipped.append(c)
    if not items:
        raise InputError(f"folder holds no files to predict (accepted: {', '.join(plugin.extensions)})", p)
    return items, skipped


def _with_fov(predictor: Predictor, path: Path) -> Path | Sample:
    """``path``, or its sample read with the field-of-view mask published beside it (DRIVE's ``mask/``,
    ``<stem>_fov.png``) for plugins that take one; the report's ``fov_source`` says which was used."""
    from unimae.domains.datasets import fov_for_image

    if not path.is_file() or "fov_mask" not in inspect.signature(predictor.plugin.read).parameters:
        return path
    fov = fov_for_image(path)
    if fov is None:
        return path
    predictor.check_input(path)
    return predictor.plugin.read(path, fov_mask=fov)


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did: outputs per input, one-line errors, the CSV."""

    outputs: dict[str, dict[str, Path]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    csv: Path | None = None
    unexpected: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def _csv_row(pred: Prediction, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"file": name}
    if pred.task == "classify":
        row["predicted"] = ";".join(pred.predicted or [])
        row.update({f"p_{n}": round(v, 6) for n, v in (pred.probabilities or {}).items()})
    elif pred.task == "segment":
        row.update({f"fraction_{n}": round(v, 6) for n, v in (pred.class_fractions or {}).items()})
    else:
        row.update(score=pred.score, is_anomalous=pred.is_anomalous,
                   anomalous_fraction=_mask_fraction(pred.anomaly_mask, pred.meta))  # fmt: skip
    return row


def _report_row(report: Mapping[str, Any], name: str, class_names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"file": name}
    if "class_fractions" in report:
        row.update({f"fraction_{n}": round(float(v), 6) for n, v in (report["class_fractions"] or {}).items()})
    else:
        row.update(score=report.get("score"), is_anomalous=report.get("is_anomalous"),
                   anomalous_fraction=report.get("anomalous_fraction"))  # fmt: skip
    return row


def predict_paths(
    checkpoint: str | Path,
    inputs: str | Path,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    image_threshold: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    probabilities: bool = False,
    on_error: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Predict every input (a file, a DICOM series folder, or a folder of them) and write the results.

    Each input gets the files of :func:`write_prediction` (GeoTIFF segmentation / anomaly maps are
    streamed with :meth:`Predictor.predict_geotiff`); ``OUT/predictions.csv`` has one row per input
    (class probabilities, class fractions or anomaly scores, and the error of inputs that failed). A bad
    input is reported as one line (to ``on_error``) and the others still run.

    Raises:
        InputError: for a bad checkpoint, device or input path (nothing can run).
    """
    from tqdm.auto import tqdm

    predictor = load_predictor(checkpoint, device=device, precision=precision)
    items, skipped = collect_inputs(inputs, predictor.plugin)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(skipped=[str(s) for s in skipped])
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    report = on_error or (lambda msg: tqdm.write(f"{PROG}: error: {msg}", file=sys.stderr))
    bar = tqdm(items, desc=f"predict ({predictor.domain} {predictor.task})", unit="file", disable=not progress)
    for path in bar:
        stem = _stem(path)
        if stem in used:
            stem = f"{stem}_{''.join(path.suffixes).lstrip('.').replace('.', '_') or 'dir'}"
        n = 2
        while stem in used:
            stem, n = f"{stem}_{n}", n + 1
        used.add(stem)
        try:
            if _streams(predictor.plugin) and predictor.task != "classify":
                files = predictor.predict_geotiff(path, out_dir, stem=stem, threshold=threshold,
                                                  image_threshold=image_threshold, probabilities=probabilities,
                                                  progress=progress)  # fmt: skip
                rep = json.loads(files["report"].read_text())
                rows.append(_report_row(rep, path.name, predictor.class_names))
            else:
                pred = predictor.predict(_with_fov(predictor, path), threshold=threshold, image_threshold=image_threshold)
                files = write_prediction(pred, out_dir, stem, plugin=predictor.plugin)
                rows.append(_csv_row(pred, path.name))
            summary.outputs[str(path)] = files
        except InputError as err:
            msg = str(err) if path.name in str(err) else f"{path.name}: {err}"
            summary.errors[str(path)] = msg
            rows.append({"file": path.name, "error": msg})
            report(msg)
        except (OSError, ValueError, RuntimeError) as err:  # unexpected: still one line, keep going
            msg = f"{path.name}: {type(err).__name__}: {' '.join(str(err).split())}"
            summary.unexpected = True
            summary.errors[str(path)] = msg
            rows.append({"file": path.name, "error": msg})
            report(msg)
    summary.csv = _write_csv(out_dir / "predictions.csv", rows)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns and key != "error":
                columns.append(key)
    columns.append("error")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------------
# the CLI command
# ------------------------------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    """Run ``unimae predict``: 0 when every input succeeded, 2 when an input or the checkpoint was bad, 1 otherwise."""
    try:
        summary = predict_paths(
            args.checkpoint, args.input, args.output, threshold=args.threshold,
            image_threshold=getattr(args, "image_threshold", None), device=args.device, precision=args.precision,
            progress=not getattr(args, "no_progress", False), probabilities=getattr(args, "probabilities", False),
        )  # fmt: skip
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    n_ok, n_bad = len(summary.outputs), len(summary.errors)
    for s in summary.skipped:
        what = "folder" if Path(s).is_dir() else "file"
        why = "not an input of this model" if Path(s).is_dir() else "the mask of an image beside it"
        print(f"{PROG}: note: skipped {what} {Path(s).name} ({why})", file=sys.stderr)
    print(f"{PROG}: predicted {n_ok} input(s) into {args.output}" + (f"; {n_bad} failed" if n_bad else ""))
    if not n_bad:
        return 0
    return 1 if summary.unexpected else 2
