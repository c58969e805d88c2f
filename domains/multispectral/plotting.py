"""Matplotlib figures of multispectral samples: RGB composites with class-map / heat-map overlays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimae.core.errors import InputError, look_up

__all__ = ["COMPOSITES", "composite_bands", "rgb_composite", "plot_sample", "CLASS_COLOURS"]

#: composite -> target centre wavelengths (µm) for the red, green and blue display channels
COMPOSITES: dict[str, tuple[float, float, float]] = {
    "natural": (0.665, 0.560, 0.490),  # Sentinel-2 B04, B03, B02
    "false_color": (0.842, 0.665, 0.560),  # B08, B04, B03: vegetation red
}
_TOLERANCE_UM = 0.04

#: display colours of the land-cover classes (and anomalies)
CLASS_COLOURS: dict[str, str] = {
    "water": "#1f5fbf",
    "forest": "#1b6e20",
    "crop": "#c9d93b",
    "bare_soil": "#a0703c",
    "urban": "#d62728",
    "anomaly": "#ff00ff",
}
_FALLBACK = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf"]


def composite_bands(channels: Sequence[dict], composite: str = "natural") -> list[int]:
    """Indices of the bands nearest the composite's red/green/blue wavelengths (within 0.04 µm)."""
    look_up(composite, COMPOSITES, what="composite")
    idx = []
    wls = [c.get("wavelength") for c in channels]
    for target in COMPOSITES[composite]:
        cands = [(abs(w - target), i) for i, w in enumerate(wls) if w is not None]
        if not cands or min(cands)[0] > _TOLERANCE_UM:
            names = [c.get("name") for c in channels]
            raise InputError(f"no band near {target} µm for a {composite!r} composite among bands {names}")
        idx.append(min(cands)[1])
    return idx


def rgb_composite(
    image: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None,
    channels: Sequence[dict],
    *,
    composite: str = "natural",
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """An ``(H, W, 4)`` RGBA float image of the composite bands (chosen by wavelength, so by band *name* whatever the
    file's band order, e.g. EuroSAT's B8A-last); invalid (nodata) pixels are fully transparent. One-band images are
    shown in grey.

    The stretch is robust and keeps the colours: each band's low percentile over valid pixels is its black (which
    also removes the haze that lifts the blue band of top-of-atmosphere data), and one common span maps the bands to
    ``[0, 1]`` (the widest band's low-to-high percentile range, and for reflectances at least half the brightest
    band's high percentile). Stretching each band to its own range instead turns a uniform tile (a forest) into
    coloured noise.
    """
    img = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    h, w = img.shape[1:]
    ok = np.ones((h, w), bool) if valid is None else np.asarray(valid.cpu() if isinstance(valid, torch.Tensor) else valid, bool)
    if img.shape[0] == 1:
        idx = [0, 0, 0]
    else:
        idx = composite_bands(channels, composite)
    rgba = np.zeros((h, w, 4), dtype=np.float32)
    los, his = [], []
    for b in idx:
        vals = img[b][ok]
        vals = vals[np.isfinite(vals)]
        lo, hi = np.percentile(vals, percentiles) if vals.size else (0.0, 1.0)
        los.append(float(lo))
        his.append(float(hi))
    span = max(hi - lo for lo, hi in zip(los, his))
    if min(los) >= 0.0:  # reflectances / counts: a uniform dark tile stays dark instead of stretched noise
        span = max(span, 0.5 * max(his))
    span = max(span, 1e-12)
    for k, b in enumerate(idx):
        rgba[..., k] = np.clip((img[b] - los[k]) / span, 0.0, 1.0)
    rgba[..., :3] = np.nan_to_num(rgba[..., :3])
    rgba[..., 3] = ok.astype(np.float32)
    return rgba


def _as_np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_sample(
    sample,
    prediction: torch.Tensor | np.ndarray | None = None,
    *,
    composite: str = "natural",
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    title: str | None = None,
):
    """A Figure: the RGB composite, and beside it the composite with ``prediction`` (or ``sample.mask``).

    ``prediction`` may be a class map ``(H, W)`` (integers), class scores ``(K, H, W)`` (argmax is shown)
    or a heat map ``(H, W)`` (floats, shown with a colour bar). Class maps get a legend with
    ``class_names`` (default: ``meta['mask_class_names']``, else ``class 0..``); a first class named
    ``normal``/``background`` is left transparent. Nodata pixels are transparent everywhere.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    meta = sample.meta
    valid = sample.valid
    rgba = rgb_composite(sample.image, valid, meta.get("channels", []), composite=composite)
    overlay = prediction if prediction is not None else sample.mask
    label_txt = "prediction" if prediction is not None else "mask"
    ncols = 1 if overlay is None else 2
    fig = Figure(figsize=(4.2 * ncols, 4.4), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    name = {"natural": "natural colour", "false_color": "false colour (NIR, red, green)"}[composite]
    axes[0].imshow(rgba, interpolation="nearest")
    axes[0].set_title(title or f"{meta.get('modality', 'image')}: {name}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if overlay is None:
        return fig
    ov = _as_np(overlay)
    if ov.ndim == 3 and ov.shape[0] == 1:
        ov = ov[0]
    if ov.ndim == 3:
        ov = ov.argmax(axis=0)
    if ov.shape != rgba.shape[:2]:
        raise InputError(f"overlay is {ov.shape} but the image is {rgba.shape[:2]}")
    ok = _as_np(valid).astype(bool)
    ax = axes[1]
    ax.imshow(rgba, interpolation="nearest")
    if np.issubdtype(ov.dtype, np.floating) and not np.all(ov == np.round(ov)):
        heat = np.ma.masked_where(~ok, ov)
        im = ax.imshow(heat, cmap="inferno", alpha=alpha, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label=label_txt)
        ax.set_title(f"{label_txt} (heat map)", fontsize=9)
        return fig
    ov = ov.astype(np.int64)
    names = list(class_names or meta.get("mask_class_names") or [])
    k = int(max(ov.max() + 1, len(names), 1))
    names += [f"class {i}" for i in range(len(names), k)]
    colours = [CLASS_COLOURS.get(n, _FALLBACK[i % len(_FALLBACK)]) for i, n in enumerate(names)]
    hide = ~ok | (ov < 0)
    if names and names[0].lower() in ("normal", "background"):
        hide |= ov == 0
    shown = np.ma.masked_where(hide, np.clip(ov, 0, k - 1))
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=-0.5, vmax=k - 0.5, alpha=alpha, interpolation="nearest")
    present = sorted(int(v) for v in np.unique(ov[~hide]))
    handles = [Patch(facecolor=colours[i], label=names[i]) for i in present]
    if handles:
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=min(3, len(handles)),
                  fontsize=7, framealpha=0.8)
    ax.set_title(label_txt, fontsize=9)
    return fig
