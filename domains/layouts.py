"""Local datasets in the layouts users have: :func:`local_dataset` and the splits it makes.

Shared by every domain: the functions here only talk to a plugin through the protocol of
:mod:`unimae.domains.base` (``accepts``, ``read``, ``read_mask``, ``preprocess``, ``plot``,
``spatial_dims``, ``extensions``). Folder layouts are in :mod:`unimae.domains.folders`, CSV manifests in
:mod:`unimae.domains.manifests`, the dataset class in :mod:`unimae.domains.localdata`.

Layouts :func:`local_dataset` understands (checked in this order)
------------------------------------------------------------------
``csv``
    A CSV manifest (``source`` ends in ``.csv``, or a folder holding ``manifest.csv``). Column names
    are matched case-insensitively, spaces and hyphens read as ``_``; the first known name of each
    role is used (:data:`COLUMNS`): image (``image``, ``path``, ``filepath``, ``file``, ``filename``
    ...; required), label (``label``, ``class``, ``target`` ...; a class name or an integer index;
    multi-label as ``|``-separated names), class name (``class_name`` ...: names for integer labels,
    or the labels themselves when there is no label column), mask (``mask``, ``vessel_mask``,
    ``segmentation`` ...), field of view (``fov_mask``, ``fov``, ``roi_mask`` ...), split (``split``,
    ``subset``, ``set`` ...; ``train``/``val``/``test`` and their aliases, others through
    ``split_map``) and group (``group``, ``patient_id``, ``subject`` ...). Paths are relative to the
    CSV's folder; every row's files must exist, whatever its split. Class names are taken from *all*
    rows, so train and val agree on indices. A folder's ``manifest.csv`` that does not fit (no image
    column, split names it cannot map, files of another domain) gives way to the folder's own layout,
    with a note.
``split folders``
    A folder whose subfolders are split names (``train``/``training``, ``val``/``valid``/
    ``validation``, ``test``/``testing``): the requested split's subfolder is read with the
    layouts below (class names are the union over the splits).
``segmentation``
    A folder with an image folder (``images``, ``imagesTr`` ...) and a mask folder (``masks``,
    ``labels``, ``labelsTr``, ``annotations``, ``1st_manual`` ...). Files are paired by stem;
    mask stems may carry a suffix (``_mask``, ``_manual1``, ``_label``, ``_seg``, ``_gt`` ...) and
    image stems may carry ``_training``/``_test``/``_0000`` (DRIVE, nnU-Net). A field-of-view folder
    (``fov``, ``roi``, or DRIVE's ``mask/`` beside ``1st_manual/``) gives each image its FOV mask.
``paired``
    Images and their masks in one folder, the mask named after its image with a suffix: CHASE_DB1
    (``Image_01L.jpg`` + ``Image_01L_1stHO.png`` / ``_2ndHO.png``), STARE (``im0001.ppm`` +
    ``im0001.ah.ppm`` / ``.vk.ppm``), ``x.png`` + ``x_mask.png``; the first annotator's mask is used
    (:data:`PAIRED_MASK_SUFFIXES` order), a ``_fov`` file is the image's field of view.
``class_folders``
    No image files at the top and at least two subfolders holding images: one class per
    subfolder, class names = sorted subfolder names (``data/normal/*.png``,
    ``data/pneumonia/*.png``). For 3D domains a subfolder that *is* a DICOM series is an image,
    not a class.
``folder``
    Anything else: the image files in the folder and its direct subfolders, unlabelled
    (pretraining). For 3D domains a DICOM series folder counts as one image, and a ``source``
    that is itself a DICOM series is a dataset of one volume.

Labels are single-label (one class index per image, a softmax classifier) unless a label holds
``|``-separated names or ``multi_label=True`` is asked for.

Splits
------
When the source carries split information (a ``split`` column or split subfolders) ``split``
selects it. When it has ``train`` but no ``val`` (a train/test manifest), ``val_fraction`` (default
:data:`DEFAULT_VAL_FRACTION`; 0 turns it off) of the train part is carved out as ``val``. A source
*without* split information is taken whole for every split, so ``data.train`` and ``data.val`` can
each point at their own folder or CSV; pass ``val_fraction`` (e.g. 0.1) to hold out a validation
set instead. Every split the tool makes is deterministic (by hash), stratified by class and keeps
each group (a ``group``/``patient_id``/``subject`` column, or ``group_by``) on one side.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimae.core.errors import InputError
from unimae.core.tasks import get_task
from unimae.domains.folders import _from_folder_layout
from unimae.domains.localdata import DEFAULT_VAL_FRACTION, DROP_SPLITS, LAYOUT_HELP, LocalDataset, _norm_split, _stem
from unimae.domains.manifests import _DoesNotFit, _from_manifest

if TYPE_CHECKING:
    from unimae.domains.base import DomainPlugin

__all__ = ["local_dataset"]


def local_dataset(
    plugin: DomainPlugin,
    source: str | Path,
    *,
    split: str = "train",
    class_names: Sequence[str] | None = None,
    mask_dir: str | None = None,
    val_fraction: float | None = None,
    task: str | None = None,
    split_map: Mapping[str, str] | str | None = None,
    group_by: str | None = None,
    multi_label: bool | None = None,
    **kwargs: Any,
) -> LocalDataset:
    """A :class:`LocalDataset` of ``source`` (a folder or a CSV manifest) read through ``plugin``.

    The layout is detected as described in the module docstring (``csv``, split folders,
    ``segmentation``, ``paired``, ``class_folders``, ``folder``). Only files the plugin ``accepts()``
    are listed.

    Args:
        plugin: the domain plugin that reads the files (:func:`unimae.domains.datasets.local_dataset` also
            takes a registered domain name).
        source: a CSV manifest, or a folder in one of the layouts.
        split: ``"train"``, ``"val"`` or ``"test"`` (aliases ``valid``, ``validation`` ...). Selects the
            rows/subfolder when the source has split information; a source without it is taken whole,
            unless ``val_fraction`` is set.
        class_names: fix the class list (and so the label indices) instead of deriving it from the data,
            e.g. to give a validation set the training set's classes. Unknown classes are an error.
        mask_dir: name of the mask sub-folder for the segmentation layout when it is not one of the usual
            names (``masks``, ``labels``, ``1st_manual`` ...).
        val_fraction: the validation fraction the tool carves out (0 <= f < 1): of the ``train`` part of
            a source whose splits have no ``val`` (default :data:`DEFAULT_VAL_FRACTION`; 0 = none), or of
            a source without split information (default: none, the source is taken whole). Stratified by
            class, grouped by ``group_by``, deterministic (by hash).
        task: when given, check the data can serve it: ``"classify"`` needs labels, ``"segment"`` masks.
        split_map: manifest split names to ``train``/``val``/``test`` (or ``none`` to leave rows out),
            as a mapping or ``"all:train,holdout:test"``.
        group_by: the manifest column of the group (patient / subject) ids (default: a ``group``,
            ``patient_id``, ``subject`` ... column when there is one), or ``"prefix"``: the file-name
            part before the first ``_`` (NIH ``00001281_000.png`` -> ``00001281``); ``none`` = no groups.
        multi_label: None = multi-label only when a label holds ``|``-separated names; True/False forces it.
        **kwargs: passed to ``plugin.read`` and ``plugin.preprocess`` (each takes the names it knows).

    Raises:
        InputError: a missing source, an unknown split, no accepted files (naming the folder and the
            accepted extensions), a manifest problem (naming the CSV, the line and the problem), images
            without masks, an empty split.
    """
    want = _norm_split(split)
    if want is None:
        raise InputError(f"unknown split {split!r}; use train, val or test")
    if val_fraction is not None and not 0.0 <= float(val_fraction) < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    src = Path(source).expanduser()
    if not src.exists():
        raise InputError(f"dataset source not found (give a folder or a CSV manifest; {LAYOUT_HELP})", src)
    smap = _split_map(split_map)
    opts = dict(class_names=class_names, smap=smap, multi_label=multi_label, group_by=group_by)

    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise InputError(f"a dataset source must be a folder or a .csv manifest ({LAYOUT_HELP})", src)
        ds = _from_manifest(plugin, src, **opts)
    else:
        ds = _from_folder(plugin, src, want, mask_dir, opts)
    ds.load_kwargs = dict(kwargs)
    _apply_group_by(ds, group_by, src)
    ds = _select_split(ds, want, val_fraction, src)
    ds.split = want
    if len(ds) == 0:
        raise InputError(f"no {want} images found ({LAYOUT_HELP})", src)
    _check_task(ds, task, src)
    return ds


def _split_map(value: Mapping[str, str] | str | None) -> dict[str, str]:
    """``{"all": "train", ...}`` from a mapping or ``"all:train,holdout:test"``; targets checked."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return {}
    if isinstance(value, str):
        pairs = []
        for part in value.split(","):
            if not part.strip():
                continue
            if ":" not in part and "=" not in part:
                raise InputError(f"data.split_map entry {part.strip()!r} is not NAME:SPLIT (e.g. all:train,holdout:test)")
            k, v = re.split(r"[:=]", part, maxsplit=1)
            pairs.append((k, v))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise InputError(f"data.split_map must be NAME:SPLIT pairs (e.g. all:train), got {value!r}")
    out: dict[str, str] = {}
    for k, v in pairs:
        target = str(v).strip().lower()
        norm = "none" if target in DROP_SPLITS else _norm_split(target)
        if norm is None:
            raise InputError(f"data.split_map maps {str(k).strip()!r} to {str(v).strip()!r}; use train, val, test or none")
        out[str(k).strip().lower()] = norm
    return out


