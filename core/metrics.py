"""Evaluation metrics of the three tasks: pure functions on tensors / arrays.

MONAI computes what it has (``compute_roc_auc`` for every AUROC, ``compute_dice`` and ``compute_iou``
for overlap); the rest is small code here (scikit-learn is not a dependency). Conventions:

* Inputs may be ``torch.Tensor`` or ``numpy`` arrays; outputs are Python floats / ``numpy`` arrays.
* An undefined value (AUROC with one class present, Dice of a class absent from the truth, kappa when
  everything is one grade) is ``NaN`` here; :func:`to_json` turns it into ``null`` and the ``*_metrics``
  summaries add a human-readable ``notes`` entry saying why. Nothing crashes on degenerate data.

Classification (``targets``: ``(N,)`` class indices, or ``(N, K)`` multi-hot for multi-label)
    :func:`confusion_matrix`, :func:`accuracy`, :func:`balanced_accuracy`, :func:`f1_scores`,
    :func:`macro_f1`, :func:`quadratic_weighted_kappa`, :func:`auroc`, :func:`per_class_auroc`,
    :func:`roc_curve`, and the summary :func:`classification_metrics`.
Segmentation (label maps of class indices, computed only inside ``valid``)
    :func:`dice_iou`, :func:`label_confusion`, and the summary :func:`segmentation_metrics`
    (a background class 0 is reported apart from the mean; a real class 0, e.g. land-cover water, is not).
Anomaly
    :func:`auroc` on image scores, :func:`pixel_auroc`, :func:`aupro` / :func:`pro_curve` and the
    streaming :class:`PixelAccumulator` that collects (deterministically subsampled) pixels per case.

AUPRO definition (Bergmann et al., MVTec AD, IJCV 2021)
-------------------------------------------------------
Each connected component of a ground-truth anomaly mask (full connectivity: 8-neighbours in 2D,
26 in 3D, per image, inside ``valid``) is a *region*. At a threshold ``t`` the per-region overlap is
``|{x in region : map(x) >= t}| / |region|``; the PRO is the mean overlap over all regions of all
images, and the false-positive rate is the fraction of normal (mask 0, valid) pixels of all images
with ``map >= t``. The PRO-vs-FPR curve is integrated (trapezoids, exact at every distinct score,
interpolated at the limit) from FPR 0 to ``fpr_limit`` (0.3 by default) and divided by ``fpr_limit``,
so a perfect detector scores 1 and a random one about ``fpr_limit / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "to_numpy",
    "to_json",
    "safe_divide",
    "confusion_matrix",
    "accuracy",
    "balanced_accuracy",
    "f1_scores",
    "macro_f1",
    "quadratic_weighted_kappa",
    "auroc",
    "per_class_auroc",
    "roc_curve",
    "classification_metrics",
    "dice_iou",
    "label_confusion",
    "is_background",
    "segmentation_metrics",
    "pixel_auroc",
    "stratified_subsample",
    "region_labels",
    "pro_curve",
    "aupro",
    "aupro_from_curve",
    "PixelAccumulator",
    "anomaly_metrics",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence of numbers


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
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


def _nanmean(values: ArrayLike) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _indices(x: ArrayLike, what: str) -> np.ndarray:
    arr = to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{what} must hold integer class indices")
    return arr.astype(np.int64)


def _num_classes(num_classes: int | None, *arrays: np.ndarray) -> int:
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


# ------------------------------------------------------------------------------------------------
# classification
# ------------------------------------------------------------------------------------------------
def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """``(K, K)`` int64 counts; rows are the true class, columns the predicted class."""
    t, p = _indices(y_true, "y_true"), _indices(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    k = _num_classes(num_classes, t, p)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"class indices must lie in [0, {k})")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact matches (NaN for no samples)."""
    t, p = _indices(y_true, "y_true"), _indices(y_pred, "y_pred")
    return float((t == p).mean()) if t.size else float("nan")


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` (as scikit-learn's ``balanced_accuracy_score``)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    recall = safe_divide(np.diag(cm), support)
    return _nanmean(recall[support > 0])


def f1_scores(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Per-class F1 ``(K,)`` = 2TP / (2TP + FP + FN); NaN for a class neither present nor predicted."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return safe_divide(2 * tp, 2 * tp + fp + fn)


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default)."""
    return _nanmean(f1_scores(y_true, y_pred, num_classes))


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


def _binary_targets(targets: ArrayLike) -> np.ndarray:
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
    t = _binary_targets(targets)
    if s.shape != t.shape:
        raise ValueError(f"{s.size} scores for {t.size} targets")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    if t.size == 0 or t.min() == t.max():
        return float("nan")
    return float(compute_roc_auc(torch.from_numpy(s), torch.from_numpy(t)))


def _one_hot_targets(targets: ArrayLike, k: int) -> np.ndarray:
    t = to_numpy(targets)
    if t.ndim == 2:
        if t.shape[1] != k:
            raise ValueError(f"multi-hot targets have {t.shape[1]} columns for {k} classes")
        return (t > 0.5).astype(np.int64)
    idx = _indices(t, "targets")
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


def roc_curve(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points ``(fpr, tpr, thresholds)``, from (0, 0) to (1, 1), one point per distinct score.

    A sample is called positive when ``score >= threshold``; the first threshold is ``+inf``. With a
    single class present the undefined axis is NaN.
    """
    s = to_numpy(scores).reshape(-1).astype(np.float64)
    t = _binary_targets(targets)
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, dtype=np.int64)
    tp = np.cumsum(t)[last] if s.size else np.zeros(0)
    fp = (last + 1) - tp
    npos, nneg = int(t.sum()), int(t.size - t.sum())
    tpr = np.r_[0.0, tp / npos] if npos else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fp / nneg] if nneg else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


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
            balanced_accuracy=_nanmean(bal),
            macro_f1=_nanmean(f1),
            macro_auroc=_nanmean(aucs),
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
        t = _indices(targets, "targets")
        pred = p.argmax(1)
        cm = confusion_matrix(t, pred, k)
        f1 = f1_scores(t, pred, k)
        kappa = quadratic_weighted_kappa(t, pred, k)
        out.update(
            accuracy=accuracy(t, pred),
            balanced_accuracy=balanced_accuracy(t, pred, k),
            macro_f1=_nanmean(f1),
            macro_auroc=_nanmean(aucs),
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


# ------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------
def _label_pair(pred: ArrayLike, target: ArrayLike, valid: ArrayLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened ``(pred, target)`` int64 tensors of the pixels inside ``valid``."""
    p = torch.as_tensor(to_numpy(pred)).long()
    t = torch.as_tensor(to_numpy(target)).long()
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    if valid is not None:
        v = torch.as_tensor(to_numpy(valid)).bool()
        if v.shape != t.shape:
            raise ValueError(f"valid {tuple(v.shape)} and target {tuple(t.shape)} differ in shape")
        return p[v], t[v]
    return p.reshape(-1), t.reshape(-1)


def dice_iou(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    *,
    valid: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU ``(K,)`` of one case, over the pixels inside ``valid`` only (MONAI).

    Args:
        pred, target: label maps of class indices, same spatial shape (2D or 3D).
        num_classes: K, background (index 0) included.
        valid: bool map of the pixels to score (field of view, not nodata, not padding).

    A class absent from ``target`` gets NaN for both (MONAI's ``ignore_empty``): its score is undefined,
    not 0; false positives of such a class still count in the pooled scores of :func:`segmentation_metrics`.
    """
    from monai.metrics import compute_dice, compute_iou

    p, t = _label_pair(pred, target, valid)
    k = int(num_classes)
    if p.numel() == 0:
        nan = np.full(k, np.nan)
        return nan, nan.copy()
    dice = compute_dice(p.view(1, 1, -1), t.view(1, 1, -1), include_background=True, num_classes=k)[0]
    iou = torch.stack(
        [compute_iou((p == c).view(1, 1, -1).to(torch.uint8), (t == c).view(1, 1, -1).to(torch.uint8))[0, 0]
         for c in range(k)]
    )  # fmt: skip  (one class at a time: no (K, N) one-hot for large volumes)
    return dice.double().numpy(), iou.double().numpy()


def label_confusion(pred: ArrayLike, target: ArrayLike, num_classes: int, *, valid: ArrayLike | None = None) -> np.ndarray:
    """``(K, K)`` pixel counts inside ``valid`` (rows true class, columns predicted); sums over cases pool them."""
    p, t = _label_pair(pred, target, valid)
    k = int(num_classes)
    if p.numel() and (int(min(p.min(), t.min())) < 0 or int(max(p.max(), t.max())) >= k):
        raise ValueError(f"label values must lie in [0, {k})")
    return torch.bincount(t * k + p, minlength=k * k).reshape(k, k).numpy().astype(np.int64)


BACKGROUND_NAMES = ("background", "bg", "backgr", "none", "void", "unlabeled", "unlabelled", "normal", "0")


def is_background(name: str) -> bool:
    """True when a class name means "no structure" (``background``, ``none``, ``void`` ...)."""
    return str(name).strip().lower().replace(" ", "_") in BACKGROUND_NAMES


def segmentation_metrics(
    dice: ArrayLike,
    iou: ArrayLike,
    *,
    class_names: Sequence[str],
    confusion: ArrayLike | None = None,
    background: bool | None = None,
) -> dict[str, Any]:
    """Summarise per-case Dice/IoU ``(N, K)`` (from :func:`dice_iou`) as a JSON-ready dict.

    Args:
        dice, iou: per case and class, NaN where the class is absent from the case's truth.
        class_names: the K class names.
        confusion: the summed :func:`label_confusion` of all cases (adds ``pooled`` scores).
        background: whether class 0 is a background to leave out of the means; None decides by its name
            (:func:`is_background`): ``background`` in organ or vessel maps is, ``water`` in a land-cover
            map is not.

    Returns ``dice``/``iou`` per scored class (mean over the cases where the class is present),
    ``mean_dice``/``mean_iou`` over them, ``background`` (class 0's Dice and IoU reported apart, or None
    when class 0 is a real class and is scored with the others), ``cases_with_class``, ``num_cases``
    and, with ``confusion``, ``pooled`` Dice/IoU over all valid pixels of all cases (false positives
    in cases without the class included). ``notes`` explains nulls.
    """
    d = np.atleast_2d(np.asarray(dice, dtype=np.float64))
    j = np.atleast_2d(np.asarray(iou, dtype=np.float64))
    names = [str(c) for c in class_names]
    k = len(names)
    if k == 0 or d.shape[1] != k or j.shape != d.shape:
        raise ValueError(f"dice {d.shape} / iou {j.shape} do not match {k} classes")
    has_bg = is_background(names[0]) if background is None else bool(background)
    first = 1 if has_bg else 0
    notes: list[str] = []
    dice_mean = np.array([_nanmean(d[:, c]) for c in range(k)])
    iou_mean = np.array([_nanmean(j[:, c]) for c in range(k)])
    present = np.isfinite(d).sum(0)
    scored = names[first:]
    for c in range(first, k):
        if present[c] == 0:
            notes.append(f"class {names[c]!r} is absent from every case's truth: its Dice/IoU are null")
    if not has_bg:
        notes.append(f"class 0 ({names[0]!r}) is a real class, not a background: it is part of the means")
    out: dict[str, Any] = {
        "num_cases": int(d.shape[0]),
        "class_names": names,
        "dice": dict(zip(scored, dice_mean[first:])),
        "iou": dict(zip(scored, iou_mean[first:])),
        "mean_dice": _nanmean(dice_mean[first:]),
        "mean_iou": _nanmean(iou_mean[first:]),
        "background": {"name": names[0], "dice": dice_mean[0], "iou": iou_mean[0]} if has_bg else None,
        "cases_with_class": dict(zip(names, present)),
        "notes": notes,
    }
    if confusion is not None:
        cm = np.asarray(confusion, dtype=np.float64)
        tp = np.diag(cm)
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        pd, pj = safe_divide(2 * tp, 2 * tp + fp + fn), safe_divide(tp, tp + fp + fn)
        out["pooled"] = {
            "dice": dict(zip(names, pd)),
            "iou": dict(zip(names, pj)),
            "mean_dice": _nanmean(pd[first:]),
            "mean_iou": _nanmean(pj[first:]),
            "pixels": int(cm.sum()),
        }
    return to_json(out)


# ------------------------------------------------------------------------------------------------
# anomaly
# ------------------------------------------------------------------------------------------------
def stratified_subsample(labels: np.ndarray, max_pixels: int, seed: int | Sequence[int]) -> np.ndarray | None:
    """Sorted indices of a seeded subset of at most ``max_pixels`` elements of binary ``labels``.

    Up to half come from each class (the rest from the other when one is smaller); None when
    ``labels`` already fits (keep everything).
    """
    if labels.size <= max_pixels:
        return None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(labels == 0)
    half = max_pixels // 2
    n_pos = min(pos.size, max(half, max_pixels - neg.size))
    n_neg = min(neg.size, max_pixels - n_pos)
    pick = [rng.choice(pos, n_pos, replace=False) if n_pos < pos.size else pos,
            rng.choice(neg, n_neg, replace=False) if n_neg < neg.size else neg]  # fmt: skip
    return np.sort(np.concatenate(pick))


def pixel_auroc(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    max_pixels: int | None = 1_000_000,
    seed: int = 0,
) -> float:
    """Pixel-level AUROC of flat ``scores`` for ``targets`` (0/1), with a deterministic cap on the pixel count.

    Above ``max_pixels`` it keeps a seeded random subset, up to half from each class: the AUROC does
    not depend on class prevalence, so this estimates the full value without bias.
    """
    s = to_numpy(scores).reshape(-1)
    t = _binary_targets(targets)
    if max_pixels is not None:
        idx = stratified_subsample(t, int(max_pixels), seed)
        if idx is not None:
            s, t = s[idx], t[idx]
    return auroc(s, t)


def region_labels(mask: ArrayLike, valid: ArrayLike | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a binary anomaly mask (full connectivity) inside ``valid``: ``(labels, n)``."""
    from scipy import ndimage

    m = to_numpy(mask) > 0
    if valid is not None:
        m &= to_numpy(valid).astype(bool)
    structure = ndimage.generate_binary_structure(m.ndim, m.ndim)
    labels, n = ndimage.label(m, structure=structure)
    return labels.astype(np.int64), int(n)


def pro_curve(scores: ArrayLike, regions: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-region-overlap curve ``(fpr, pro, thresholds)`` of flat pixel arrays.

    Args:
        scores: ``(P,)`` anomaly scores of the pixels to evaluate (valid pixels of all images).
        regions: ``(P,)`` int: 0 for a normal pixel, ``r > 0`` for a pixel of anomaly region ``r``
            (region ids unique across images, e.g. from :class:`PixelAccumulator`).

    One point per distinct score (pixels with ``score >= threshold`` are called anomalous), from
    (0, 0); region sizes are counted in ``regions`` itself. NaN axes when there is no normal pixel or
    no region.
    """
    s = to_numpy(scores).reshape(-1).astype(np.float64)
    r = to_numpy(regions).reshape(-1).astype(np.int64)
    if s.shape != r.shape:
        raise ValueError(f"{s.size} scores for {r.size} region labels")
    ids, inverse, sizes = np.unique(r, return_inverse=True, return_counts=True)
    n_regions = int((ids > 0).sum())
    n_normal = int(sizes[ids == 0].sum())
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1] if s.size else np.zeros(0, dtype=np.int64)
    normal = (r == 0)[order]
    fpr = np.cumsum(normal)[last] / n_normal if n_normal else np.full(last.size, np.nan)
    if n_regions:
        weight = np.where(ids > 0, 1.0 / (sizes * n_regions), 0.0)[inverse][order]
        pro = np.cumsum(weight)[last]
    else:
        pro = np.full(last.size, np.nan)
    return np.r_[0.0, fpr], np.r_[0.0, pro], np.r_[np.inf, s_sorted[last]]


def _integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under a monotone curve ``y(x)`` from ``x = 0`` to ``limit`` (interpolated at the limit)."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit:
        i = int(np.argmax(x > limit))
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(
    maps: ArrayLike | Sequence[ArrayLike],
    masks: ArrayLike | Sequence[ArrayLike],
    valid: ArrayLike | Sequence[ArrayLike] | None = None,
    *,
    fpr_limit: float = 0.3,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (see the module docstring).

    ``maps``/``masks``/``valid`` are one image each, or sequences of per-image arrays (shapes may
    differ between images). NaN when there is no anomaly region or no normal pixel.
    """
    acc = PixelAccumulator(max_pixels_per_case=None)
    if isinstance(maps, (list, tuple)):
        valids = [None] * len(maps) if valid is None else list(valid)  # type: ignore[arg-type]
        for m, g, v in zip(maps, masks, valids):  # type: ignore[arg-type]
            acc.add(m, g, v)
    else:
        acc.add(maps, masks, valid)
    return acc.aupro(fpr_limit=fpr_limit)


def aupro_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under a PRO curve (from :func:`pro_curve`) up to ``fpr_limit``."""
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if fpr.size < 2 or not np.isfinite(fpr).all() or not np.isfinite(pro).all():
        return float("nan")
    return _integrate_to(fpr, pro, float(fpr_limit)) / float(fpr_limit)


class PixelAccumulator:
    """Collect pixel scores and anomaly regions case by case, for pixel AUROC and AUPRO.

    Each :meth:`add` labels the case's anomaly regions (connected components inside ``valid``),
    gives them ids unique across cases and keeps the valid pixels' scores. Memory is bounded by
    ``max_pixels_per_case``: above it, a seeded random subset of the case's normal pixels and of its
    anomalous pixels (each up to half the budget) is kept. Overlaps and rates are then estimated from
    the kept pixels; below the cap everything is exact.

    Args:
        max_pixels_per_case: pixel budget per case (None keeps every valid pixel).
        seed: seeds the subsampling (case ``i`` uses ``[seed, i]``).
    """

    def __init__(self, max_pixels_per_case: int | None = 2_000_000, seed: int = 0) -> None:
        self.max_pixels_per_case = None if max_pixels_per_case is None else int(max_pixels_per_case)
        self.seed = int(seed)
        self._scores: list[np.ndarray] = []
        self._regions: list[np.ndarray] = []
        self.num_regions = 0
        self.num_cases = 0

    def add(self, amap: ArrayLike, mask: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Add one case: anomaly map, binary ground-truth mask, optional valid map (same spatial shape)."""
        a = to_numpy(amap).astype(np.float32)
        m = to_numpy(mask)
        if a.shape != m.shape:
            raise ValueError(f"anomaly map {a.shape} and mask {m.shape} differ in shape")
        v = np.ones(a.shape, dtype=bool) if valid is None else to_numpy(valid).astype(bool)
        if v.shape != a.shape:
            raise ValueError(f"valid {v.shape} and anomaly map {a.shape} differ in shape")
        labels, n = region_labels(m, v)
        regions = np.where(labels > 0, labels + self.num_regions, 0)[v]
        scores = a[v]
        if not np.isfinite(scores).all():
            raise ValueError("anomaly map contains NaN or Inf inside the valid region")
        if self.max_pixels_per_case is not None:
            idx = stratified_subsample((regions > 0).astype(np.int8), self.max_pixels_per_case,
                                        seed=[self.seed, self.num_cases])  # fmt: skip
            if idx is not None:
                scores, regions = scores[idx], regions[idx]
        self._scores.append(scores)
        self._regions.append(regions)
        self.num_regions += n
        self.num_cases += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All kept ``(scores, regions)`` as flat arrays."""
        if not self._scores:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.concatenate(self._scores), np.concatenate(self._regions)

    @property
    def num_pixels(self) -> int:
        return int(sum(s.size for s in self._scores))

    def pixel_auroc(self, max_pixels: int | None = 1_000_000, seed: int | None = None) -> float:
        s, r = self.arrays()
        return pixel_auroc(s, (r > 0).astype(np.int64), max_pixels=max_pixels, seed=self.seed if seed is None else seed)

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return pro_curve(*self.arrays())

    def aupro(self, fpr_limit: float = 0.3) -> float:
        fpr, pro, _ = self.pro_curve()
        return aupro_from_curve(fpr, pro, fpr_limit)


def anomaly_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    pixels: PixelAccumulator | None = None,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """Image- and pixel-level anomaly metrics as a JSON-ready dict.

    Args:
        scores: ``(N,)`` image anomaly scores.
        labels: ``(N,)`` 0 normal / 1 anomalous.
        pixels: a :class:`PixelAccumulator` of the cases with ground-truth masks (None: no pixel metrics).
        threshold: the image-score threshold in use (anomalous when ``score > threshold``, as
            ``unimae predict``); adds sensitivity, specificity and accuracy at it.
        fpr_limit: FPR integration limit of AUPRO.

    Returns ``image_auroc``, ``num_samples``, ``num_anomalous``, optionally ``image_threshold`` with
    ``sensitivity``/``specificity``/``accuracy``, and with ``pixels``: ``pixel_auroc``, ``aupro``,
    ``aupro_fpr_limit``, ``num_regions``, ``pixels_scored``; ``notes`` explains nulls.
    """
    s = to_numpy(scores).reshape(-1).astype(np.float64)
    t = _binary_targets(labels)
    notes: list[str] = []
    out: dict[str, Any] = {"num_samples": int(t.size), "num_anomalous": int(t.sum()), "image_auroc": auroc(s, t)}
    if not math.isfinite(out["image_auroc"]):
        notes.append("image AUROC is undefined (null): the data are all normal or all anomalous")
    if threshold is not None:
        pred = s > float(threshold)
        tp, fn = int((pred & (t == 1)).sum()), int((~pred & (t == 1)).sum())
        tn, fp = int((~pred & (t == 0)).sum()), int((pred & (t == 0)).sum())
        out.update(
            image_threshold=float(threshold),
            sensitivity=float(safe_divide(tp, tp + fn)),
            specificity=float(safe_divide(tn, tn + fp)),
            accuracy=float(safe_divide(tp + tn, t.size)),
        )
    if pixels is not None:
        out.update(
            pixel_auroc=pixels.pixel_auroc(),
            aupro=pixels.aupro(fpr_limit),
            aupro_fpr_limit=float(fpr_limit),
            num_regions=pixels.num_regions,
            pixels_scored=pixels.num_pixels,
        )
        if pixels.num_regions == 0:
            notes.append("pixel AUROC and AUPRO are undefined (null): no ground-truth anomaly region")
        elif not math.isfinite(out["pixel_auroc"]):
            notes.append("pixel AUROC is undefined (null): no normal pixel")
    out["notes"] = notes
    return to_json(out)
