"""Write fundus results as PNGs on the source pixel grid: label maps, heat maps and overlays.

A result computed on a resized or letterboxed image is put back on the source grid first
(:func:`to_source_grid`): the letterbox recorded by the eval transform is undone exactly; any other
size is resized to ``meta["source_shape"]`` (nearest for labels, linear for heat maps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, PngImagePlugin

from unimae.core.errors import InputError, check_finite, look_up
from unimae.core.fileio import atomic_path

__all__ = ["write_prediction", "overlay_png", "to_source_grid", "DEFAULT_COLORS"]

DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (0, 230, 255),  # cyan: vessels / class 1
    (255, 215, 0),  # yellow
    (255, 40, 200),  # magenta
    (60, 255, 60),  # green
    (255, 120, 0),  # orange
    (90, 110, 255),  # blue
)
"""Overlay colours by class index (0, the background, is never drawn)."""


def _to_numpy(array: Any) -> np.ndarray:
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"expected a 2D (H, W) or (1, H, W) result, got shape {tuple(arr.shape)}")
    return arr


def _is_label(arr: np.ndarray) -> bool:
    return arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)


def to_source_grid(array: Any, meta: Mapping[str, Any], *, label: bool | None = None) -> np.ndarray:
    """Map a 2D result back onto the source image grid ``meta["source_shape"]``.

    Args:
        array: ``(H, W)`` (or ``(1, H, W)``) result on the model grid.
        meta: the sample's meta (``source_shape``; ``letterbox`` if it went through the eval transform).
        label: nearest-neighbour (True) or linear (False) resampling; ``None``: from the dtype.

    Returns:
        ``(H0, W0)`` array on the source grid, same dtype family as ``array``; outside the letterboxed
        region it is 0.
    """
    arr = _to_numpy(array)
    label = _is_label(arr) if label is None else label
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    source = tuple(int(s) for s in meta.get("source_shape") or arr.shape)
    interp = cv2.INTER_NEAREST_EXACT if label else cv2.INTER_LINEAR
    work = arr.astype(np.float32) if not label else arr.astype(np.int32 if arr.max(initial=0) > 65535 else np.uint16)
    box = meta.get("letterbox")
    if box and tuple(arr.shape) == tuple(box["size"]):
        top, left, bottom, right = box["inner"]
        y0, x0, y1, x1 = box["bbox"]
        out = np.zeros(source, dtype=work.dtype)
        inner = np.ascontiguousarray(work[top:bottom, left:right])
        out[y0:y1, x0:x1] = _resize(inner, (y1 - y0, x1 - x0), interp)
        return out
    if tuple(arr.shape) != source:
        return _resize(work, source, interp)
    return work


def _resize(arr: np.ndarray, shape: Sequence[int], interp: int) -> np.ndarray:
    if tuple(arr.shape) == tuple(shape):
        return arr
    if arr.dtype == np.int32:  # cv2.resize has no int32 nearest path on every build: go via float64
        return cv2.resize(arr.astype(np.float64), (int(shape[1]), int(shape[0])), interpolation=interp).astype(np.int32)
    return cv2.resize(arr, (int(shape[1]), int(shape[0])), interpolation=interp)


def write_prediction(
    array: Any,
    meta: Mapping[str, Any],
    path: str | Path,
    *,
    kind: str = "auto",
    bits: int = 8,
    mask_outside_fov: bool = True,
) -> Path:
    """Write a label map or heat map as a PNG at the source resolution, atomically.

    Args:
        array: ``(H, W)`` result: integer/bool class indices (label map) or float scores (heat map).
        meta: the sample's meta (``source_shape``, optional ``letterbox`` and ``valid``).
        path: output ``.png`` path.
        kind: ``"label"``, ``"heat"`` or ``"auto"`` (label for integer/bool arrays, heat for floats).
        bits: 8 or 16, for heat maps.
        mask_outside_fov: set the result to 0 where ``meta["valid"]`` is False (when its shape
            matches the result).

    Label maps: a binary map is stored as 0/255 (viewable, and read back as 0/1 by ``read_mask``);
    more classes are stored as class indices (8-bit, 16-bit beyond 255). Heat maps in [0, 1] are
    scaled to the full 8/16-bit range; other ranges are min-max scaled and the range is kept in the
    PNG text chunks ``unimae_min``/``unimae_max``.

    Returns:
        The written path.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError("fundus results are written as PNG; use a .png path", path)
    kind = look_up(kind, ("auto", "label", "heat"), what="result kind")
    if bits not in (8, 16):
        raise InputError(f"bits must be 8 or 16, got {bits}")
    arr = _to_numpy(array)
    if kind == "auto":
        kind = "label" if _is_label(arr) else "heat"
    if kind == "heat":
        arr = arr.astype(np.float32)
        check_finite(arr, "heat map", path)
    elif not _is_label(arr):
        if np.issubdtype(arr.dtype, np.floating):
            check_finite(arr, "label map", path)
        if not np.allclose(arr, np.round(arr)):
            raise InputError("label map has non-integer values; pass kind='heat' for scores", path)
        arr = np.round(arr).astype(np.int64)
    if arr.dtype != bool and _is_label(arr) and arr.min(initial=0) < 0:
        raise InputError("label map has negative class indices", path)
    valid = meta.get("valid")
    if mask_outside_fov and valid is not None:
        v = valid.numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
        if v.shape == arr.shape:
            arr = np.where(v.astype(bool), arr, 0).astype(arr.dtype)
    grid = to_source_grid(arr, meta, label=kind == "label")
    info = PngImagePlugin.PngInfo()
    if kind == "label":
        top = int(grid.max(initial=0))
        if top <= 1:
            image = Image.fromarray((grid > 0).astype(np.uint8) * 255)
        elif top <= 255:
            image = Image.fromarray(grid.astype(np.uint8))
        elif top <= 65535:
            image = Image.fromarray(grid.astype(np.uint16))
        else:
            raise InputError(f"label map has class index {top}, more than a 16-bit PNG holds", path)
        info.add_text("unimae_kind", "label")
    else:
        lo, hi = float(grid.min(initial=0.0)), float(grid.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        scaled = (grid - lo) / (hi - lo) if hi > lo else np.zeros_like(grid)
        full = 255 if bits == 8 else 65535
        q = np.clip(np.round(scaled * full), 0, full)
        image = Image.fromarray(q.astype(np.uint8)) if bits == 8 else Image.fromarray(q.astype(np.uint16))
        info.add_text("unimae_kind", "heat")
        info.add_text("unimae_min", repr(lo))
        info.add_text("unimae_max", repr(hi))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def overlay_png(
    image_rgb_uint8: Any,
    mask_or_heat: Any,
    path: str | Path,
    *,
    alpha: float = 0.5,
    colors: Sequence[Sequence[int]] | None = None,
    cmap: str = "inferno",
    threshold: float | None = None,
) -> Path:
    """Write a PNG overlay of a label map or heat map on the original image, atomically.

    Args:
        image_rgb_uint8: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey) original image.
        mask_or_heat: ``(H, W)`` integer class map (class 0 transparent, class k in ``colors[k]``) or
            float heat map in [0, 1] (blended with opacity ``alpha * heat`` through ``cmap``); resized
            to the image if its size differs.
        path: output ``.png`` path.
        alpha: overlay opacity in [0, 1].
        colors: RGB colour per class index (default :data:`DEFAULT_COLORS`).
        cmap: matplotlib colormap name for heat maps.
        threshold: for heat maps, hide values below it.

    Returns:
        The written path.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError("overlays are written as PNG; use a .png path", path)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    base = (
        image_rgb_uint8.detach().cpu().numpy()
        if isinstance(image_rgb_uint8, torch.Tensor)
        else np.asarray(image_rgb_uint8)
    )
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=-1)
    if base.ndim != 3 or base.shape[-1] not in (3, 4):
        raise InputError(f"overlay needs an (H, W, 3) RGB image, got shape {base.shape}")
    base = base[..., :3]
    if base.dtype != np.uint8:
        raise InputError(f"overlay needs a uint8 image, got {base.dtype}")
    over = _to_numpy(mask_or_heat)
    h, w = base.shape[:2]
    label = _is_label(over)
    if over.shape != (h, w):
        over = _resize(
            over.astype(np.uint16 if label else np.float32), (h, w), cv2.INTER_NEAREST_EXACT if label else cv2.INTER_LINEAR
        )
    out = base.astype(np.float32)
    if label:
        palette = np.asarray(colors if colors is not None else DEFAULT_COLORS, dtype=np.float32)
        idx = over.astype(np.int64)
        if idx.max(initial=0) >= len(palette):
            raise InputError(f"class index {int(idx.max())} has no colour ({len(palette)} colours given)")
        weight = (idx > 0).astype(np.float32)[..., None] * float(alpha)
        out = out * (1 - weight) + palette[idx] * weight
    else:
        from matplotlib import colormaps

        heat = over.astype(np.float32)
        check_finite(heat, "heat map", path)
        heat = np.clip(heat, 0.0, 1.0)
        shown = heat if threshold is None else np.where(heat >= threshold, heat, 0.0)
        rgb = colormaps[cmap](heat)[..., :3].astype(np.float32) * 255.0
        weight = (float(alpha) * shown)[..., None]
        out = out * (1 - weight) + rgb * weight
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    with atomic_path(path) as tmp:
        result.save(tmp, format="PNG")
    return path
