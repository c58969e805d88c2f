"""Fundus preprocessing into model space: optional CLAHE, optional green emphasis, mean/std.

The recorded ``meta["normalization"]`` is the whole intensity contract, so a checkpoint can carry it
and :func:`preprocess_fundus` can replay it (pass it back as ``normalize=``)::

    {"kind": "meanstd", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "input_range": [0.0, 1.0], "clahe": {"clip_limit": 2.0, "tile_grid": 8} | None,
     "green": 0.0, "outside_fov": 0.0}

Pixels outside the field of view are 0 in model space (the channel mean), whatever the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.domains.base import Sample, channel_list

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CHANNEL_NAMES",
    "NOMINAL_WAVELENGTHS",
    "normalization_spec",
    "apply_clahe",
    "preprocess_fundus",
    "denormalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CHANNEL_NAMES = ("R", "G", "B")
NOMINAL_WAVELENGTHS = (0.61, 0.55, 0.465)
"""Nominal peak sensitivities (µm) of a colour camera's R, G, B filters.

Colour fundus cameras have broad, overlapping Bayer filters, so these are *nominal* centres, given
so that a wavelength-conditioned (spectral) patch embedding can place fundus RGB next to
multispectral bands; they are not narrow-band measurements.
"""


def normalization_spec(normalize: str | Mapping[str, Any]) -> dict[str, Any]:
    """Resolve ``normalize`` (``"imagenet"``, ``"none"`` or a recorded ``meta['normalization']`` dict)."""
    if isinstance(normalize, Mapping):
        kind = normalize.get("kind")
        if kind in ("none", "image"):
            return {"kind": kind}
        if kind != "meanstd":
            raise InputError(f"normalization kind must be 'meanstd', 'image' or 'none', got {kind!r}")
        mean = [float(v) for v in normalize.get("mean", ())]
        std = [float(v) for v in normalize.get("std", ())]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InputError(f"normalization needs 3 means and 3 positive stds, got mean={mean} std={std}")
        return {"kind": "meanstd", "mean": mean, "std": std}
    name = look_up(str(normalize), ("imagenet", "image", "none"), what="fundus normalization")
    if name in ("none", "image"):
        return {"kind": name}
    return {"kind": "meanstd", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def apply_clahe(
    rgb: np.ndarray, valid: np.ndarray | None = None, *, clip_limit: float = 2.0, tile_grid: int = 8
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of the L channel of CIE LAB.

    Outside the field of view the lightness is replaced by the FOV mean before equalising, so the
    black surround does not distort the histograms of the border tiles. The equalisation runs on a
    16-bit lightness, so 16-bit sources keep their precision.

    Args:
        rgb: ``(H, W, 3)`` float32 in [0, 1].
        valid: ``(H, W)`` bool field of view, or None for the whole image.
        clip_limit: CLAHE clip limit (OpenCV units).
        tile_grid: number of tiles along each axis.

    Returns:
        ``(H, W, 3)`` float32 in [0, 1]; outside the FOV unchanged.
    """
    lab = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2LAB)  # L in [0, 100]
    lightness = lab[..., 0]
    if valid is not None and valid.any() and not valid.all():
        lightness = np.where(valid, lightness, float(lightness[valid].mean()))
    l16 = np.clip(lightness * (65535.0 / 100.0) + 0.5, 0, 65535).astype(np.uint16)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    lab[..., 0] = clahe.apply(l16).astype(np.float32) * (100.0 / 65535.0)
    out = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0.0, 1.0)
    if valid is not None:
        out = np.where(valid[..., None], out, rgb)
    return out.astype(np.float32)


