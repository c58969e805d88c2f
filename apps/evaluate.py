"""``unimae evaluate``: score a fine-tuned checkpoint on labelled files or fresh synthetic data.

::

    unimae evaluate --checkpoint runs/fundus_segment/best --data data/drive_test.csv --out eval/drive
    unimae evaluate --checkpoint runs/xray_classify/best --data synthetic --num-samples 64 --out eval/syn

Every case goes through the predict layer (:mod:`unimae.apps.predict`), so evaluation sees exactly
what ``unimae predict`` produces: class probabilities, or label / heat maps on the *source* grid of
each file. Ground truth is read through the domain plugin: labels from the dataset layout (CSV
``label`` column, or a folder per class), masks with ``plugin.read_mask(mask, like=image)`` on the
source grid, and scores are computed inside the image's ``valid`` region (field of view, not nodata,
not padding) with :mod:`unimae.core.metrics`.

``--data synthetic`` evaluates on fresh synthetic data of the checkpoint's domain and task at its
input size, generated with a seed (default :data:`EVAL_SEED`) that differs from the training
(``seed``) and validation (``seed + 100003``) seeds fine-tuning uses.

Outputs in ``OUT``:

``metrics.json``
    ``task``, ``domain``, ``checkpoint`` (path, model class, classes, input size, thresholds),
    ``data`` (source, layout, split, seed), ``counts``, ``metrics`` (see the ``*_metrics`` functions
    of :mod:`unimae.core.metrics`; undefined values are ``null`` with a note), ``files``, ``seconds``.
``per_case.csv``
    One row per case: ``id``, ``path``, then the truth and the prediction (classify: ``truth``,
    ``predicted``, ``p_<class>``; segment: ``dice_<class>``, ``iou_<class>``, ``valid_pixels``;
    anomaly: ``label``, ``score``, ``predicted_anomalous``, ``mask_pixels``).
plots
    classify: ``confusion_matrix.png`` and ``roc.png`` (one-vs-rest per class, or per finding);
    segment: ``dice.png`` (per-class Dice bars); anomaly: ``roc.png`` (image, and pixel when masks exist).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.apps.commands import DEFAULT_SYNTHETIC_SAMPLES, EVAL_SEED, add_evaluate_parser  # noqa: F401 (re-exported)
from unimae.core import metrics as M
from unimae.core.checkpoint_io import checkpoint_paths, read_checkpoint_meta
from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path
from unimae.domains.base import DomainPlugin, Sample

__all__ = ["EVAL_SEED", "evaluate", "add_evaluate_parser", "run_evaluate"]

PROG = "unimae"
_SYNTHETIC = ("synthetic", "synth")
_CHECKPOINT_KEYS = ("step", "epoch", "best_metric", "best_value", "monitor", "init")


@dataclass
class _Case:
    """One evaluation case: what to predict and its ground truth (mask as a path or a tensor)."""

    id: str
    path: str | None
    source: str | Path | Sample
    label: Any = None
    mask: str | Path | torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------
# the checkpoint and the data
# ------------------------------------------------------------------------------------------------
def _checkpoint_info(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON, checked to be a fine-tuned task model (one-line errors otherwise)."""
    tensor_path, json_path = checkpoint_paths(checkpoint)
    if not json_path.is_file() and not tensor_path.is_file():
        raise InputError("checkpoint not found (give NAME, NAME.json or NAME.safetensors)", checkpoint)
    meta = read_checkpoint_meta(checkpoint)
    if not meta.get("task"):
        kind = meta.get("model_class") or "unknown model"
        raise InputError(
            f"checkpoint has no 'task' ({kind}, e.g. a pretraining checkpoint); evaluate needs a fine-tuned "
            "classify, segment or anomaly checkpoint from `unimae finetune`",
            json_path,
        )
    return meta


def _synthetic_cases(plugin: DomainPlugin, task: str, n: int, seed: int, size: Sequence[int]) -> tuple[Any, Iterator[_Case]]:
    ds = plugin.synthetic(n, seed=seed, size=list(size) if len(size) > 1 else size[0], task=task)

    def cases() -> Iterator[_Case]:
        for i in range(n):
            s = ds[i]
            yield _Case(id=f"synthetic_{i:04d}", path=None, source=s, label=s.label, mask=s.mask)

    return ds, cases()


