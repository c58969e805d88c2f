"""Matplotlib figures of fundus samples: the image, its field of view, masks and predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from unimae.domains.base import Sample
from unimae.domains.fundus.preprocess import denormalize
from unimae.domains.fundus.writer import DEFAULT_COLORS

__all__ = ["plot_fundus"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _draw(
    ax, rgb: np.ndarray, valid: np.ndarray, overlay: np.ndarray | None, names: Sequence[str], alpha: float, title: str
):
    """One panel: image, FOV outline, overlay (label map or heat map) and a legend."""
    ax.imshow(rgb, interpolation="nearest")
    handles = []
    if not valid.all():
        ax.contour(valid.astype(float), levels=[0.5], colors=["white"], linewidths=0.8, linestyles="--")
        handles.append(Patch(facecolor="none", edgecolor="white", linestyle="--", label="field of view"))
    if overlay is not None:
        if overlay.dtype == bool or np.issubdtype(overlay.dtype, np.integer):
            idx = overlay.astype(np.int64)
            palette = np.asarray(DEFAULT_COLORS, dtype=np.float32) / 255.0
            idx_c = np.clip(idx, 0, len(palette) - 1)
            rgba = np.zeros((*idx.shape, 4), dtype=np.float32)
            rgba[..., :3] = palette[idx_c]
            rgba[..., 3] = (idx > 0) * alpha
            ax.imshow(rgba, interpolation="nearest")
            for k in sorted(int(v) for v in np.unique(idx) if v > 0):
                name = names[k] if k < len(names) else f"class {k}"
                handles.append(Patch(color=palette[min(k, len(palette) - 1)], label=name))
        else:
            heat = np.clip(overlay.astype(np.float32), 0.0, 1.0)
            im = ax.imshow(heat, cmap="inferno", alpha=alpha * (heat > 0.02), vmin=0.0, vmax=1.0)
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="score")
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_fundus(
    sample: Sample,
    prediction: torch.Tensor | np.ndarray | None = None,
    *,
    mask_names: Sequence[str] = ("background", "vessel"),
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    title: str | None = None,
) -> Figure:
    """A Figure of a fundus sample with its mask and/or a prediction overlaid.

    Args:
        sample: image ``(3, H, W)`` in model space (de-normalised with ``meta["normalization"]``) or
            in [0, 1]; ``meta["valid"]`` is outlined as the field of view.
        prediction: ``(H, W)`` class indices or float heat map in [0, 1] (or ``(1, H, W)``).
        mask_names: names of the mask/prediction classes, for the legend.
        class_names: names of the classification labels, to title the image with ``sample.label``.
        alpha: overlay opacity.
        title: figure title (default: the file name, or "synthetic").

    Returns:
        A matplotlib Figure: one panel, or two (ground truth | prediction) when both are present.
    """
    rgb = denormalize(sample.image[:3], sample.meta.get("normalization"))
    valid = _np(sample.valid).astype(bool)
    rgb[~valid] = 0.0  # the camera's black surround (model space stores the channel mean there)
    pred = None if prediction is None else _np(prediction)
    if pred is not None and pred.ndim == 3 and pred.shape[0] == 1:
        pred = pred[0]
    mask = None if sample.mask is None else _np(sample.mask)
    panels = []
    if mask is not None:
        panels.append((mask, "ground truth"))
    if pred is not None:
        panels.append((pred, "prediction"))
    if not panels:
        panels.append((None, "image"))
    fig = Figure(figsize=(4.2 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (overlay, name) in zip(axes, panels):
        _draw(ax, rgb, valid, overlay, mask_names, alpha, name)
    path = sample.meta.get("path")
    head = title or (str(path).replace("\\", "/").rsplit("/", 1)[-1] if path else "synthetic fundus")
    if sample.label is not None and sample.label.ndim == 0:
        k = int(sample.label)
        head += f" — label: {class_names[k] if class_names and k < len(class_names) else k}"
    fig.suptitle(head, fontsize=10)
    return fig
