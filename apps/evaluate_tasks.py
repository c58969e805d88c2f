"""The per-task evaluation loops of ``unimae evaluate``: each case through the predict layer, scored against its
ground truth inside the valid region (classify: probabilities and confusion; segment: Dice / IoU per class;
anomaly: image and pixel AUROC, AUPRO, calibrated-threshold decisions). Pure numbers, no files.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.core import metrics as M
from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, Sample

__all__ = ["EvalCase", "eval_classify", "eval_segment", "eval_anomaly"]


@dataclass
class EvalCase:
    """One evaluation case: what to predict and its ground truth (mask as a path or a tensor)."""

    id: str
    path: str | None
    source: str | Path | Sample
    label: Any = None
    mask: str | Path | torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------
# per-task evaluation loops
# ------------------------------------------------------------------------------------------------
def _truth_mask(plugin: DomainPlugin, case: EvalCase, pred: Any) -> torch.Tensor:
    """The case's mask on the prediction's (source) grid, as int64."""
    if isinstance(case.mask, torch.Tensor):
        mask = case.mask.long()
    else:
        like = pred.source
        if like is None:
            raise InputError("the prediction kept no source image to read its mask against", case.path)
        mask = plugin.read_mask(case.mask, like=like).long()
    out_shape = pred.label_map.shape if pred.label_map is not None else pred.heatmap.shape
    if tuple(mask.shape) != tuple(out_shape):
        where = case.mask if not isinstance(case.mask, torch.Tensor) else case.path
        raise InputError(
            f"mask is {'x'.join(map(str, mask.shape))} but the prediction grid is {'x'.join(map(str, out_shape))}",
            where,
        )
    return mask


def _valid(pred: Any, shape: Sequence[int]) -> np.ndarray:
    v = pred.meta.get("valid")
    if v is None:
        return np.ones(tuple(shape), dtype=bool)
    arr = M.to_numpy(v).astype(bool)
    if arr.shape != tuple(shape):
        raise InputError(f"valid mask {arr.shape} does not match the prediction {tuple(shape)}", pred.meta.get("path"))
    return arr


def _classify_truth(label: Any, k: int, multi_label: bool, case: EvalCase) -> np.ndarray | int:
    """A case's label as an index (single-label) or a multi-hot ``(K,)`` vector (multi-label).

    Synthetic labels are tensors (a long index, or a float multi-hot vector); dataset labels are an
    index or a list of indices.
    """
    where = case.path or case.id
    if label is None:
        raise InputError("case has no label; classification evaluation needs one for every case", where)
    if isinstance(label, torch.Tensor):
        if label.ndim == 1 and multi_label:
            if label.numel() != k:
                raise InputError(f"label has {label.numel()} findings but the model has {k}", where)
            return (label.float() > 0.5).long().numpy()
        label = int(label.reshape(-1)[0]) if label.numel() == 1 else label.long().tolist()
    indices = [int(label)] if isinstance(label, (int, np.integer)) else [int(i) for i in label]
    bad = [i for i in indices if not 0 <= i < k]
    if bad:
        raise InputError(f"label {bad[0]} is out of range for the model's {k} classes", where)
    if multi_label:
        hot = np.zeros(k, dtype=np.int64)
        hot[indices] = 1
        return hot
    if len(indices) != 1:
        raise InputError(f"case has {len(indices)} labels but the model is single-label (one class per case)", where)
    return indices[0]


def eval_classify(predictor: Any, cases: Iterator[EvalCase], bar: Any, threshold: float | None) -> dict[str, Any]:
    names = list(predictor.class_names)
    k, multi = len(names), predictor.multi_label
    probs, truths, rows = [], [], []
    for case in cases:
        truth = _classify_truth(case.label, k, multi, case)
        pred = predictor.predict(case.source, threshold=threshold, keep_source=False)
        p = np.array([pred.probabilities[n] for n in names], dtype=np.float64)
        probs.append(p)
        truths.append(truth)
        row: dict[str, Any] = {"id": case.id, "path": case.path or ""}
        if multi:
            row["truth"] = "|".join(n for n, t in zip(names, truth) if t)
        else:
            row["truth"] = names[truth]
        row["predicted"] = "|".join(pred.predicted or [])
        row["correct"] = (row["truth"] == row["predicted"]) if multi else (int(p.argmax()) == truth)
        row.update({f"p_{n}": round(float(q), 6) for n, q in zip(names, p)})
        rows.append(row)
        bar.update(1)
    p_all = np.stack(probs) if probs else np.zeros((0, k))
    t_all = np.stack(truths) if multi and truths else np.asarray(truths, dtype=np.int64)
    thr = 0.5 if threshold is None else float(threshold)
    metrics = M.classification_metrics(p_all, t_all, class_names=names, multi_label=multi, threshold=thr)
    curves = []
    hot = t_all if multi else np.eye(k, dtype=np.int64)[t_all] if t_all.size else np.zeros((0, k), np.int64)
    for c, n in enumerate(names):
        auc = metrics["auroc"][n]
        if auc is not None:
            fpr, tpr, _ = M.roc_curve(p_all[:, c], hot[:, c])
            curves.append((n, fpr, tpr, auc))
    counts = {"cases": len(rows), "per_class": metrics["support"]}
    return {"metrics": metrics, "rows": rows, "counts": counts, "curves": curves}


def eval_segment(predictor: Any, cases: Iterator[EvalCase], bar: Any, ignore_index: int | None) -> dict[str, Any]:
    names = list(predictor.class_names)
    k = len(names)
    dices, ious, rows = [], [], []
    confusion = np.zeros((k, k), dtype=np.int64)
    for case in cases:
        if case.mask is None:
            raise InputError("case has no mask; segmentation evaluation needs one for every case", case.path or case.id)
        pred = predictor.predict(case.source)
        truth = _truth_mask(predictor.plugin, case, pred)
        valid = _valid(pred, truth.shape)
        if ignore_index is not None:
            valid &= truth.numpy() != int(ignore_index)
        inside = truth.numpy()[valid]
        bad = inside[(inside < 0) | (inside >= k)]
        if bad.size:
            raise InputError(
                f"mask holds class index {int(bad.max()) if (bad >= k).any() else int(bad.min())} inside the valid "
                f"region but the model has {k} classes ({', '.join(names)}); give --ignore-index for an ignore label",
                case.mask if not isinstance(case.mask, torch.Tensor) else case.id,
            )
        truth = torch.where(torch.from_numpy(valid), truth, torch.zeros_like(truth))  # outside valid: not scored
        labels = torch.from_numpy(pred.label_map.astype(np.int64))
        d, j = M.dice_iou(labels, truth, k, valid=valid)
        confusion += M.label_confusion(labels, truth, k, valid=valid)
        dices.append(d)
        ious.append(j)
        row: dict[str, Any] = {"id": case.id, "path": case.path or ""}
        row.update({f"dice_{n}": _round(v) for n, v in zip(names, d)})
        row.update({f"iou_{n}": _round(v) for n, v in zip(names, j)})
        row["valid_pixels"] = int(valid.sum())
        rows.append(row)
        bar.update(1)
    dice = np.stack(dices) if dices else np.zeros((0, k))
    iou = np.stack(ious) if ious else np.zeros((0, k))
    metrics = M.segmentation_metrics(dice, iou, class_names=names, confusion=confusion)
    counts = {"cases": len(rows), "valid_pixels": int(confusion.sum()),
              "pixels_per_class": dict(zip(names, confusion.sum(1).tolist()))}  # fmt: skip
    return {"metrics": metrics, "rows": rows, "counts": counts}


def _per_class_anomaly(scores: Sequence[float], labels: Sequence[int], classes: Sequence[str], flagged: Sequence[Any],
                       normal: str) -> dict[str, Any]:
    """Per class of a labelled set: cases, mean score, fraction flagged and AUROC against the normal class."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    out: dict[str, Any] = {}
    for name in dict.fromkeys([normal, *sorted(set(classes))]):
        sel = np.array([c == name for c in classes], dtype=bool)
        if not sel.any():
            continue
        f = [int(v) for v, k in zip(flagged, sel) if k and v != ""]
        entry: dict[str, Any] = {"cases": int(sel.sum()), "mean_score": float(s[sel].mean()),
                                 "flagged_fraction": float(np.mean(f)) if f else None}  # fmt: skip
        if name != normal:
            both = sel | (y == 0)
            entry["auroc_vs_normal"] = M.to_json(M.auroc(s[both], y[both])) if (y[both] == 0).any() else None
        out[name] = entry
    return out