def _select_split(ds: LocalDataset, want: str, val_fraction: float | None, src: Path) -> LocalDataset:
    """Keep the ``want`` part of a full listing (``ds.item_splits`` when the source has splits)."""
    splits: list[str] | None = getattr(ds, "item_splits", None)
    root = src if src.is_dir() else src.parent
    if splits is None:  # no split information: whole, or a hold-out when asked for
        frac = float(val_fraction or 0.0)
        ds.has_val = frac > 0
        if frac > 0:
            held = _carve(ds, list(range(len(ds))), frac, root)
            keep = [i for i in range(len(ds)) if (i in held) == (want != "train")]
            ds.notes.append(_carve_note(ds, held, frac, "the source (it has no split information)"))
            ds.subset(keep)
            ds.split_source = "holdout"
        return ds
    present = sorted(getattr(ds, "present_splits", None) or (set(splits) - {"none"}))
    what = "split folder" if ds.split_source == "folders" else "rows with split"
    frac = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    carve = "val" not in present and "train" in present and frac > 0
    ds.has_val = "val" in present or carve
    if carve and want in ("train", "val"):
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        held = _carve(ds, train_idx, frac, root)
        if not held:
            raise InputError(
                f"no {what} 'val' (splits present: {', '.join(present)}) and too few train images "
                f"({len(train_idx)}) to carve a validation set from",
                src,
            )
        keep = [i for i in train_idx if (i in held) == (want == "val")]
        ds.notes.append(_carve_note(ds, held, frac, f"the train split (splits present: {', '.join(present)})"))
        ds.subset(keep)
        ds.split_source = "carved"
        return ds
    keep = [i for i, s in enumerate(splits) if s == want]
    if not keep:
        if ds.split_source == "folders":
            found = ", ".join(getattr(ds, "split_folder_names", present))
            raise InputError(f"no {want} split folder (found {found}); add {want}/ or pass it as its own source", src)
        raise InputError(f"no rows with split {want!r} (splits present: {', '.join(present) or 'none'})", src)
    ds.subset(keep)
    _note_shared_groups(ds, splits, want)
    return ds