def _file_dataset(
    plugin: DomainPlugin, data: str | Path, task: str, class_names: Sequence[str], split: str | None,
    multi_label: bool = False,
):
    """The :class:`LocalDataset` listing files, labels and masks (and FOV masks).

    Classification labels are indices into the checkpoint's classes; anomaly labels keep the data's own
    classes (``normal`` / ``pneumonia`` / ``No Finding`` ...), whose normal class is found afterwards.
    """
    from unimae.domains.datasets import local_dataset

    names = list(class_names) if task == "classify" else None
    need = task if task in ("classify", "segment") else None
    kw: dict[str, Any] = {"class_names": names, "task": need}
    if task == "classify" and multi_label:
        kw["multi_label"] = True
    if split is not None:
        return local_dataset(plugin, data, split=split, **kw)
    try:
        return local_dataset(plugin, data, split="test", **kw)
    except InputError as first:
        msg = str(first)
        if "split 'test'" not in msg and "no test " not in msg:
            raise  # a real problem with the data, not just a source without a test split
        try:
            return local_dataset(plugin, data, split="val", **kw)
        except InputError:
            raise first from None


def _case_id(path: Path, root: Path | None) -> str:
    if root is not None:
        base = root.parent if root.is_file() else root
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def _file_cases(ds: Any) -> Iterator[_Case]:
    for i, f in enumerate(ds.files):
        has_fov = getattr(ds, "fovs", None) is not None and ds.fovs[i] is not None
        yield _Case(
            id=_case_id(f, ds.root),
            path=str(f),
            source=ds.read_source(i) if has_fov else f,  # read with its given field-of-view mask
            label=None if ds.labels is None else ds.labels[i],
            mask=None if ds.masks is None else ds.masks[i],
        )


def _anomaly_labels(ds: Any, normal_class: Any, checkpoint_normal: Any, data: Any) -> tuple[str | None, str]:
    """Re-express a labelled dataset's labels as 0 (its normal class) / 1 (any other class), in place.

    The normal class: ``normal_class`` (``--normal-class``), else the checkpoint's training normal class
    when the data have it, else a class named normal / healthy / No Finding ... (or label 0 of integer
    labels). Each case keeps its class name in ``ds.case_classes`` for the per-class figures.
    """
    from unimae.domains.datasets import normal_class_index

    names = list(ds.class_names)
    given = normal_class
    if given is None and checkpoint_normal is not None:
        lowered = [str(n).strip().lower() for n in names]
        if str(checkpoint_normal).strip().lower() in lowered:
            given = checkpoint_normal
    idx, how = normal_class_index(names, given, where=data)
    if idx is None:
        raise InputError(
            f"anomaly evaluation needs to know the normal class, but {how}; pass --normal-class NAME", data
        )
    classes, binary = [], []
    for lab in ds.labels:
        members = [] if lab is None else ([lab] if isinstance(lab, int) else list(lab))
        others = [names[c] for c in members if c != idx]
        classes.append("|".join(others) if others else names[idx])
        binary.append(int(bool(others)))
    ds.labels = binary
    ds.case_classes = classes
    return names[idx], how


# ------------------------------------------------------------------------------------------------
# per-task evaluation loops
# ------------------------------------------------------------------------------------------------
def _truth_mask(plugin: DomainPlugin, case: _Case, pred: Any) -> torch.Tensor:
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


def _classify_truth(label: Any, k: int, multi_label: bool, case: _Case) -> np.ndarray | int:
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


def _eval_classify(predictor: Any, cases: Iterator[_Case], bar: Any, threshold: float | None) -> dict[str, Any]:
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


def _eval_segment(predictor: Any, cases: Iterator[_Case], bar: Any, ignore_index: int | None) -> dict[str, Any]:
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


