"""The rendering and writing side of the predict layer: pictures, overlays and result files.

Nothing here runs a model: a :class:`~unimae.apps.prediction.Prediction` (from :mod:`unimae.apps.predictor`)
is drawn with its domain plugin's display methods (``display_image``, ``overview``, ``display_window``) and
written with the plugin's ``write`` (NIfTI with the source affine, GeoTIFF with the source CRS / transform /
nodata, PNG at the source resolution: one signature for every domain), plus an overlay PNG and a JSON
report. The streamed GeoTIFF path (:mod:`unimae.apps.predict_stream`) uses :class:`_Preview` for its overlay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unimae.apps.prediction import Prediction, _jsonable
from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path
from unimae.core.tasks import get_task
from unimae.core.tasks.base import heat_nodata, label_nodata
from unimae.domains import get_domain
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.display import band_order, grey_volume_slice, picture, stretch, valid_np

__all__ = ["display_image", "overlay_image", "write_prediction", "result_suffix"]

_PALETTE = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
        (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    ],
    dtype=np.float32,
)  # fmt: skip


def result_suffix(plugin: DomainPlugin) -> str:
    """The file suffix a domain writes results in (its ``suffix``: ``.nii.gz``, ``.tif``, ``.png`` ...)."""
    return plugin.suffix


_label_nodata, _heat_nodata = label_nodata, heat_nodata  # the old names (the task layer owns them now)


def _int_dtype_for(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    for dt in ("uint8", "uint16", "int16", "int32"):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return "int32"


def display_image(
    sample: Sample, plugin: DomainPlugin | None = None, *, window: tuple[float, float] | None = None
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 view of a sample as its domain shows it (``plugin.display_image``: CT HU through
    ``window`` on the middle axial slice, a natural-colour composite of multispectral bands ...); without a
    plugin, the generic picture (RGB as is, grey replicated, several bands by wavelength)."""
    if plugin is not None:
        return plugin.display_image(sample, window=window)
    return grey_volume_slice(sample) if sample.image.ndim == 4 else picture(sample)


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
        order = band_order(channels, rgb_bands)
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
        rgb = np.stack([stretch(b, self.valid) for b in self.rgb], axis=-1)
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
    files: dict[str, Path] = {}
    meta = pred.meta

    def write_map(name: str, array: np.ndarray, kind: str, nodata: float) -> None:
        files[name] = plugin.write(array, meta, out_dir / f"{stem}_{name}{plugin.suffix}", kind=kind, nodata=nodata)

    maps, layer = get_task(pred.task).result_maps(pred)
    for name, array, kind, nodata in maps:
        write_map(name, array, kind, nodata)
    if layer is not None:
        files["overlay"] = _overlay_file(pred, plugin, out_dir / f"{stem}_overlay.png", alpha, **layer)
    files["report"] = _write_json(out_dir / f"{stem}.json", pred.report(files))
    return files


def _overlay_file(
    pred: Prediction, plugin: DomainPlugin, path: Path, alpha: float, *, labels=None, heat=None
) -> Path | None:
    if pred.source is None:
        return None
    base = plugin.display_image(pred.source, window=plugin.display_window(pred.preprocess))
    valid = None
    if labels is not None and labels.ndim == 3:
        labels = plugin.overview(labels, pred.meta)
    if heat is not None and heat.ndim == 3:
        heat = plugin.overview(heat, pred.meta)
    if base.shape[:2] != (labels if labels is not None else heat).shape:
        return None  # a model-space sample on another grid than its source: nothing to overlay on
    if pred.source.image.ndim == 3:
        v = valid_np(pred.meta, base.shape[:2])
        valid = v if pred.meta.get("crs") is not None else None
    vmax = None
    if heat is not None:
        vmax = max(float(heat.max(initial=0.0)), float(pred.threshold or 0.0) * 1.5) or None
    img = overlay_image(base, labels=labels, heat=heat, alpha=alpha, threshold=pred.threshold, vmax=vmax, valid=valid)
    return _save_png(img, path)
