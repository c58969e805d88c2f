"""The data of a fine-tuning run: training and validation sets from a ``data`` section, and class weights.

Synthetic data by default (the domain plugin's generator; anomaly: normal-only training data and validation
data with lesions), else a folder or CSV manifest read through the plugin
(:func:`~unimae.domains.datasets.local_dataset`), with the class names, masks and normal class checked before
training starts.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from unimae.apps.finetune_config import _DEFAULT_INPUT, SYNTHETIC_VAL_OFFSET, _count, _say
from unimae.core.errors import InputError
from unimae.core.patch_embed import to_tuple
from unimae.core.tasks import get_task
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.datasets import (
    DEFAULT_VAL_FRACTION,
    LocalDataset,
    check_classes,
    check_sizes,
    local_dataset,
    normal_class_index,
)

__all__ = [
    "FinetuneData",
    "build_finetune_data",
    "class_weights",
]


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
@dataclass
class FinetuneData:
    """What :func:`build_finetune_data` found.

    Attributes:
        train: the training dataset of collatable dicts (``image``, ``valid``, ``label`` / ``mask``).
        val: validation samples (:class:`Sample` in model space, full size) or None.
        eval_transform: the domain's deterministic evaluation view (classify, 2D anomaly).
        class_names: classify: classes; segment: mask values (background first where there is one);
            anomaly: ``["normal", "anomaly"]``.
        multi_label: classification labels are multi-hot.
        input_size: the training crop size per axis.
        channels: the data's channel descriptions; ``normalization``: the data's normalisation.
        normal_index: for anomaly validation data with class labels, the index of the normal class.
        normal_class: anomaly on labelled data: the name of the normal class (recorded in the checkpoint).
        source: ``"synthetic"`` or the training source; ``val_source`` likewise (None: no validation).
    """

    train: Dataset
    val: Dataset | None
    eval_transform: Callable[[Sample, int], Sample]
    class_names: list[str]
    multi_label: bool
    input_size: tuple[int, ...]
    channels: list[dict[str, Any]] | None
    normalization: dict[str, Any] | None
    normal_index: int | None = None
    normal_class: str | None = None
    source: str = "synthetic"
    val_source: str | None = None


def _is_source(value: Any) -> bool:
    return value is not None and str(value).strip().lower() not in ("", "none", "null")


def _is_synthetic(value: Any) -> bool:
    return str(value).strip().lower() == "synthetic"


def _normal_class(names: Sequence[str], given: Any = None, where: Any = None) -> int | None:
    """The index of the class that means "normal" (``normal``, ``healthy``, ``No Finding``, ``data.normal_class``
    ...), if any (see :func:`unimae.domains.datasets.normal_class_index`)."""
    return normal_class_index(names, given, where=where)[0]


def _say_notes(ds: Any, what: str) -> None:
    """Print how a local dataset was read (columns, classes, splits, field of view), once per note."""
    notes = list(getattr(ds, "notes", []) or [])
    fov = ds.fov_note() if hasattr(ds, "fov_note") else None
    if fov:
        notes.append(fov)
    for note in dict.fromkeys(notes):
        _say(f"{what}: {note}")


def _mask_classes(plugin: DomainPlugin, masks: Sequence[Path | None], given: Sequence[str] | None) -> list[str]:
    """Names of the mask values of a local segmentation dataset (scans every mask file once)."""
    top = 0
    for m in masks:
        if m is None:
            continue
        values = plugin.read_mask(m)
        if values.numel():
            lo = int(values.min())
            if lo < 0:
                raise InputError(f"mask has negative label values ({lo}); labels must be 0, 1, 2, ...", m)
            top = max(top, int(values.max()))
    if given:
        names = [str(c) for c in given]
        if top >= len(names):
            raise InputError(f"masks hold label {top} but data.class_names lists only {len(names)} classes ({names})")
        return names
    if top == 0:
        raise InputError("every training mask is all zeros; segmentation needs labelled pixels")
    if top + 1 == len(plugin.seg_class_names):
        return list(plugin.seg_class_names)
    return ["background", *(f"class_{i}" for i in range(1, top + 1))]


def build_finetune_data(plugin: DomainPlugin, task: str, data: Mapping[str, Any], seed: int) -> FinetuneData:
    """The training dataset and validation samples a ``data`` section describes (see the module docstring)."""
    d = dict(data)
    if "task" in d:
        raise InputError("data.task is set by the top-level task key; remove data.task")
    train_src, val_src = d.pop("train", None), d.pop("val", None)
    d.pop("segment_mode", None)  # recorded in the checkpoint's contract by finetune()
    d.pop("tta", None)  # likewise
    recipe = dict(plugin.recipes.get("finetune", {}))
    input_size = d.pop("input_size", recipe.get("input_size", _DEFAULT_INPUT[plugin.spatial_dims]))
    try:
        size = to_tuple(input_size, plugin.spatial_dims, "data.input_size")
    except (TypeError, ValueError) as err:
        raise InputError(str(err)) from None
    if any(int(s) < 1 for s in size):
        raise InputError(f"data.input_size must be positive, got {input_size!r}")
    num_samples = _count("num_samples", d.pop("num_samples", 256))
    num_val = _count("num_val_samples", d.pop("num_val_samples", 64))
    val_lp = d.pop("val_lesion_prob", None)
    names_given = d.pop("class_names", None)
    normal_given = d.pop("normal_class", None)
    if names_given is not None and not isinstance(names_given, (list, tuple)):
        raise InputError(f"data.class_names must be a list of names, got {names_given!r}")
    task_def = get_task(task)
    train_lp = d.pop("lesion_prob", 0.0 if task_def.trains_on_normal else None)
    train_src = train_src if _is_source(train_src) and not _is_synthetic(train_src) else None
    if train_src is not None and not _is_source(val_src) and d.get("val_fraction") is None:
        d["val_fraction"] = DEFAULT_VAL_FRACTION  # no data.val: validate on a carved-out share of data.train
    val_fraction = float(d.get("val_fraction") or 0.0)

    kw = dict(d)
    if task_def.image_labels and names_given is not None:
        kw["class_names"] = list(names_given)
    if train_src is not None and _is_source(val_src):
        kw["val_fraction"] = 0.0  # data.val is the validation set: nothing is carved out of data.train
    train = plugin.train_dataset(
        train_src, split="train", input_size=input_size, num_samples=num_samples, seed=seed, task=task,
        lesion_prob=train_lp, **kw,
    )  # fmt: skip
    samples = getattr(train, "samples", train)
    local = isinstance(samples, LocalDataset)
    if local and len(samples) == 0:
        raise InputError("the training data is empty", train_src)
    if local:
        _say_notes(samples, "training data")
        check_sizes(samples)  # a mask / FOV mask of another size than its image: one line, before training

    # classes
    multi_label = False
    normal_index = None
    normal_class: str | None = None  # anomaly on labelled data: the normal class's name
    if task_def.image_labels:
        if local:
            class_names, multi_label = list(samples.class_names), bool(samples.multi_label)
            if len(class_names) < 2:
                raise InputError(f"classification needs at least two classes, the training data have {class_names}", train_src)
        else:
            class_names, multi_label = list(plugin.class_names), bool(plugin.multi_label)
            if not class_names:
                raise InputError(f"the {plugin.name} domain has no synthetic classification labels")
    elif task_def.pixel_labels:
        class_names = _mask_classes(plugin, samples.masks or [], names_given) if local else list(plugin.seg_class_names)
    else:
        class_names = list(task_def.default_class_names)
        if local and samples.labels is not None:
            normal, how = normal_class_index(samples.class_names, normal_given, where=train_src)
            if normal is None:
                raise InputError(
                    f"anomaly training uses normal images only, but {how}; name it with data.normal_class=NAME "
                    "(or give a folder of normal images)",
                    train_src,
                )
            normal_class = samples.class_names[normal]
            keep = [i for i, lab in enumerate(samples.labels) if lab == normal or lab == [normal]]
            if not keep:
                raise InputError(f"no training images of the normal class {normal_class!r} ({how})", train_src)
            samples.subset(keep)
            samples.labels = None
            _say(f"anomaly training on the {len(keep)} {normal_class!r} images of {train_src} (normal class: {how})")

    # validation samples (model space, full size)
    val: Dataset | None = None
    val_source: str | None = None
    syn_kw = plugin.synthetic_kwargs(d)
    if (train_src is None and not _is_source(val_src)) or _is_synthetic(val_src):
        lp = val_lp if task_def.trains_on_normal else train_lp
        val = plugin.synthetic(
            num_val, seed=seed + SYNTHETIC_VAL_OFFSET, size=list(size) if len(set(size)) > 1 else size[0], task=task,
            lesion_prob=None if lp is None else float(lp), **{k: v for k, v in syn_kw.items() if k != "lesion_prob"},
        )  # fmt: skip
        val_source = "synthetic"
        if task_def.class_outputs and len(class_names) != len(task_def.domain_class_names(plugin)):
            raise InputError(
                f"data.val=synthetic: the training data have {len(class_names)} classes but the {plugin.name} "
                "synthetic data have a different set; give data.val"
            )
    elif _is_source(val_src) or (train_src is not None and (val_fraction > 0 or (local and samples.has_val))):
        src = val_src if _is_source(val_src) else train_src
        need = task if task_def.class_outputs else None
        vkw = {k: v for k, v in d.items() if k != "val_fraction" or not _is_source(val_src)}
        if task_def.image_labels and local and "multi_label" not in vkw:
            vkw["multi_label"] = True if multi_label else None
        val = local_dataset(
            plugin, src, split="val", task=need, class_names=class_names if task_def.image_labels else None, **vkw
        )
        val_source = str(src)
        if _is_source(val_src):
            _say_notes(val, "validation data")
        else:  # the same source: only what differs (how validation was made), unless the training notes said it
            said = set(getattr(samples, "notes", ()))
            for note in val.notes:
                if note.startswith("validation") and note not in said:
                    _say(note)
        check_sizes(val)
        if task_def.image_labels and local:
            check_classes(samples, val, where=src)
        if task_def.trains_on_normal:
            if val.labels is not None:
                normal_index, how = normal_class_index(val.class_names, normal_given, where=src)
                if normal_index is None:
                    raise InputError(
                        f"anomaly validation needs a normal class, but {how}; name it with data.normal_class=NAME", src
                    )
                normal_class = normal_class or val.class_names[normal_index]
            elif val.masks is None:
                raise InputError(
                    "anomaly validation needs labels (a normal/ folder beside anomaly folders, or a CSV label "
                    "column) or lesion masks, and this dataset has neither",
                    src,
                )
        elif task_def.pixel_labels and len(class_names) < 2:
            raise InputError("segmentation needs at least two classes")
    if val is not None and len(val) == 0:  # type: ignore[arg-type]
        val = None
    if val is None and task_def.image_labels and local:
        check_classes(samples, None, where=train_src)

    first = samples[0]
    eval_transform = plugin.augment(train=False, input_size=input_size, **plugin.augment_kwargs(d))
    return FinetuneData(
        train=train, val=val, eval_transform=eval_transform, class_names=[str(c) for c in class_names],
        multi_label=multi_label, input_size=tuple(int(s) for s in size),
        channels=[dict(c) for c in first.meta.get("channels") or []] or None,
        normalization=first.meta.get("normalization", getattr(plugin, "normalization", None)),
        normal_index=normal_index, normal_class=normal_class,
        source=str(train_src) if train_src is not None else "synthetic",
        val_source=val_source,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# class weights
# ------------------------------------------------------------------------------------------------
def _label_rows(dataset: Dataset, limit: int) -> tuple[list[Any], bool]:
    """Training labels: exact from a listing (manifest / class folders), else read from the first items."""
    samples = getattr(dataset, "samples", dataset)
    labels = getattr(samples, "labels", None)
    if labels is not None and hasattr(samples, "label_tensor"):
        return [samples.label_tensor(i) for i in range(len(labels))], True
    n = min(len(samples), int(limit))  # type: ignore[arg-type]
    return [samples[i].label for i in range(n)], False


def class_weights(
    dataset: Dataset, task: str, num_classes: int, *, multi_label: bool = False, limit: int = 128, max_ratio: float = 100.0
) -> tuple[torch.Tensor, str]:
    """``auto`` class weights from the training labels (or masks) and a one-line description.

    Single-label classes and segmentation classes get ``n / (K * n_c)`` (inverse frequency, mean 1 when
    balanced); a class never seen gets the largest weight. Multi-label findings get BCE
    ``pos_weight = negatives / positives``. Weights are clipped to ``max_ratio`` times the smallest.
    """
    k = int(num_classes)
    counts = torch.zeros(k, dtype=torch.float64)
    if get_task(task).pixel_labels:
        samples = getattr(dataset, "samples", dataset)
        n = min(len(samples), int(limit))  # type: ignore[arg-type]
        for i in range(n):
            s = samples[i]
            if s.mask is None:
                continue
            m = s.mask.long()[s.valid.bool()] if s.mask.shape == s.valid.shape else s.mask.long().flatten()
            counts += torch.bincount(m.clamp(0, k - 1), minlength=k).double()
        how = f"pixel frequencies of {n} training masks"
    else:
        rows, exact = _label_rows(dataset, limit)
        rows = [r for r in rows if r is not None]
        if not rows:
            raise InputError("train.class_weights=auto needs training labels, and the training data have none")
        if multi_label:
            hot = torch.stack([torch.as_tensor(r, dtype=torch.float64).reshape(-1) for r in rows])
            pos = hot.sum(0)
            neg = hot.shape[0] - pos
            w = (neg / pos.clamp(min=1.0)).clamp(1.0 / max_ratio, max_ratio)
            return w.float(), f"BCE pos_weight = negatives / positives over {hot.shape[0]} training labels"
        for r in rows:
            counts[int(r)] += 1
        how = f"{'all' if exact else 'the first'} {len(rows)} training labels"
    total = counts.sum()
    seen = counts > 0
    w = torch.where(seen, total / (k * counts.clamp(min=1.0)), torch.zeros_like(counts))
    w[~seen] = w[seen].max() if bool(seen.any()) else 1.0
    w = w.clamp(max=float(w[seen].min() if bool(seen.any()) else 1.0) * max_ratio)
    return w.float(), f"inverse frequency of {how}"
