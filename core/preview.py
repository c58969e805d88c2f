"""Pretraining previews: a PNG of ``input | masked | reconstruction`` for one sample (matplotlib, atomic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.core.fileio import save_png

__all__ = ["save_preview"]

_RGB_WAVELENGTHS = (0.665, 0.560, 0.490)  # µm: red, green, blue (Sentinel-2 B04, B03, B02)


def _display_channels(channels: Sequence[Mapping[str, Any]] | None, n: int) -> list[int]:
    """Three channels as RGB (by wavelength when the bands are optical, else the first three), or one."""
    if n < 3:
        return [0]
    waves = [c.get("wavelength") for c in (channels or [])][:n]
    if len(waves) == n and all(w is not None for w in waves):
        picks = [int(np.argmin([abs(float(w) - target) for w in waves])) for target in _RGB_WAVELENGTHS]
        if len(set(picks)) == 3 and all(abs(float(waves[p]) - t) < 0.05 for p, t in zip(picks, _RGB_WAVELENGTHS)):
            return picks
    return [0, 1, 2]


def _plane(t: torch.Tensor, orientation: str | None) -> np.ndarray:
    """``(C, *S)`` -> ``(C, rows, cols)``: 2D as is; a volume's middle slice along its last axis.

    For ``RAS`` volumes (``(C, I, J, K)``, the CT plugin's model space) that is the axial slice in
    radiological display: patient's right on the viewer's left, anterior at the top.
    """
    t = t.detach().float().cpu()
    if t.ndim == 4:
        t = t[..., t.shape[-1] // 2]  # (C, I, J)
        if orientation == "RAS":
            t = t.flip(1).transpose(1, 2).flip(1)
    return t.numpy()


def save_preview(
    path: str | Path,
    image: torch.Tensor,
    masked: torch.Tensor,
    reconstruction: torch.Tensor,
    *,
    hidden: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    channels: Sequence[Mapping[str, Any]] | None = None,
    orientation: str | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of ``input | masked | reconstruction`` for one ``(C, *S)`` sample (atomically).

    Volumes show the middle slice of their last axis (axial, radiological, for ``orientation="RAS"``).
    Three or more channels are shown as RGB (picked by wavelength for multispectral bands), otherwise
    the first channel in grey. All panels share the input's 1-99 percentile display range over ``valid``
    pixels; invalid pixels are black and ``hidden`` ``(*S)`` (masked-out patches) is grey.
    """
    from matplotlib.figure import Figure

    picks = _display_channels(channels, image.shape[0])
    img, msk, rec = (_plane(t, orientation)[picks] for t in (image, masked, reconstruction))
    shape = img.shape[1:]
    vm = _plane(valid[None], orientation)[0] > 0.5 if valid is not None else np.ones(shape, dtype=bool)
    hid = _plane(hidden[None], orientation)[0] > 0.5 if hidden is not None else np.zeros(shape, dtype=bool)
    ref = img[:, vm] if vm.any() else img.reshape(img.shape[0], -1)
    lo = np.percentile(ref, 1, axis=1)[:, None, None]
    hi = np.percentile(ref, 99, axis=1)[:, None, None]
    scale = np.where(hi - lo > 1e-8, hi - lo, 1.0)

    def show(a: np.ndarray, grey_hidden: bool) -> np.ndarray:
        a = np.clip((a - lo) / scale, 0.0, 1.0) * vm[None]
        if grey_hidden:
            a = np.where(hid[None], 0.5, a)
        return np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0]

    panels = [("input", show(img, False)), ("masked", show(msk, True)), ("reconstruction", show(rec, False))]
    h, w = shape
    fig = Figure(figsize=(3 * 3.2, 3.2 * h / max(w, 1) + 0.5), dpi=100)
    for i, (name, arr) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(arr, cmap=None if arr.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
