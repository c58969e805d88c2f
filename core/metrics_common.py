"""What the metric modules share: array conversion, NaN-aware means, JSON output and the binary ROC.

See :mod:`unimae.core.metrics` for the conventions (inputs, NaN for undefined values).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["ArrayLike", "to_numpy", "to_json", "nanmean", "class_indices", "count_classes", "safe_divide",
           "binary_targets", "auroc", "roc_curve"]

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence of numbers


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy array of ``x`` (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def to_json(value: Any) -> Any:
    """A JSON-ready copy: numpy / torch scalars and arrays become Python values, NaN and Inf become None."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return to_json(to_numpy(value).tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def nanmean(values: ArrayLike) -> float:
    """The mean of the finite values; NaN when there is none (undefined metrics are skipped, not zero)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def class_indices(x: ArrayLike, what: str) -> np.ndarray:
    """``x`` as a 1-D int64 array of class indices (``what`` names it in the error)."""
    arr = to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{what} must hold integer class indices")
    return arr.astype(np.int64)


def count_classes(num_classes: int | None, *arrays: np.ndarray) -> int:
    """``num_classes`` when given, else one more than the largest index in ``arrays``."""
    if num_classes is not None:
        return int(num_classes)
    return int(max((int(a.max()) + 1 for a in arrays if a.size), default=0))


def safe_divide(num: ArrayLike, den: ArrayLike) -> np.ndarray:
    """Element-wise ``num / den`` as float64, NaN where ``den <= 0`` (an undefined rate, not an error)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def binary_targets(targets: ArrayLike) -> np.ndarray:
    """Flat 0/1 targets as int64; anything else raises ``ValueError``."""
    t = to_numpy(targets).reshape(-1)
    if t.size and not np.isin(t, (0, 1)).all():
        raise ValueError("binary targets must be 0 or 1")
    return t.astype(np.int64)


def auroc(scores: ArrayLike, targets: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for binary ``targets`` (0/1), ties counted half (MONAI).

    NaN when only one class is present (the AUROC is undefined).
    """
    from monai.metrics import compute_roc_auc

    s = to_numpy(scores).reshape(-1).astype(np.float64)
    t = binary_targets(targets)
    if s.shape != t.shape:
        raise ValueError(f"{s.size} scores for {t.size} targets")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    if t.size == 0 or t.min() == t.max():
        return float("nan")
    return float(compute_roc_auc(torch.from_numpy(s), torch.from_numpy(t)))


def roc_curve(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points ``(fpr, tpr, thresholds)``, from (0, 0) to (1, 1), one point per distinct score.

    A sample is called positive when ``score >= threshold``; the first threshold is ``+inf``. With a
    single class present the undefined axis is NaN.
    """
    s = to_numpy(scores).reshape(-1).astype(np.float64)
    t = binary_targets(targets)
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, dtype=np.int64)
    tp = np.cumsum(t)[last] if s.size else np.zeros(0)
    fp = (last + 1) - tp
    npos, nneg = int(t.sum()), int(t.size - t.sum())
    tpr = np.r_[0.0, tp / npos] if npos else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fp / nneg] if nneg else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]
