"""Classification metrics: ``targets`` are ``(N,)`` class indices, or ``(N, K)`` multi-hot for multi-label.

See :mod:`unimae.core.metrics` for the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from unimae.core.metrics_common import (
    ArrayLike,
    auroc,
    class_indices,
    count_classes,
    nanmean,
    safe_divide,
    to_json,
    to_numpy,
)

__all__ = ["confusion_matrix", "accuracy", "balanced_accuracy", "f1_scores", "macro_f1", "quadratic_weighted_kappa",
           "per_class_auroc", "classification_metrics"]


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """``(K, K)`` int64 counts; rows are the true class, columns the predicted class."""
    t, p = class_indices(y_true, "y_true"), class_indices(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    k = count_classes(num_classes, t, p)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"class indices must lie in [0, {k})")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact matches (NaN for no samples)."""
    t, p = class_indices(y_true, "y_true"), class_indices(y_pred, "y_pred")
    return float((t == p).mean()) if t.size else float("nan")


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` (as scikit-learn's ``balanced_accuracy_score``)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    recall = safe_divide(np.diag(cm), support)
    return nanmean(recall[support > 0])


def f1_scores(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Per-class F1 ``(K,)`` = 2TP / (2TP + FP + FN); NaN for a class neither present nor predicted."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return safe_divide(2 * tp, 2 * tp + fp + fn)


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default)."""
    return nanmean(f1_scores(y_true, y_pred, num_classes))


def quadratic_weighted_kappa(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights for ordinal grades ``0 .. K-1``.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``W_ij = (i - j)^2 / (K - 1)^2``, ``O`` the confusion
    matrix and ``E`` the outer product of its marginals divided by N. The class indices are the grades
    (absent grades keep their distance). NaN when undefined (no samples, or ``sum(W * E) = 0``, e.g. when
    truth and predictions are all one grade).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    k, n = cm.shape[0], cm.sum()
    if n == 0 or k < 2:
        return float("nan")
    grades = np.arange(k, dtype=np.float64)
    w = (grades[:, None] - grades[None, :]) ** 2 / (k - 1) ** 2
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    den = float((w * expected).sum())
    if den <= 0:
        return float("nan")
    return float(1.0 - (w * cm).sum() / den)


def _one_hot_targets(targets: ArrayLike, k: int) -> np.ndarray:
    t = to_numpy(targets)
    if t.ndim == 2:
        if t.shape[1] != k:
            raise ValueError(f"multi-hot targets have {t.shape[1]} columns for {k} classes")
        return (t > 0.5).astype(np.int64)
    idx = class_indices(t, "targets")
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"class indices must lie in [0, {k})")
    return np.eye(k, dtype=np.int64)[idx]


def per_class_auroc(probabilities: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """One-vs-rest AUROC per class ``(K,)`` from ``probabilities`` ``(N, K)``.

    ``targets`` are class indices ``(N,)`` or multi-hot ``(N, K)`` (multi-label: one AUROC per finding).
    A class that is absent (or present in every sample) gets NaN.
    """
    p = to_numpy(probabilities).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    hot = _one_hot_targets(targets, p.shape[1])
    if hot.shape[0] != p.shape[0]:
        raise ValueError(f"{p.shape[0]} probability rows for {hot.shape[0]} targets")
    return np.array([auroc(p[:, c], hot[:, c]) for c in range(p.shape[1])], dtype=np.float64)


def _multilabel_counts(hot: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    tp = (hot & pred).sum(0)
    fp = (~hot & pred).sum(0)
    fn = (hot & ~pred).sum(0)
    tn = (~hot & ~pred).sum(0)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def classification_metrics(
    probabilities: ArrayLike,
    targets: ArrayLike,
    *,
    class_names: Sequence[str] | None = None,
    multi_label: bool = False,
    threshold: float = 0.5,
    ordinal: bool | None = None,
) -> dict[str, Any]:
    """All classification metrics as a JSON-ready dict.

    Args:
        probabilities: ``(N, K)`` softmax probabilities (multi-class) or sigmoid probabilities (multi-label).
        targets: ``(N,)`` class indices, or ``(N, K)`` multi-hot when ``multi_label``.
        class_names: names of the ``K`` classes (default ``"0" .. "K-1"``).
        multi_label: findings are independent; a finding is called present when its probability is
            above ``threshold`` (as ``unimae predict`` does).
        threshold: decision threshold of multi-label findings.
        ordinal: whether the class order is a grade order (then ``quadratic_kappa`` is the headline
            agreement). ``None`` computes kappa anyway for multi-class data and says so in ``notes``.

    Returns:
        Multi-class: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``f1`` (per class), ``auroc``
        (per class, one-vs-rest), ``macro_auroc``, ``quadratic_kappa``, ``confusion_matrix`` (rows true),
        ``support``, ``num_samples``, ``notes``. Multi-label: ``accuracy`` (mean per-finding accuracy),
        ``exact_match``, ``balanced_accuracy`` (mean of per-finding (sensitivity + specificity) / 2),
        ``macro_f1``, per-finding ``f1``/``sensitivity``/``specificity``/``auroc``, ``macro_auroc``,
        ``confusion`` (per finding tp/fp/fn/tn), ``support``, ``threshold``, ``num_samples``, ``notes``.
    """
    p = to_numpy(probabilities).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    n, k = p.shape
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    notes: list[str] = []
    aucs = per_class_auroc(p, targets)
    for name, a in zip(names, aucs):
        if not math.isfinite(a):
            notes.append(f"AUROC of {name!r} is undefined (null): its samples are all positive or all negative")
    out: dict[str, Any] = {"num_samples": n, "multi_label": bool(multi_label), "class_names": names}

    if multi_label:
        hot = _one_hot_targets(targets, k).astype(bool)
        pred = p > threshold
        c = _multilabel_counts(hot, pred)
        sens = safe_divide(c["tp"], c["tp"] + c["fn"])
        spec = safe_divide(c["tn"], c["tn"] + c["fp"])
        f1 = safe_divide(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
        bal = np.where(np.isfinite(sens) & np.isfinite(spec), (sens + spec) / 2, np.nan)
        out.update(
            threshold=float(threshold),
            accuracy=float((hot == pred).mean()) if n else float("nan"),
            exact_match=float((hot == pred).all(1).mean()) if n else float("nan"),
            balanced_accuracy=nanmean(bal),
            macro_f1=nanmean(f1),
            macro_auroc=nanmean(aucs),
            f1=dict(zip(names, f1)),
            sensitivity=dict(zip(names, sens)),
            specificity=dict(zip(names, spec)),
            auroc=dict(zip(names, aucs)),
            support={nm: int(s) for nm, s in zip(names, hot.sum(0))},
            confusion={nm: {key: int(c[key][i]) for key in ("tp", "fp", "fn", "tn")} for i, nm in enumerate(names)},
        )
        if np.isfinite(bal).sum() < k:
            notes.append("balanced accuracy averages only findings with both positive and negative samples")
    else:
        t = class_indices(targets, "targets")
        pred = p.argmax(1)
        cm = confusion_matrix(t, pred, k)
        f1 = f1_scores(t, pred, k)
        kappa = quadratic_weighted_kappa(t, pred, k)
        out.update(
            accuracy=accuracy(t, pred),
            balanced_accuracy=balanced_accuracy(t, pred, k),
            macro_f1=nanmean(f1),
            macro_auroc=nanmean(aucs),
            quadratic_kappa=kappa,
            f1=dict(zip(names, f1)),
            auroc=dict(zip(names, aucs)),
            support={nm: int(s) for nm, s in zip(names, cm.sum(1))},
            confusion_matrix=cm,
        )
        if (cm.sum(1) == 0).any():
            notes.append("classes absent from the truth are left out of balanced accuracy")
        if not math.isfinite(kappa):
            notes.append("quadratic kappa is undefined (null): truth and predictions leave no room for chance agreement")
        elif ordinal is None and k > 2:
            notes.append("quadratic kappa treats the class order as a grade order; ignore it for nominal classes")
        out["ordinal"] = ordinal
    if math.isfinite(out["macro_auroc"]) and not np.isfinite(aucs).all():
        notes.append("macro AUROC averages only the classes where it is defined")
    out["notes"] = notes
    return to_json(out)
