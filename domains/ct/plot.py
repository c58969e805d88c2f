"""Orthogonal-slice figures of CT samples with label or heat-map overlays (matplotlib, no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimae.domains.base import Sample
from unimae.domains.ct.geometry import spacing_from_affine, to_ras_for_display
from unimae.domains.ct.preprocess import WINDOWS, window_to_model

__all__ = ["plot_ct"]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _display_volume(sample: Sample) -> np.ndarray:
    """Channel 0 in display range ``[-1, 1]``: model space as is, raw HU through the soft-tissue window."""
    img = sample.image[0].float()
    if "normalization" not in sample.meta:
        img = window_to_model(img, *WINDOWS["soft_tissue"])
    return _np(img)


def _views(vol: np.ndarray, spacing: Sequence[float]) -> list[tuple[str, np.ndarray, float]]:
    """Axial, coronal and sagittal middle slices of a RAS ``(I, J, K)`` volume in radiological display.

    Each entry: ``(name, 2D array with row 0 at the top, aspect = row spacing / column spacing)``.
    Axial and coronal show the patient's right on the viewer's left; superior/anterior at the top.
    """
    i, j, k = (s // 2 for s in vol.shape)
    sx, sy, sz = spacing
    axial = vol[::-1, :, k].T[::-1]  # rows: anterior -> posterior, cols: right -> left
    coronal = vol[::-1, j, :].T[::-1]  # rows: superior -> inferior, cols: right -> left
    sagittal = vol[i, ::-1, :].T[::-1]  # rows: superior -> inferior, cols: anterior -> posterior
    return [("axial", axial, sy / sx), ("coronal", coronal, sz / sx), ("sagittal", sagittal, sz / sy)]


def plot_ct(
    sample: Sample,
    prediction: torch.Tensor | np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
):
    """A Figure with the axial, coronal and sagittal middle slices and an overlay.

    Args:
        sample: a CT sample (HU or model space), image ``(C, I, J, K)``.
        prediction: overlay on the sample grid, ``(I, J, K)`` or ``(1, I, J, K)``: integer labels
            (coloured, with a legend) or a float heat map (``hot`` colour map with a colour bar).
            Defaults to ``sample.mask``.
        class_names: label names for the legend (default ``meta["seg_class_names"]``).
        alpha: overlay opacity.
        title: figure title (default: modality and shape).

    Volumes are shown in RAS orientation (reoriented from ``meta["grid_affine"]`` when needed) with
    the physical aspect ratio of each view.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    affine = np.asarray(sample.meta.get("grid_affine", sample.meta.get("affine", np.eye(4))), dtype=np.float64)
    vol = to_ras_for_display(_display_volume(sample), affine)
    ras_affine_spacing = sorted(zip(np.argmax(np.abs(affine[:3, :3]), axis=0), spacing_from_affine(affine)))
    spacing = [s for _, s in ras_affine_spacing] if len(ras_affine_spacing) == 3 else [1.0, 1.0, 1.0]

    over = sample.mask if prediction is None else prediction
    over_np = None
    if over is not None:
        over_np = _np(over)
        if over_np.ndim == 4:
            over_np = over_np[0]
        over_np = to_ras_for_display(over_np, affine)
    is_labels = over_np is not None and (over_np.dtype.kind in "biu")

    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    vol_views = _views(vol, spacing)
    over_views = _views(over_np, spacing) if over_np is not None else [None] * 3
    names = list(class_names or sample.meta.get("seg_class_names") or [])
    cmap_labels = colormaps["tab10"]
    present: set[int] = set()
    last_im = None
    for ax, (name, sl, aspect), ov in zip(axes, vol_views, over_views):
        ax.imshow(sl, cmap="gray", vmin=-1.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        if ov is not None:
            o = ov[1]
            if is_labels:
                labels = o.astype(np.int64)
                rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
                for c in np.unique(labels):
                    if c <= 0:
                        continue
                    present.add(int(c))
                    rgba[labels == c] = (*cmap_labels((int(c) - 1) % 10)[:3], alpha)
                ax.imshow(rgba, aspect=aspect, interpolation="nearest")
            else:
                heat = np.ma.masked_less_equal(o.astype(np.float32), 0.0)
                last_im = ax.imshow(heat, cmap="hot", alpha=alpha, aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    if is_labels and present:
        handles = [
            Patch(color=cmap_labels((c - 1) % 10), label=names[c] if c < len(names) else f"class {c}")
            for c in sorted(present)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    elif last_im is not None:
        fig.colorbar(last_im, ax=list(axes), shrink=0.8, label="score")
    shape = "x".join(str(s) for s in sample.spatial_shape)
    fig.suptitle(title or f"{sample.meta.get('modality', 'CT')} {shape}")
    return fig
