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

The per-task loops are in :mod:`unimae.apps.evaluate_tasks`, the plots and the CSV in
:mod:`unimae.apps.evaluate_report`; this module finds the cases (files or synthetic data) and writes the result.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unimae.apps.commands import DEFAULT_SYNTHETIC_SAMPLES, EVAL_SEED, add_evaluate_parser  # noqa: F401 (re-exported)
from unimae.apps.evaluate_report import (
    plot_confusion,
    plot_dice,
    plot_multilabel_confusion,
    plot_roc,
    write_csv,
    write_json,
)
from unimae.apps.evaluate_tasks import EvalCase, eval_anomaly, eval_classify, eval_segment
from unimae.core import metrics as M
from unimae.core.checkpoint_io import checkpoint_paths, read_checkpoint_meta
from unimae.core.errors import InputError
from unimae.core.tasks import get_task
from unimae.domains.base import DomainPlugin
from unimae.domains.datasets import local_dataset, normal_class_index

__all__ = ["EVAL_SEED", "evaluate", "add_evaluate_parser", "run_evaluate"]

PROG = "unimae"
_SYNTHETIC = ("synthetic", "synth")
_CHECKPOINT_KEYS = ("step", "epoch", "best_metric", "best_value", "monitor", "init")

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


def _synthetic_cases(plugin: DomainPlugin, task: str, n: int, seed: int, size: Sequence[int]) -> tuple[Any, Iterator[EvalCase]]:
    ds = plugin.synthetic(n, seed=seed, size=list(size) if len(size) > 1 else size[0], task=task)

    def cases() -> Iterator[EvalCase]:
        for i in range(n):
            s = ds[i]
            yield EvalCase(id=f"synthetic_{i:04d}", path=None, source=s, label=s.label, mask=s.mask)

    return ds, cases()


def _file_dataset(
    plugin: DomainPlugin, data: str | Path, task: str, class_names: Sequence[str], split: str | None,
    multi_label: bool = False,
):
    """The :class:`LocalDataset` listing files, labels and masks (and FOV masks).

    Classification labels are indices into the checkpoint's classes; anomaly labels keep the data's own
    classes (``normal`` / ``pneumonia`` / ``No Finding`` ...), whose normal class is found afterwards.
    """
    task_def = get_task(task)
    names = list(class_names) if task_def.image_labels else None
    need = task if task_def.class_outputs else None
    kw: dict[str, Any] = {"class_names": names, "task": need}
    if task_def.image_labels and multi_label:
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


def _file_cases(ds: Any) -> Iterator[EvalCase]:
    for i, f in enumerate(ds.files):
        has_fov = getattr(ds, "fovs", None) is not None and ds.fovs[i] is not None
        yield EvalCase(
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
    tta: str | None = None,
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
        tta: test-time augmentation (:data:`~unimae.core.tta.TTA_MODES`; default: the checkpoint's).
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
    predictor = load_predictor(checkpoint, device=device, precision=precision, tta=tta)
    plugin, task = predictor.plugin, predictor.task
    task_def = predictor.task_def
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
        if task_def.trains_on_normal and ds.labels is None and ds.masks is None:
            raise InputError(
                "anomaly evaluation needs labels (a normal class and others: a folder per class or a CSV label column) "
                "or masks, and this dataset has neither",
                data,
            )
        normal_name = normal_how = None
        if task_def.trains_on_normal and ds.labels is not None:
            normal_name, normal_how = _anomaly_labels(ds, normal_class, (predictor.anomaly or {}).get("normal_class"), data)
        if task_def.image_labels and ds.multi_label and not predictor.multi_label:
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
        if task_def.image_labels:
            res = eval_classify(predictor, cases, bar, threshold)
        elif task_def.pixel_labels:
            res = eval_segment(predictor, cases, bar, ignore_index)
        else:
            res = eval_anomaly(predictor, cases, bar, threshold, image_threshold, eval_seed,
                                case_classes=case_classes, normal_class=normal_name)  # fmt: skip
    finally:
        bar.close()

    files = {"metrics": "metrics.json", "per_case": write_csv(out / "per_case.csv", res["rows"]).name}
    plots: list[str] = []
    metrics = res["metrics"]
    if task_def.image_labels:
        if predictor.multi_label:
            plots.append(plot_multilabel_confusion(metrics["confusion"], out / "confusion_matrix.png",
                                                    metrics["threshold"]).name)  # fmt: skip
        else:
            cm = np.asarray(metrics["confusion_matrix"])
            plots.append(plot_confusion(cm, predictor.class_names, out / "confusion_matrix.png",
                                         f"confusion matrix ({n} cases)").name)  # fmt: skip
        kind = "per finding" if predictor.multi_label else "one-vs-rest"
        plots.append(plot_roc(res["curves"], out / "roc.png", f"ROC {kind} ({n} cases)").name)
    elif task_def.pixel_labels:
        plots.append(plot_dice(metrics, out / "dice.png").name)
    else:
        plots.append(plot_roc(res["curves"], out / "roc.png", f"anomaly ROC ({n} cases)").name)
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
    if task_def.calibrated:
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
        "tta": predictor.tta,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out / "metrics.json", payload)
    return M.to_json(payload)


def _check_synthetic_classes(plugin: DomainPlugin, task: str, class_names: Sequence[str]) -> None:
    """The checkpoint's classes must be the synthetic data's (same count) for the labels to mean anything."""
    task_def = get_task(task)
    if not task_def.class_outputs:
        return
    expected = task_def.domain_class_names(plugin)
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

    task_def = get_task(task)
    if task_def.image_labels:
        parts = [f"accuracy {f(m['accuracy'])}", f"balanced accuracy {f(m['balanced_accuracy'])}",
                 f"macro-F1 {f(m['macro_f1'])}", f"macro AUROC {f(m['macro_auroc'])}"]  # fmt: skip
        if m.get("quadratic_kappa") is not None:
            parts.append(f"quadratic kappa {f(m['quadratic_kappa'])}")
    elif task_def.pixel_labels:
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
            progress=not getattr(args, "no_progress", False), tta=getattr(args, "tta", None),
        )  # fmt: skip
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: evaluated {headline(result)}")
    print(f"{PROG}: wrote {Path(args.out) / 'metrics.json'}, per_case.csv and {', '.join(result['files']['plots'])}")
    return 0
