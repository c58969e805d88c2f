"""Results back to the user: PNG label maps / heat maps on the source pixel grid, and PNG overlays.

A model sees a letterboxed ``input_size`` view of the radiograph (see :mod:`unimae.domains.xray.augment`);
:func:`to_source_grid` crops the letterbox padding recorded in ``meta["letterbox"]`` and resizes back to
``meta["source_shape"]`` (nearest for labels, bilinear for heat maps), so a written mask lies exactly on
the original image. Writes are atomic (:func:`unimae.core.fileio.atomic_path`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path

__all__ = ["to_source_grid", "write_png", "overlay_png", "PALETTE", "result_kind"]

#: RGB colours (0..1) for label 1, 2, ... (label 0 = background is not drawn).
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.894, 0.102, 0.110),
    (0.216, 0.494, 0.722),
    (0.302, 0.686, 0.290),
    (0.596, 0.306, 0.639),
    (1.000, 0.498, 0.000),
    (1.000, 1.000, 0.200),
    (0.651, 0.337, 0.157),
    (0.969, 0.506, 0.749),
)


def _numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:
            array = array.float()
        return array.numpy()
    return np.asarray(array)


def result_kind(array: np.ndarray, kind: str = "auto") -> str:
    """``"labels"`` for integer/bool arrays, ``"heat"`` for float ones (or ``kind`` when given)."""
    kind = look_up(kind, ("auto", "labels", "heat"), what="result kind")
    if kind != "auto":
        return kind
    return "heat" if np.issubdtype(array.dtype, np.floating) else "labels"


def _as_2d(array: np.ndarray, kind: str) -> np.ndarray:
    """``(H, W)``, ``(1, H, W)`` or, for labels, ``(K, H, W)`` class scores (argmax) -> ``(H, W)``."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and kind == "labels":
        array = array.argmax(axis=0)
    if array.ndim != 2:
        raise InputError(f"a {kind} result must be (H, W), (1, H, W) or (K, H, W) scores; got shape {array.shape}")
    return array