def eval_anomaly(
    predictor: Any, cases: Iterator[EvalCase], bar: Any, threshold: float | None, image_threshold: float | None, seed: int,
    case_classes: Sequence[str] | None = None, normal_class: str | None = None,
) -> dict[str, Any]:
    scores, labels, rows = [], [], []
    pixels = M.PixelAccumulator(seed=seed)
    with_mask = 0
    pix_counts = np.zeros(3, dtype=np.int64)  # tp, fp, fn of the thresholded anomaly mask
    pixel_threshold = None
    image_threshold_used = None
    for case in cases:
        pred = predictor.predict(case.source, threshold=threshold, image_threshold=image_threshold)
        mask = None
        if case.mask is not None:
            mask = _truth_mask(predictor.plugin, case, pred) > 0
        if case.label is not None:
            lab = case.label.tolist() if isinstance(case.label, torch.Tensor) else case.label
            if isinstance(lab, (list, tuple)):
                lab = int(any(int(v) > 0 for v in lab))
            label = int(int(lab) > 0)
        elif mask is not None:
            label = int(bool(mask.any()))
        else:
            raise InputError(
                "case has neither a label (normal/anomaly) nor a mask; anomaly evaluation needs one",
                case.path or case.id,
            )
        row: dict[str, Any] = {"id": case.id, "path": case.path or "", "label": label}
        if case_classes is not None:
            row["class"] = case_classes[len(rows)]
        row["score"] = round(float(pred.score), 6)
        row["predicted_anomalous"] = "" if pred.is_anomalous is None else int(pred.is_anomalous)
        if mask is not None:
            valid = _valid(pred, mask.shape)
            pixels.add(pred.heatmap, mask.numpy(), valid)
            with_mask += 1
            row["mask_pixels"] = int((mask.numpy() & valid).sum())
            if pred.anomaly_mask is not None:
                pixel_threshold = pred.threshold
                m, a = mask.numpy() & valid, pred.anomaly_mask.astype(bool) & valid
                pix_counts += [int((m & a).sum()), int((~m & a).sum()), int((m & ~a).sum())]
        scores.append(float(pred.score))
        labels.append(label)
        rows.append(row)
        bar.update(1)
        image_threshold_used = pred.image_threshold
    metrics = M.anomaly_metrics(scores, labels, pixels=pixels if with_mask else None, threshold=image_threshold_used)
    if with_mask and pixel_threshold is not None:
        tp, fp, fn = pix_counts.tolist()
        metrics["pixel_threshold"] = float(pixel_threshold)
        metrics["pixel_dice"] = M.to_json(float(M.safe_divide(2 * tp, 2 * tp + fp + fn)))  # of the thresholded map
    if not with_mask:
        metrics["notes"].append("no ground-truth masks: pixel AUROC and AUPRO need a mask per case")
    if case_classes is not None and normal_class is not None:
        metrics["normal_class"] = normal_class
        metrics["per_class"] = _per_class_anomaly(scores, labels, [r["class"] for r in rows],
                                                  [r["predicted_anomalous"] for r in rows], normal_class)  # fmt: skip
    curves = []
    if metrics["image_auroc"] is not None:
        fpr, tpr, _ = M.roc_curve(scores, labels)
        curves.append(("image", fpr, tpr, metrics["image_auroc"]))
    if with_mask and metrics.get("pixel_auroc") is not None:
        s, r = pixels.arrays()
        idx = M.stratified_subsample((r > 0).astype(np.int8), 200_000, seed)
        if idx is not None:
            s, r = s[idx], r[idx]
        fpr, tpr, _ = M.roc_curve(s, (r > 0).astype(np.int64))
        curves.append(("pixel", fpr, tpr, metrics["pixel_auroc"]))
    counts = {"cases": len(rows), "normal": len(rows) - int(sum(labels)), "anomalous": int(sum(labels)),
              "cases_with_mask": with_mask}  # fmt: skip
    return {"metrics": metrics, "rows": rows, "counts": counts, "curves": curves}


def _round(v: float) -> float | str:
    return "" if not np.isfinite(v) else round(float(v), 6)
