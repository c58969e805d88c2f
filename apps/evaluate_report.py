"""The files ``unimae evaluate`` writes besides ``metrics.json``: plots (confusion matrices, ROC curves, Dice
bars) and the per-case CSV, each written atomically.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core import metrics as M
from unimae.core.fileio import atomic_path, save_png, write_csv_rows

__all__ = ["plot_confusion", "plot_multilabel_confusion", "plot_roc", "plot_dice", "write_csv", "write_json"]


# ------------------------------------------------------------------------------------------------
# plots (matplotlib's object API with the Agg canvas: no global backend state)
# ------------------------------------------------------------------------------------------------
def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path:
    k = len(names)
    side = max(4.0, 0.6 * k + 2.5)
    fig = _figure((side, side))
    ax = fig.add_subplot()
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    return save_png(fig, path)


def plot_multilabel_confusion(confusion: dict[str, dict[str, int]], path: Path, threshold: float) -> Path:
    names = list(confusion)
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig = _figure((2.6 * cols, 2.6 * nrows))
    for i, n in enumerate(names):
        c = confusion[n]
        cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax = fig.add_subplot(nrows, cols, i + 1)
        ax.imshow(cm, cmap="Blues")
        for a in range(2):
            for b in range(2):
                ax.text(b, a, str(int(cm[a, b])), ha="center", va="center")
        ax.set_xticks([0, 1], ["neg", "pos"])
        ax.set_yticks([0, 1], ["neg", "pos"])
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    fig.suptitle(f"per-finding confusion at threshold {threshold:g}")
    return save_png(fig, path)


def plot_roc(curves: list[tuple[str, np.ndarray, np.ndarray, float]], path: Path, title: str) -> Path:
    fig = _figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, fpr, tpr, auc in curves:
        step = max(1, fpr.size // 4000)  # keep plots light for pixel curves
        idx = np.r_[np.arange(0, fpr.size, step), fpr.size - 1]
        ax.plot(fpr[idx], tpr[idx], linewidth=1.5, label=f"{name} (AUROC {auc:.3f})")
    if not curves:
        ax.text(0.5, 0.5, "AUROC undefined:\nonly one class present", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def plot_dice(metrics: dict[str, Any], path: Path) -> Path:
    bg = metrics["background"]
    names = ([bg["name"]] if bg else []) + list(metrics["dice"])
    values = ([bg["dice"]] if bg else []) + list(metrics["dice"].values())
    fig = _figure((max(4.0, 0.7 * len(names) + 2.0), 4.0))
    ax = fig.add_subplot()
    heights = [0.0 if v is None else v for v in values]
    colors = (["0.6"] if bg else []) + ["tab:blue"] * len(metrics["dice"])
    bars = ax.bar(range(len(names)), heights, color=colors)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "n/a" if v is None else f"{v:.2f}",
                ha="center", va="bottom", fontsize=8)  # fmt: skip
    if metrics["mean_dice"] is not None:
        ax.axhline(metrics["mean_dice"], color="tab:red", linestyle="--", linewidth=1,
                   label=f"{'foreground ' if bg else ''}mean {metrics['mean_dice']:.3f}")  # fmt: skip
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("Dice (mean over cases, inside valid)")
    ax.set_title(f"Dice per class ({metrics['num_cases']} cases{'; background in grey' if bg else ''})")
    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return write_csv_rows(path, rows, columns or ["id"])


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    text = json.dumps(M.to_json(payload), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path