def preprocess_fundus(
    sample: Sample,
    *,
    clahe: bool | None = None,
    green: float | bool | None = None,
    normalize: str | Mapping[str, Any] = "imagenet",
    clahe_clip: float = 2.0,
    clahe_tiles: int = 8,
    fov_diameter: int | None = None,
) -> Sample:
    """Bring a read fundus sample (RGB in [0, 1]) into model space.

    Args:
        sample: from :func:`~unimae.domains.fundus.plugin.FundusPlugin.read`; image ``(3, H, W)`` in [0, 1].
        clahe: CLAHE on the LAB lightness inside the field of view. ``None``: as recorded in a
            ``normalize`` dict, else off.
        green: green-channel emphasis weight in [0, 1]: every channel becomes
            ``(1 - green) * channel + green * G``; ``True`` = 1.0 (the green channel, replicated, as
            used for vessel segmentation). ``None``: as recorded in a ``normalize`` dict, else 0.
        normalize: ``"imagenet"`` (RETFound-compatible mean/std), ``"image"`` (each channel standardised
            by its own mean and std inside the field of view: robust to another camera's colour balance
            and exposure), ``"none"`` (keep [0, 1]) or a recorded ``meta["normalization"]`` dict (e.g.
            from a checkpoint) to replay.
        fov_diameter: resample the image (and ``valid``, and a mask) so that the field of view is this
            many pixels across: photographs from cameras of other resolutions then show vessels at the
            scale the model was trained at. Results go back to the source grid by the inverse resize
            (``meta["fov_scale"]`` records the factor). ``None``: keep the source resolution.
        clahe_clip: CLAHE clip limit.
        clahe_tiles: CLAHE tiles per axis.

    Returns:
        A new sample: image ``(3, H, W)`` float32, 0 outside the FOV; ``valid`` and the geometry kept;
        ``meta["normalization"]`` records what was applied.
    """
    current = sample.meta.get("normalization") or {}
    if current.get("kind") in ("meanstd", "image", "none"):
        raise InputError("sample is already preprocessed (meta['normalization'] is set); pass a read sample")
    image = sample.image
    if image.ndim != 3 or image.shape[0] != 3:
        raise InputError(
            f"fundus preprocessing needs a (3, H, W) RGB image, got {tuple(image.shape)}", sample.meta.get("path")
        )
    spec = normalization_spec(normalize)
    recorded = normalize if isinstance(normalize, Mapping) else {}
    if clahe is None:
        clahe_cfg = recorded.get("clahe")
        clahe = bool(clahe_cfg)
        if isinstance(clahe_cfg, Mapping):
            clahe_clip = float(clahe_cfg.get("clip_limit", clahe_clip))
            clahe_tiles = int(clahe_cfg.get("tile_grid", clahe_tiles))
    if green is None:
        green = float(recorded.get("green", 0.0))
    green = 1.0 if green is True else float(green or 0.0)
    if not 0.0 <= green <= 1.0:
        raise InputError(f"green emphasis must be in [0, 1], got {green}")

    if fov_diameter is None and isinstance(normalize, Mapping):
        fov_diameter = normalize.get("fov_diameter")
    meta = dict(sample.meta)
    valid = sample.valid.numpy().astype(bool)
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32, copy=True)
    mask = sample.mask
    if fov_diameter is not None:
        rgb, valid, mask, scale = _fov_resample(rgb, valid, mask, int(fov_diameter), sample.meta.get("path"))
        meta["fov_scale"] = scale
        meta["valid"] = torch.from_numpy(valid)
        meta["spacing"] = tuple(float(v) / scale for v in meta.get("spacing", (1.0, 1.0)))
    if clahe:
        rgb = apply_clahe(rgb, valid, clip_limit=clahe_clip, tile_grid=clahe_tiles)
    if green > 0:
        rgb = (1.0 - green) * rgb + green * rgb[..., 1:2]
    if spec["kind"] == "meanstd":
        rgb = (rgb - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
        record = dict(spec)
    elif spec["kind"] == "image":
        inside = rgb[valid] if valid.any() else rgb.reshape(-1, 3)
        mean, std = inside.mean(0), inside.std(0)
        rgb = (rgb - mean) / np.maximum(std, 1e-3)
        record = {"kind": "image", "mean": [float(v) for v in mean], "std": [float(v) for v in np.maximum(std, 1e-3)]}
    else:
        record = {"kind": "none"}  # intensities stay in [0, 1]
    rgb[~valid] = 0.0
    record.update(
        input_range=[0.0, 1.0],
        clahe={"clip_limit": float(clahe_clip), "tile_grid": int(clahe_tiles)} if clahe else None,
        green=green,
        outside_fov=0.0,
        fov_diameter=None if fov_diameter is None else int(fov_diameter),
    )
    meta["normalization"] = record
    if green >= 1.0:
        meta["channels"] = channel_list(["G", "G", "G"], [NOMINAL_WAVELENGTHS[1]] * 3)
    out = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return sample.replace(image=out, meta=meta, mask=mask)


def _fov_resample(
    rgb: np.ndarray, valid: np.ndarray, mask: torch.Tensor | None, diameter: int, path: Any
) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None, float]:
    """Resize so the FOV's larger extent is ``diameter`` pixels; image area-averaged when shrinking."""
    if diameter < 32:
        raise InputError(f"fov_diameter must be at least 32 pixels, got {diameter}", path)
    ys, xs = np.nonzero(valid)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) if len(ys) else max(valid.shape)
    scale = diameter / float(extent)
    if abs(scale - 1.0) < 1e-3:
        return rgb, valid, mask, 1.0
    h, w = valid.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(rgb, size, interpolation=interp)
    valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    if mask is not None:
        m = mask.numpy()
        m = cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_NEAREST_EXACT).astype(m.dtype)
        mask = torch.from_numpy(m)
    return rgb, valid, mask, scale


def denormalize(image: torch.Tensor | np.ndarray, normalization: Mapping[str, Any] | None) -> np.ndarray:
    """Invert the mean/std of ``normalization``: ``(C, H, W)`` model-space image -> ``(H, W, C)`` in [0, 1]."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = arr.astype(np.float32).transpose(1, 2, 0)
    norm = normalization or {}
    if norm.get("kind") in ("meanstd", "image") and len(norm.get("mean", ())) == arr.shape[-1]:
        arr = arr * np.asarray(norm["std"], np.float32) + np.asarray(norm["mean"], np.float32)
    return np.clip(arr, 0.0, 1.0)