def _carve_note(ds: LocalDataset, held: set[int], frac: float, where: str) -> str:
    how = []
    if ds.labels is not None and not ds.multi_label:
        how.append("stratified by class")
    if ds.groups is not None:
        how.append(f"grouped by {ds.group_source or 'group'} (no group on both sides)")
    extra = f", {' and '.join(how)}" if how else ""
    return f"validation: {len(held)} images ({frac:g}) carved out of {where}{extra}; set data.val_fraction to change it"


def _note_shared_groups(ds: LocalDataset, splits: list[str], want: str) -> None:
    groups_all: list[str | None] | None = getattr(ds, "all_groups", None)
    if groups_all is None:
        return
    sides: dict[str, set[str]] = {}
    for g, s in zip(groups_all, splits):
        if g is not None and s != "none":
            sides.setdefault(g, set()).add(s)
    shared = sum(1 for s in sides.values() if want in s and len(s) > 1)
    if shared:
        ds.notes.append(
            f"warning: {shared} {ds.group_source or 'group'} values of the {want} split also appear in another split "
            "of the given splits (the same patient on both sides inflates the figures)"
        )


def _group_key(ds: LocalDataset, i: int, root: Path) -> str:
    if ds.groups is not None and ds.groups[i] is not None:
        return "g:" + str(ds.groups[i])
    try:
        rel = ds.files[i].resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = ds.files[i].as_posix()
    return rel