def _resize(array: np.ndarray, shape: tuple[int, int], kind: str) -> np.ndarray:
    import cv2

    if tuple(array.shape) == tuple(shape):
        return array
    if kind == "labels":
        out = cv2.resize(array.astype(np.uint16), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        return out.astype(np.int64)
    return cv2.resize(array.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def to_source_grid(array: Any, meta: dict[str, Any], *, kind: str = "auto") -> np.ndarray:
    """Map a result on the model grid back onto the source pixel grid of ``meta``.

    Args:
        array: ``(H, W)``, ``(1, H, W)`` or ``(K, H, W)`` class scores (tensor or array).
        meta: the sample's meta; uses ``letterbox`` (if the model saw a letterboxed view) and
            ``source_shape``.
        kind: ``"labels"`` (nearest, int64 out), ``"heat"`` (bilinear, float32 out) or ``"auto"``.

    Returns:
        ``(H0, W0)`` array with ``(H0, W0) = meta["source_shape"]``.
    """
    array = _numpy(array)
    kind = result_kind(array, kind)
    if kind == "labels":
        if np.issubdtype(array.dtype, np.floating) and array.ndim == 2:
            if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
                raise InputError("a label map must hold whole numbers")
        if array.ndim == 2 and array.size and array.min() < 0:
            raise InputError("a label map must not hold negative labels")
    elif not np.isfinite(array).all():
        raise InputError("the heat map contains NaN or Inf values")
    array = _as_2d(array, kind)
    if kind == "labels":
        array = array.astype(np.int64)
        if array.size and array.max() > 65535:
            raise InputError(f"label values up to {int(array.max())} do not fit in a 16-bit PNG")
    box = meta.get("letterbox")
    if box is not None and tuple(array.shape) == tuple(box["size"]):
        top, left, h, w = box["box"]
        array = array[top : top + h, left : left + w]
    shape = meta.get("source_shape") or array.shape
    return _resize(array, (int(shape[0]), int(shape[1])), kind)


def _png_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"x-ray results are written as .png, not {path.suffix or 'no extension'!r}", path)
    return path


def write_png(
    array: Any,
    meta: dict[str, Any],
    path: str | Path,
    *,
    kind: str = "auto",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a label map or heat map as a PNG on the source grid of ``meta``, atomically.

    Label maps keep their class indices (8-bit, or 16-bit when a label exceeds 255). Heat maps are
    8-bit: values in ``[0, 1]`` are scaled by 255, any other range is stretched from its min..max. A
    ``unimae`` PNG text chunk records the kind, the value range and the class names.
    """
    from PIL import Image, PngImagePlugin

    path = _png_path(path)
    raw = _numpy(array)
    kind = result_kind(raw, kind)
    grid = to_source_grid(raw, meta, kind=kind)
    note: dict[str, Any] = {"kind": kind, "source_shape": list(grid.shape)}
    if kind == "labels":
        dtype = np.uint8 if grid.max(initial=0) <= 255 else np.uint16
        out = grid.astype(dtype)
        if class_names is not None:
            note["classes"] = [str(c) for c in class_names]
    else:
        lo, hi = float(grid.min()), float(grid.max())
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        scaled = (grid - lo) / (hi - lo) if hi > lo else np.zeros_like(grid)
        out = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
        note.update(vmin=lo, vmax=hi)
    info = PngImagePlugin.PngInfo()
    info.add_text("unimae", json.dumps(note))
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG", pnginfo=info)
    return path


def _display(image: Any) -> np.ndarray:
    """A grey image (any range, ``(H, W)`` or ``(1, H, W)``) as ``[0, 1]`` with a 0.5-99.5 % window."""
    img = _numpy(image).astype(np.float32)
    while img.ndim > 2 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3:
        img = img.mean(axis=0)
    if img.ndim != 2:
        raise InputError(f"overlay needs a grey image (H, W) or (1, H, W), got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError("the image contains NaN or Inf values")
    lo, hi = np.percentile(img, [0.5, 99.5])
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(img)


def overlay_png(
    image_grey: Any,
    mask_or_heat: Any,
    path: str | Path,
    alpha: float = 0.5,
    *,
    kind: str = "auto",
    threshold: float | None = None,
    cmap: str = "inferno",
) -> Path:
    """Write an RGB PNG of ``image_grey`` with a label map or heat map blended on top, atomically.

    Args:
        image_grey: ``(H, W)`` or ``(1, H, W)`` image in any range (displayed with a 0.5-99.5 % window).
        mask_or_heat: labels (integers; 0 is transparent, 1.. coloured from :data:`PALETTE`) or a heat map
            (floats; ``[0, 1]`` or stretched from min..max, drawn with ``cmap`` and opacity ``alpha * heat``);
            resized to the image if needed.
        path: output ``.png``.
        alpha: overlay opacity in ``[0, 1]``.
        kind: ``"auto"``, ``"labels"`` or ``"heat"``.
        threshold: heat below it is not drawn.
    """
    import matplotlib

    path = _png_path(path)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    grey = _display(image_grey)
    raw = _numpy(mask_or_heat)
    kind = result_kind(raw, kind)
    over = to_source_grid(raw, {"source_shape": grey.shape}, kind=kind)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if kind == "labels":
        weight = (over > 0).astype(np.float32) * float(alpha)
        colours = np.zeros_like(rgb)
        for k in np.unique(over[over > 0]):
            colours[over == k] = PALETTE[(int(k) - 1) % len(PALETTE)]
    else:
        lo, hi = float(over.min()), float(over.max())
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        heat = np.clip((over - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(over)
        weight = heat * float(alpha)
        if threshold is not None:
            weight = np.where(over >= float(threshold), weight, 0.0)
        colours = matplotlib.colormaps[cmap](heat)[..., :3]
    out = rgb * (1.0 - weight[..., None]) + colours * weight[..., None]
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)).save(tmp, format="PNG")
    return path