def _eval_anomaly(
    predictor: Any, cases: Iterator[_Case], bar: Any, threshold: float | None, image_threshold: float | None, seed: int,
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


# ------------------------------------------------------------------------------------------------
# plots (matplotlib's object API with the Agg canvas: no global backend state)
# ------------------------------------------------------------------------------------------------
def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _plot_confusion(cm: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path:
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
    return _save(fig, path)


def _plot_multilabel_confusion(confusion: dict[str, dict[str, int]], path: Path, threshold: float) -> Path:
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
    return _save(fig, path)


def _plot_roc(curves: list[tuple[str, np.ndarray, np.ndarray, float]], path: Path, title: str) -> Path:
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
    return _save(fig, path)


def _plot_dice(metrics: dict[str, Any], path: Path) -> Path:
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
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["id"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    text = json.dumps(M.to_json(payload), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path


# ------------------------------------------------------------------------------------------------
# the public API
# ------------------------------------------------------------------------------------------------
def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    num_samples: int | None = None,
    seed: int | None = None,
    split: str | None = None,
    threshold: float | None = None,
    image_threshold: float | None = None,
    ignore_index: int | None = None,
    normal_class: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a task checkpoint and write ``metrics.json``, ``per_case.csv`` and plots into ``out_dir``.

    Args:
        checkpoint: a fine-tuned checkpoint (``NAME``, ``NAME.json`` or ``NAME.safetensors``) with a ``task``.
        data: ``"synthetic"``, a CSV manifest, or a folder in a layout of
            :func:`~unimae.domains.datasets.local_dataset` (class folders, images + masks ...).
        out_dir: output folder (created).
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        num_samples: synthetic: number of cases (default 32); files: evaluate only the first N.
        seed: synthetic data seed (default :data:`EVAL_SEED`); also seeds pixel subsampling.
        split: ``"train"``/``"val"``/``"test"`` rows or subfolders of a source with split information;
            default ``test``, falling back to ``val`` (a source without splits is taken whole).
        threshold: anomaly pixel threshold / multi-label decision threshold (default: the checkpoint's / 0.5).
        image_threshold: anomaly image-score threshold (default: the checkpoint's calibrated one).
        ignore_index: segmentation: a mask value that marks unlabelled pixels (e.g. 255), left out of
            the scores like pixels outside the valid region. Other values beyond the model's classes
            inside the valid region are an error.
        normal_class: anomaly on a labelled set: the name (or index) of its normal class; default: the
            checkpoint's training normal class when the data have it, else a class named normal /
            healthy / No Finding ... (every other class is anomalous; per-class figures are reported).
        progress: show a progress bar over cases.

    Returns:
        The content of ``metrics.json`` (see the module docstring).

    Raises:
        InputError: a missing checkpoint or one without a task, unreadable data, a manifest with missing
            files, masks missing for a segmentation model, labels missing for a classifier.
    """
    from tqdm.auto import tqdm

    from unimae.apps.predict import load_predictor

    t0 = time.perf_counter()
    meta = _checkpoint_info(checkpoint)
    predictor = load_predictor(checkpoint, device=device, precision=precision)
    plugin, task = predictor.plugin, predictor.task
    eval_seed = EVAL_SEED if seed is None else int(seed)
    if num_samples is not None and int(num_samples) < 1:
        raise InputError(f"num_samples must be at least 1, got {num_samples}")

    synthetic = str(data).strip().lower() in _SYNTHETIC
    case_classes = normal_name = None
    if synthetic:
        n = DEFAULT_SYNTHETIC_SAMPLES if num_samples is None else int(num_samples)
        _check_synthetic_classes(plugin, task, predictor.class_names)
        _, cases = _synthetic_cases(plugin, task, n, eval_seed, predictor.input_size)
        data_info: dict[str, Any] = {"source": "synthetic", "seed": eval_seed, "num_samples": n,
                                     "size": list(predictor.input_size)}  # fmt: skip
    else:
        ds = _file_dataset(plugin, data, task, predictor.class_names, split, multi_label=predictor.multi_label)
        if task == "anomaly" and ds.labels is None and ds.masks is None:
            raise InputError(
                "anomaly evaluation needs labels (a normal class and others: a folder per class or a CSV label column) "
                "or masks, and this dataset has neither",
                data,
            )
        normal_name = normal_how = None
        if task == "anomaly" and ds.labels is not None:
            normal_name, normal_how = _anomaly_labels(ds, normal_class, (predictor.anomaly or {}).get("normal_class"), data)
        if task == "classify" and ds.multi_label and not predictor.multi_label:
            raise InputError("the data have several labels per image but the model is single-label", data)
        case_classes = getattr(ds, "case_classes", None)
        if num_samples is not None and int(num_samples) < len(ds):
            keep = int(num_samples)
            ds.subset(range(keep))
            case_classes = None if case_classes is None else case_classes[:keep]
        n = len(ds)
        cases = _file_cases(ds)
        data_info = {"source": str(data), "layout": ds.layout, "split": ds.split,
                     "split_source": ds.split_source, "num_files": n,
                     "has_labels": ds.has_labels, "has_masks": ds.has_masks, "columns": dict(ds.columns),
                     "fov": ds.fov_note(), "notes": list(ds.notes)}  # fmt: skip
        if normal_name is not None:
            data_info["normal_class"] = {"name": normal_name, "chosen_by": normal_how}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=n, desc=f"evaluate ({predictor.domain} {task})", unit="case", disable=not progress)
    try:
        if task == "classify":
            res = _eval_classify(predictor, cases, bar, threshold)
        elif task == "segment":
            res = _eval_segment(predictor, cases, bar, ignore_index)
        else:
            res = _eval_anomaly(predictor, cases, bar, threshold, image_threshold, eval_seed,
                                case_classes=case_classes, normal_class=normal_name)  # fmt: skip
    finally:
        bar.close()

    files = {"metrics": "metrics.json", "per_case": _write_csv(out / "per_case.csv", res["rows"]).name}
    plots: list[str] = []
    metrics = res["metrics"]
    if task == "classify":
        if predictor.multi_label:
            plots.append(_plot_multilabel_confusion(metrics["confusion"], out / "confusion_matrix.png",
                                                    metrics["threshold"]).name)  # fmt: skip
        else:
            cm = np.asarray(metrics["confusion_matrix"])
            plots.append(_plot_confusion(cm, predictor.class_names, out / "confusion_matrix.png",
                                         f"confusion matrix ({n} cases)").name)  # fmt: skip
        kind = "per finding" if predictor.multi_label else "one-vs-rest"
        plots.append(_plot_roc(res["curves"], out / "roc.png", f"ROC {kind} ({n} cases)").name)
    elif task == "segment":
        plots.append(_plot_dice(metrics, out / "dice.png").name)
    else:
        plots.append(_plot_roc(res["curves"], out / "roc.png", f"anomaly ROC ({n} cases)").name)
    files["plots"] = plots

    _, json_path = checkpoint_paths(checkpoint)
    info = {
        "path": str(json_path),
        "model_class": meta.get("model_class"),
        "class_names": list(predictor.class_names),
        "multi_label": predictor.multi_label,
        "input_size": list(predictor.input_size),
        "preprocess": predictor.preprocess_kwargs,
        "normalization": predictor.contract.get("normalization"),
    }
    if task == "anomaly":
        info["anomaly"] = predictor.anomaly
    info.update({k: meta[k] for k in _CHECKPOINT_KEYS if k in meta})
    payload = {
        "task": task,
        "domain": predictor.domain,
        "checkpoint": info,
        "data": data_info,
        "counts": res["counts"],
        "metrics": metrics,
        "files": files,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _write_json(out / "metrics.json", payload)
    return M.to_json(payload)


def _check_synthetic_classes(plugin: DomainPlugin, task: str, class_names: Sequence[str]) -> None:
    """The checkpoint's classes must be the synthetic data's (same count) for the labels to mean anything."""
    if task == "anomaly":
        return
    expected = plugin.class_names if task == "classify" else plugin.seg_class_names
    if expected and len(expected) != len(class_names):
        raise InputError(
            f"the checkpoint has {len(class_names)} {task} classes ({', '.join(class_names)}) but the {plugin.name} "
            f"synthetic data have {len(expected)} ({', '.join(expected)}); evaluate it on its own data instead"
        )


def headline(result: dict[str, Any]) -> str:
    """A one-line summary of :func:`evaluate`'s result."""
    m, task = result["metrics"], result["task"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    if task == "classify":
        parts = [f"accuracy {f(m['accuracy'])}", f"balanced accuracy {f(m['balanced_accuracy'])}",
                 f"macro-F1 {f(m['macro_f1'])}", f"macro AUROC {f(m['macro_auroc'])}"]  # fmt: skip
        if m.get("quadratic_kappa") is not None:
            parts.append(f"quadratic kappa {f(m['quadratic_kappa'])}")
    elif task == "segment":
        parts = [f"mean Dice {f(m['mean_dice'])}", f"mean IoU {f(m['mean_iou'])}"]
    else:
        parts = [f"image AUROC {f(m['image_auroc'])}"]
        if "pixel_auroc" in m:
            parts += [f"pixel AUROC {f(m['pixel_auroc'])}", f"AUPRO@{m['aupro_fpr_limit']:g} {f(m['aupro'])}"]
        per_class = m.get("per_class") or {}
        others = [f"{name} {f(v.get('auroc_vs_normal'))}" for name, v in per_class.items() if "auroc_vs_normal" in v]
        if others:
            parts.append(f"per class vs {m['normal_class']!r}: " + ", ".join(others))
    return f"{result['counts']['cases']} cases ({result['domain']} {task}): " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# the CLI command
# ------------------------------------------------------------------------------------------------
def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``unimae evaluate``: 0 on success; bad input prints ``unimae: error: ...`` and returns 2."""
    try:
        result = evaluate(
            args.checkpoint, args.data, args.out, device=args.device, precision=args.precision,
            num_samples=args.num_samples, seed=args.seed, split=getattr(args, "split", None),
            threshold=getattr(args, "threshold", None), image_threshold=getattr(args, "image_threshold", None),
            ignore_index=getattr(args, "ignore_index", None), normal_class=getattr(args, "normal_class", None),
            progress=not getattr(args, "no_progress", False),
        )  # fmt: skip
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: evaluated {headline(result)}")
    print(f"{PROG}: wrote {Path(args.out) / 'metrics.json'}, per_case.csv and {', '.join(result['files']['plots'])}")
    return 0