def _carve(ds: LocalDataset, idx: Sequence[int], fraction: float, root: Path) -> set[int]:
    """Items of ``idx`` held out: per class (stratum) about ``fraction`` of its items, whole groups only.

    Groups (a patient's images, or single files) are ordered by the MD5 of their id and taken until the
    class's share is reached; each class keeps at least one group on the training side.
    """
    by_group: dict[str, list[int]] = {}
    for i in idx:
        by_group.setdefault(_group_key(ds, i, root), []).append(i)

    def stratum(members: list[int]) -> Any:
        if ds.labels is None or ds.multi_label:
            return None
        counts = Counter(ds.labels[i] if isinstance(ds.labels[i], int) or ds.labels[i] is None else tuple(ds.labels[i])
                         for i in members)  # fmt: skip
        return max(sorted(counts, key=str), key=lambda k: counts[k])

    strata: dict[Any, list[str]] = {}
    for g, members in by_group.items():
        strata.setdefault(stratum(members), []).append(g)
    held: set[int] = set()
    for _, gs in sorted(strata.items(), key=lambda kv: str(kv[0])):
        gs.sort(key=lambda g: hashlib.md5(g.encode("utf-8")).hexdigest())
        n_items = sum(len(by_group[g]) for g in gs)
        target = max(1, round(n_items * float(fraction)))
        taken = 0
        for g in gs[:-1]:  # at least one group of the class stays in train
            if taken >= target:
                break
            held.update(by_group[g])
            taken += len(by_group[g])
    return held


def _apply_group_by(ds: LocalDataset, group_by: str | None, src: Path) -> None:
    """Groups from the file names (``group_by="prefix"``); column groups were set by the manifest reader."""
    if group_by is None or ds.group_source is not None:
        return
    g = str(group_by).strip()
    if g.lower() in ("none", "null", "", "false"):
        return
    if g.lower() in ("prefix", "stem_prefix", "filename_prefix"):
        ds.groups = [re.split(r"[_\-.]", _stem(f), maxsplit=1)[0] for f in ds.files]
        ds.all_groups = list(ds.groups)  # type: ignore[attr-defined]
        ds.group_source = "file-name prefix"
        ds.notes.append(f"groups: the file-name prefix before '_' ({len(set(ds.groups))} groups)")
        return
    raise InputError(
        f"data.group_by={g!r}: this {ds.layout} source has no such column (group_by names a CSV column, or "
        "'prefix' for the file-name part before '_')",
        src,
    )


def _check_task(ds: LocalDataset, task: str | None, src: Path) -> None:
    fallback = next((f"; {n}" for n in ds.notes if "does not fit" in n), "")
    task_def = get_task(task) if task is not None else None
    if task_def is not None and task_def.image_labels and not ds.has_labels:
        raise InputError(
            f"classification needs labels but this {ds.layout} dataset has none "
            f"(use a folder per class or a CSV with a label column){fallback}",
            src,
        )
    if task_def is not None and task_def.pixel_labels and not ds.has_masks:
        raise InputError(
            f"segmentation needs masks but this {ds.layout} dataset has none "
            f"(use images/ + masks/ folders, masks beside their images, or a CSV with a mask column){fallback}",
            src,
        )


def _from_folder(plugin: DomainPlugin, root: Path, want: str, mask_dir: str | None, opts: dict) -> LocalDataset:
    manifest = root / "manifest.csv"
    if manifest.is_file():
        try:
            return _from_manifest(plugin, manifest, **opts)
        except _DoesNotFit as err:
            try:
                ds = _from_folder_layout(plugin, root, want, mask_dir, opts)
            except InputError:
                raise err from None
            ds.notes.insert(0, f"{manifest.name} does not fit ({err.reason}); read the folder's {ds.layout} layout instead")
            return ds
    return _from_folder_layout(plugin, root, want, mask_dir, opts)
