"""``plot(sample, prediction)``: a matplotlib Figure of a radiograph with a label or heat-map overlay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimae.domains.base import Sample
from unimae.domains.xray.intensity import to_unit
from unimae.domains.xray.output import PALETTE, _as_2d, _numpy, _resize, result_kind

__all__ = ["plot_sample"]


def _title(sample: Sample, finding_names: Sequence[str] | None) -> str:
    parts = [str(sample.meta.get("modality", "X-ray")), "x".join(str(s) for s in sample.spatial_shape)]
    label = sample.label
    if label is not None:
        values = _numpy(label).reshape(-1)
        if values.size > 1:  # multi-hot findings
            names = list(finding_names) if finding_names is not None else [f"finding {k}" for k in range(values.size)]
            positive = [n for n, v in zip(names, values) if v > 0.5]
            parts.append("findings: " + (", ".join(positive) if positive else "none"))
        elif values.size == 1:
            parts.append(f"label: {values[0]:g}")
    return " | ".join(parts)


def plot_sample(
    sample: Sample,
    prediction: torch.Tensor | np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    finding_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    title: str | None = None,
):
    """A Figure: the image, and (if ``prediction`` or ``sample.mask`` is given) the image with the overlay.

    Args:
        sample: image ``(C, H, W)`` (channel 0 is shown) in model space or ``[0, 1]``.
        prediction: labels ``(H, W)`` / ``(K, H, W)`` scores, or a float heat map ``(H, W)``; resized to the
            image if needed. Defaults to ``sample.mask``.
        class_names: names for label values 0, 1, ... (legend); label 0 is not drawn.
        finding_names: names of multi-hot ``sample.label`` entries (title).
        alpha: overlay opacity.
        title: figure title (default: modality, size and labels).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = to_unit(sample.image.detach().cpu().float(), sample.meta.get("normalization"))[0].numpy()
    overlay = prediction if prediction is not None else sample.mask
    ncols = 1 if overlay is None else 2
    fig = Figure(figsize=(4.0 * ncols, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    lo, hi = (0.0, 1.0) if "normalization" in sample.meta else tuple(np.percentile(image, [0.5, 99.5]))
    for ax in axes:
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1.0, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title("image")
    if overlay is not None:
        raw = _numpy(overlay)
        kind = result_kind(raw)
        grid = _resize(_as_2d(raw, kind), image.shape, kind)
        ax = axes[1]
        if kind == "labels":
            top = int(grid.max(initial=0))
            colours = [(0.0, 0.0, 0.0)] + [PALETTE[(k - 1) % len(PALETTE)] for k in range(1, max(top, 1) + 1)]
            shown = np.ma.masked_where(grid == 0, grid)
            ax.imshow(shown, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1, alpha=alpha,
                      interpolation="nearest")
            present = [int(k) for k in np.unique(grid) if k > 0]
            names = list(class_names) if class_names is not None else []
            handles = [
                Patch(color=PALETTE[(k - 1) % len(PALETTE)], label=names[k] if k < len(names) else f"class {k}")
                for k in present
            ]
            if handles:
                ax.legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.8)
            ax.set_title("prediction" if prediction is not None else "mask")
        else:
            shown = ax.imshow(grid, cmap="inferno", alpha=alpha, interpolation="bilinear")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="anomaly score")
            ax.set_title("heat map")
    fig.suptitle(title if title is not None else _title(sample, finding_names), fontsize="medium")
    return fig
