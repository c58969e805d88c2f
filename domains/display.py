"""Generic pictures of samples, for the plugins' default ``display_image`` and the app's overlays.

A plugin with its own way of showing data (CT's HU windows on RAS slices, multispectral composites)
overrides :meth:`~unimae.domains.base.DomainPlugin.display_image`; everything else goes through
:func:`picture`: RGB as is, grey replicated, a natural-colour composite of several bands (2-98 %
stretch), pixels outside ``valid`` black. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unimae.domains.sample import Sample

__all__ = ["valid_np", "in_model_space", "stretch", "band_order", "picture", "grey_volume_slice"]


def valid_np(meta: Mapping[str, Any], shape: Sequence[int]) -> np.ndarray:
    """``meta["valid"]`` as a bool array of ``shape`` (all True when absent or of another shape)."""
    v = meta.get("valid")
    if v is None:
        return np.ones(tuple(shape), dtype=bool)
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    arr = arr.astype(bool)
    return arr if arr.shape == tuple(shape) else np.ones(tuple(shape), dtype=bool)


def in_model_space(meta: Mapping[str, Any]) -> bool:
    """True for samples already preprocessed (synthetic data, or the output of ``preprocess``)."""
    norm = meta.get("normalization")
    return isinstance(norm, Mapping) and norm.get("kind") not in (None, "scale")


def stretch(band: np.ndarray, valid: np.ndarray | None, lo_pct: float = 2.0, hi_pct: float = 98.0) -> np.ndarray:
    """``band`` mapped to ``[0, 1]`` between two percentiles of its valid values."""
    vals = band[valid] if valid is not None and valid.any() else band.ravel()
    if not vals.size:
        return np.zeros_like(band, dtype=np.float32)
    lo, hi = np.percentile(vals, [lo_pct, hi_pct])
    return np.clip((band - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0).astype(np.float32)


def band_order(channels: Sequence[Mapping[str, Any]], rgb_bands: Sequence[str]) -> list[int] | None:
    """Indices of the red, green and blue bands: by name (``rgb_bands``), else by wavelength; None if unknown."""
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


def picture(sample: Sample, rgb_bands: Sequence[str] = ()) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 view of a 2D sample: RGB as is (stretched when in model space), grey
    replicated, a natural-colour composite of multispectral bands (2-98 % stretch, bands by ``rgb_bands``
    or wavelength); black outside ``valid``."""
    img = sample.image.detach().cpu().float().numpy()
    meta = sample.meta
    valid = valid_np(meta, img.shape[1:])
    if img.shape[0] >= 4 or (img.shape[0] == 3 and meta.get("crs") is not None):
        order = band_order(meta.get("channels") or [], rgb_bands) or [0, 1, 2][: img.shape[0]]
        rgb = np.stack([stretch(img[i], valid) for i in order], axis=-1)
    elif img.shape[0] == 3:
        in_unit = float(img.min()) >= -1e-3 and float(img.max()) <= 1.0 + 1e-3 and not in_model_space(meta)
        rgb = np.clip(img.transpose(1, 2, 0), 0, 1) if in_unit else np.stack([stretch(b, valid) for b in img], -1)
    else:
        grey = img[0]
        in_unit = float(grey.min()) >= -1e-3 and float(grey.max()) <= 1.0 + 1e-3 and not in_model_space(meta)
        grey = np.clip(grey, 0, 1) if in_unit else stretch(grey, valid, 0.5, 99.5)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb = np.where(valid[..., None], rgb, 0.0)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def grey_volume_slice(sample: Sample) -> np.ndarray:
    """The middle slice along the last axis of a volume's first channel, stretched, as ``(H, W, 3)`` uint8."""
    vol = sample.image.detach().cpu().float().numpy()[0]
    vol = stretch(vol, valid_np(sample.meta, vol.shape), 0.5, 99.5)
    grey = vol[:, :, vol.shape[2] // 2]
    return np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
