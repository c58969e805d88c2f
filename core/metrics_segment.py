"""Segmentation metrics on label maps of class indices, computed only inside ``valid``.

A background class 0 is reported apart from the mean; a real class 0 (e.g. land-cover water) is not.
See :mod:`unimae.core.metrics` for the conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimae.core.metrics_common import ArrayLike, nanmean, safe_divide, to_json, to_numpy

__all__ = ["dice_iou", "label_confusion", "BACKGROUND_NAMES", "is_background", "segmentation_metrics"]


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
    dice_mean = np.array([nanmean(d[:, c]) for c in range(k)])
    iou_mean = np.array([nanmean(j[:, c]) for c in range(k)])
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
        "mean_dice": nanmean(dice_mean[first:]),
        "mean_iou": nanmean(iou_mean[first:]),
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
            "mean_dice": nanmean(pd[first:]),
            "mean_iou": nanmean(pj[first:]),
            "pixels": int(cm.sum()),
        }
    return to_json(out)
