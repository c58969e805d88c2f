"""Local datasets in the layouts users have, domain guessing and ``unimae info`` descriptions.

Shared by every domain: the functions here only talk to a plugin through the protocol of
:mod:`unimae.domains.base` (``accepts``, ``read``, ``read_mask``, ``preprocess``, ``plot``,
``spatial_dims``, ``extensions``).

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

import csv
import difflib
import hashlib
import inspect
import os
import io
import json
import math
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, Sample, kwargs_for, check_pixel_limit

__all__ = [
    "LocalDataset",
    "local_dataset",
    "guess_domain_name",
    "describe",
    "format_description",
    "normal_class_index",
    "check_classes",
    "check_sizes",
    "mask_files_among",
    "fov_for_image",
    "image_folder_of",
    "SPLITS",
    "LAYOUTS",
    "LAYOUT_HELP",
    "COLUMNS",
    "NORMAL_NAMES",
    "DEFAULT_VAL_FRACTION",
]

LAYOUTS = ("csv", "segmentation", "paired", "class_folders", "folder")
LAYOUT_HELP = (
    "understood layouts: a CSV manifest (image/path column, optional label, mask, fov_mask, split, patient_id), "
    "images/ + masks/ (or 1st_manual/) folders, images with their masks beside them (x.png + x_mask.png, "
    "CHASE_DB1 _1stHO, STARE .ah), a folder per class, train/ val/ test/ subfolders of these, or a plain folder"
)
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev", "tune", "tuning"),
    "test": ("test", "testing"),
}
DROP_SPLITS = ("none", "ignore", "drop", "skip", "-", "exclude")
DEFAULT_VAL_FRACTION = 0.1

#: known column names per role, in order of preference (after lower-casing, spaces/hyphens -> "_")
COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "path", "filepath", "file_path", "file", "filename", "file_name", "img",
              "img_path", "image_file", "image_filename", "fname", "image_index", "image_id", "relative_path"),
    "label": ("label", "labels", "class", "target", "category", "diagnosis", "finding_labels", "findings",
              "finding", "y"),
    "class_name": ("class_name", "label_name", "classname", "class_label", "category_name", "label_text"),
    "mask": ("mask", "mask_path", "mask_file", "segmentation", "segmentation_path", "seg", "seg_path",
             "vessel_mask", "vessels", "vessel", "manual", "manual_mask", "gt", "ground_truth", "groundtruth",
             "annotation", "label_mask", "target_mask", "lesion_mask"),
    "fov": ("fov_mask", "fov", "fov_path", "fov_mask_path", "field_of_view", "roi_mask", "roi", "valid_mask",
            "fovmask"),
    "split": ("split", "subset", "set", "partition", "split_name", "data_split", "phase"),
    "group": ("group", "group_id", "patient_id", "patientid", "patient", "subject", "subject_id", "subjectid",
              "participant_id", "participant", "case_id"),
}  # fmt: skip
IMAGE_COLUMNS = COLUMNS["image"]

IMAGE_DIRS = ("images", "image", "imgs", "img", "imagestr", "original", "originals")
MASK_DIRS = (
    "masks", "labels", "labelstr", "annotations", "1st_manual", "manual1", "manual", "segmentations",
    "ground_truth", "groundtruth", "gt", "label", "mask", "2nd_manual",
)  # fmt: skip
#: field-of-view folders: always these; DRIVE's ``mask/`` when another mask folder holds the labels
FOV_DIRS = ("fov", "fovs", "fov_masks", "fov_mask", "masks_fov", "roi", "roi_masks", "valid")
MASK_SUFFIXES = (
    "_segmentation", "_manual1", "_manual", "_masks", "_mask", "_labels", "_label", "_seg", "_gt",
    "-mask", "-label", "-seg", ".mask", "_1stho", "_2ndho", ".ah", ".vk",
)  # fmt: skip
#: masks next to their image in one folder, preferred first (CHASE_DB1, STARE, generic suffixes)
PAIRED_MASK_SUFFIXES = (
    "_1stho", "_2ndho", ".ah", ".vk", "_manual1", "_manual2", "_mask", "_seg", "_segmentation", "_gt",
    "_label", "_labels", "_vessels", "-mask", "-seg", ".mask",
)  # fmt: skip
FOV_SUFFIXES = ("_fov", "_fovmask", "_fov_mask", "_roi", "_valid")
IMAGE_SUFFIXES = ("_training", "_train", "_test", "_image", "_img", "_0000")
MULTI_SUFFIXES = (".nii.gz", ".tar.gz")
MASK_EXTENSIONS = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm", ".pgm", ".nii", ".nii.gz")

#: class names that mean "normal" for anomaly training and evaluation (compared lower-case, ``_`` for spaces)
NORMAL_NAMES = ("normal", "healthy", "no_finding", "no_findings", "nofinding", "nofindings", "negative", "good",
                "background", "none", "no_dr", "control", "controls", "clear", "benign_normal", "ok")  # fmt: skip

GUESS_EXTENSIONS = (".nii", ".nii.gz", ".dcm", ".dicom", ".zip", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".ppm")
_PATIENTISH = re.compile(r"patient|birth|accession|institution|physician|operator|referring|address", re.I)

# ------------------------------------------------------------------------------------------------
# small file helpers
# ------------------------------------------------------------------------------------------------
def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name.startswith("__")  # .DS_Store, .ipynb_checkpoints, __MACOSX


def _stem(p: Path) -> str:
    """File stem without the (possibly double) extension: ``case1.nii.gz -> case1``; folders keep their name."""
    name = p.name
    if p.is_dir():
        return name
    low = name.lower()
    for ext in MULTI_SUFFIXES:
        if low.endswith(ext):
            return name[: -len(ext)]
    return p.stem


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicom_dir(folder: Path, probe: int = 4) -> bool:
    """True if ``folder`` directly holds DICOM files (``.dcm`` names or the ``DICM`` magic on a few files)."""
    if not folder.is_dir():
        return False
    probed = 0
    for p in sorted(folder.iterdir()):
        if _hidden(p) or not p.is_file():
            continue
        if p.suffix.lower() in (".dcm", ".dicom"):
            return True
        if probed < probe:
            probed += 1
            if _has_dicom_magic(p):
                return True
    return False


def _is_image(p: Path, plugin: DomainPlugin) -> bool:
    """One image for ``plugin``: an accepted file, or (3D domains) a DICOM series folder."""
    if _hidden(p):
        return False
    if p.is_dir():
        return plugin.spatial_dims == 3 and _is_dicom_dir(p)
    return p.is_file() and bool(plugin.accepts(p))


def _subdirs(folder: Path, plugin: DomainPlugin) -> list[Path]:
    """Sub-folders that are not hidden and not themselves an image (a DICOM series for 3D domains)."""
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not _hidden(p) and not _is_image(p, plugin)]


def _list_images(folder: Path, plugin: DomainPlugin, *, recurse: bool) -> list[Path]:
    """Images directly in ``folder`` and, with ``recurse``, in its direct sub-folders (sorted)."""
    found = [p for p in sorted(folder.iterdir()) if _is_image(p, plugin)]
    if recurse:
        for sub in _subdirs(folder, plugin):
            found.extend(p for p in sorted(sub.iterdir()) if _is_image(p, plugin))
    return found


def _accepted(plugin: DomainPlugin) -> str:
    exts = ", ".join(plugin.extensions)
    return f"{exts} or a DICOM series folder" if plugin.spatial_dims == 3 else exts


def _norm_split(value: str) -> str | None:
    v = str(value).strip().lower()
    for name, aliases in SPLITS.items():
        if v in aliases:
            return name
    return None


def _close(value: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(options), n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _few(names: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return f"{shown} and {len(names) - k} more" if len(names) > k else shown


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
class LocalDataset(Dataset):
    """Files on disk read lazily through a domain plugin; items are :class:`Sample` in model space.

    ``__getitem__(i)`` reads ``files[i]`` (``plugin.read``, with ``fov_mask=fovs[i]`` where the image has
    a field-of-view mask and the plugin takes one), reads its mask in source geometry
    (``plugin.read_mask(mask, like=sample)``) and sets ``sample.mask``, then ``plugin.preprocess`` (which
    carries the mask through any geometry change), and attaches the label: a long scalar index, or a
    float multi-hot vector of length ``len(class_names)`` when ``multi_label``.

    Args:
        plugin: the domain plugin that reads the files.
        files: image paths (files, or DICOM series folders for 3D domains).
        labels: per file, a class index (int), a list of class indices (multi-label), or None.
        masks: per file, a mask path, or None.
        fovs: per file, a field-of-view mask path, or None (the plugin finds the field of view).
        groups: per file, a group (patient / subject) id, or None; splits keep a group on one side.
        class_names: names of the classification classes (label indices point into it).
        multi_label: labels are multi-hot vectors rather than one index.
        layout: how the source was read (one of :data:`LAYOUTS`).
        root: the source folder or CSV the files came from.
        split: the split this dataset holds (``"train"``, ``"val"``, ``"test"``).
        load_kwargs: keyword arguments for ``plugin.read`` / ``plugin.preprocess`` (each takes what it knows).

    Attributes set by :func:`local_dataset`: ``split_source`` (``"column"``, ``"folders"``, ``"carved"``,
    ``"holdout"`` or None), ``has_val`` (the same source and options give a ``val`` split), ``columns``
    (manifest role -> column used), ``group_source`` and ``notes`` (one-line remarks on how the source
    was read, for the user).
    """

    layouts: ClassVar[tuple[str, ...]] = LAYOUTS
    splits: ClassVar[tuple[str, ...]] = tuple(SPLITS)

    def __init__(
        self,
        plugin: DomainPlugin,
        files: Sequence[str | Path],
        *,
        labels: Sequence[int | Sequence[int] | None] | None = None,
        masks: Sequence[str | Path | None] | None = None,
        fovs: Sequence[str | Path | None] | None = None,
        groups: Sequence[str | None] | None = None,
        class_names: Sequence[str] = (),
        multi_label: bool = False,
        layout: str = "folder",
        root: str | Path | None = None,
        split: str = "train",
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.plugin = plugin
        self.files = [Path(f) for f in files]
        n = len(self.files)
        for name, seq in (("labels", labels), ("masks", masks), ("fovs", fovs), ("groups", groups)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{len(seq)} {name} for {n} files")
        self.labels = None if labels is None else list(labels)
        self.masks = None if masks is None else [None if m is None else Path(m) for m in masks]
        self.fovs = None if fovs is None or all(f is None for f in fovs) else [None if f is None else Path(f) for f in fovs]
        self.groups = None if groups is None else [None if g is None else str(g) for g in groups]
        self.class_names = tuple(str(c) for c in class_names)
        self.multi_label = bool(multi_label)
        self.layout = layout
        self.root = None if root is None else Path(root)
        self.split = split
        self.load_kwargs = dict(load_kwargs or {})
        # read + preprocessed samples kept in memory (small real datasets are re-read every epoch otherwise:
        # decoding, FOV detection and resampling cost more than a training step); see cache_budget_bytes()
        self._cache: dict[int, Sample] = {}
        self._cache_bytes = 0
        self.split_source: str | None = None  # "column", "folders", "carved", "holdout", or None (taken whole)
        self.has_val = False
        self.columns: dict[str, str] = {}
        self.group_source: str | None = None
        self.notes: list[str] = []

    # -- metadata --------------------------------------------------------------------------------
    @property
    def domain(self) -> str:
        return self.plugin.name

    @property
    def spatial_dims(self) -> int:
        return self.plugin.spatial_dims

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def has_fovs(self) -> bool:
        return self.fovs is not None

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        parts = [f"domain={self.domain!r}", f"layout={self.layout!r}", f"split={self.split!r}", f"n={len(self)}"]
        if self.class_names:
            parts.append(f"classes={list(self.class_names)}" + (" (multi-label)" if self.multi_label else ""))
        if self.has_masks:
            parts.append("masks")
        if self.has_fovs:
            parts.append("fov masks")
        return f"LocalDataset({', '.join(parts)})"

    def subset(self, keep: Sequence[int]) -> LocalDataset:
        """Keep only the items at ``keep`` (in that order), in place; returns self."""
        keep = [int(i) for i in keep]
        self._cache, self._cache_bytes = {}, 0  # indices change
        self.files = [self.files[i] for i in keep]
        for name in ("labels", "masks", "fovs", "groups"):
            seq = getattr(self, name)
            if seq is not None:
                setattr(self, name, [seq[i] for i in keep])
        return self

    def fov_note(self) -> str | None:
        """How the field of view is found, for plugins that take a per-image FOV mask; None otherwise."""
        if "fov_mask" not in _params(self.plugin.read):
            return None
        n = len(self)
        given = 0 if self.fovs is None else sum(f is not None for f in self.fovs)
        if given == n and n:
            return f"field of view: the given FOV mask of each image ({self.columns.get('fov') or 'FOV folder'})"
        if given:
            return f"field of view: given FOV masks for {given} of {n} images, detected from intensity for the rest"
        return "field of view: detected from intensity (no FOV masks given)"

    # -- items -----------------------------------------------------------------------------------
    def label_tensor(self, index: int) -> torch.Tensor | None:
        """The label of item ``index``: long scalar, float multi-hot ``(K,)``, or None."""
        if self.labels is None:
            return None
        lab = self.labels[index]
        if self.multi_label:
            hot = torch.zeros(len(self.class_names), dtype=torch.float32)
            idx = [] if lab is None else ([lab] if isinstance(lab, int) else list(lab))
            if idx:
                hot[torch.as_tensor(idx, dtype=torch.long)] = 1.0
            return hot
        if lab is None:
            return None
        if not isinstance(lab, int):
            lab = list(lab)[0] if len(lab) == 1 else lab
        return torch.tensor(int(lab), dtype=torch.long)

    def read_source(self, index: int) -> Sample:
        """Item ``index`` in source geometry (``plugin.read``, with its FOV mask when it has one)."""
        path = self.files[index]
        plugin = self.plugin
        kw = kwargs_for(plugin.read, self.load_kwargs)
        if self.fovs is not None and self.fovs[index] is not None and "fov_mask" in _params(plugin.read):
            kw["fov_mask"] = self.fovs[index]
        return plugin.read(path, **kw)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        index = int(index) % n
        sample = self._cache.get(index)
        if sample is None:
            plugin = self.plugin
            sample = self.read_source(index)
            if self.masks is not None and self.masks[index] is not None:
                sample.mask = plugin.read_mask(self.masks[index], like=sample)
            sample = plugin.preprocess(sample, **kwargs_for(plugin.preprocess, self.load_kwargs))
            size = _sample_bytes(sample)
            if self._cache_bytes + size <= cache_budget_bytes():
                self._cache[index] = sample
                self._cache_bytes += size
        # a fresh Sample per call (image and mask copied, meta dict new), so what a caller changes never reaches
        # the cache; the label is looked up each time (labels may be changed after the dataset is built)
        return sample.replace(image=sample.image.clone(), mask=None if sample.mask is None else sample.mask.clone(),
                              meta=dict(sample.meta), label=self.label_tensor(index))  # fmt: skip

    def plot(self, index: int | Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """The plugin's figure for item ``index`` (or a :class:`Sample`), with ``prediction`` overlaid."""
        sample = index if isinstance(index, Sample) else self[index]
        return self.plugin.plot(sample, prediction, **kwargs)


def cache_budget_bytes() -> int:
    """Memory for cached samples per dataset: ``UNIMAE_DATA_CACHE_MB`` (default 2048; 0 turns caching off)."""
    try:
        return max(0, int(float(os.environ.get("UNIMAE_DATA_CACHE_MB", "2048")) * 2**20))
    except ValueError:
        return 2048 * 2**20


def _sample_bytes(sample: Sample) -> int:
    total = 0
    for t in (sample.image, sample.mask, sample.meta.get("valid")):
        if isinstance(t, torch.Tensor):
            total += t.element_size() * t.nelement()
    return total


def _params(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


# ------------------------------------------------------------------------------------------------
# building datasets from a source
# ------------------------------------------------------------------------------------------------
def local_dataset(
    plugin: DomainPlugin | str,
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
        plugin: a domain plugin, or a registered domain name.
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
    if isinstance(plugin, str):
        from unimae.domains import get_domain

        plugin = get_domain(plugin)
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
    if task == "classify" and not ds.has_labels:
        raise InputError(
            f"classification needs labels but this {ds.layout} dataset has none "
            f"(use a folder per class or a CSV with a label column){fallback}",
            src,
        )
    if task == "segment" and not ds.has_masks:
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


def _from_folder_layout(plugin: DomainPlugin, root: Path, want: str, mask_dir: str | None, opts: dict) -> LocalDataset:
    class_names = opts.get("class_names")
    multi = bool(opts.get("multi_label"))
    subs = _subdirs(root, plugin)
    split_dirs = {s: _norm_split(s.name) for s in subs}
    if subs and all(split_dirs.values()) and not _list_images(root, plugin, recurse=False):
        if class_names is None:  # the same class indices in every split
            union: set[str] = set()
            for s in subs:
                union.update(c.name for c in _class_dirs(s, plugin))
            class_names = sorted(union) if len(union) >= 2 else None
        present = {str(name) for name in split_dirs.values()}
        # read the wanted split's folder, or train/ when val is to be carved out of it
        read = want if want in present else ("train" if want == "val" and "train" in present else None)
        if read is None:
            found = ", ".join(s.name for s in subs)
            raise InputError(f"no {want} split folder (found {found}); add {want}/ or pass it as its own source", root)
        chosen = next(s for s, name in split_dirs.items() if name == read)
        ds = _from_plain_folder(plugin, chosen, class_names, mask_dir, multi)
        ds.item_splits = [read] * len(ds)  # type: ignore[attr-defined]
        ds.present_splits = present  # type: ignore[attr-defined]
        ds.split_folder_names = [s.name for s in subs]  # type: ignore[attr-defined]
        ds.split_source = "folders"
        ds.root = root
        return ds
    return _from_plain_folder(plugin, root, class_names, mask_dir, multi)


def _class_dirs(folder: Path, plugin: DomainPlugin) -> list[Path]:
    """Sub-folders that hold images (class folders), when ``folder`` has no loose images."""
    if _list_images(folder, plugin, recurse=False):
        return []
    return [s for s in _subdirs(folder, plugin) if _list_images(s, plugin, recurse=True)]


def _from_plain_folder(
    plugin: DomainPlugin, root: Path, class_names: Sequence[str] | None, mask_dir: str | None, multi_label: bool = False
) -> LocalDataset:
    # a 3D source that is itself one DICOM series
    if plugin.spatial_dims == 3 and _is_dicom_dir(root):
        return LocalDataset(plugin, [root], layout="folder", root=root)

    by_name = {s.name.lower(): s for s in _subdirs(root, plugin)}
    img_dir = next((by_name[n] for n in IMAGE_DIRS if n in by_name), None)
    if mask_dir is not None:
        m = root / mask_dir
        if not m.is_dir():
            raise InputError(f"mask folder {mask_dir!r} not found", root)
        if img_dir is None:
            raise InputError(f"mask folder {mask_dir!r} given but no images/ folder beside it", root)
        seg_dir: Path | None = m
    else:
        seg_dir = next((by_name[n] for n in MASK_DIRS if n in by_name), None)
    fov_dir = _fov_dir(by_name, seg_dir, img_dir, plugin) if img_dir is not None else None
    if fov_dir is not None and fov_dir == seg_dir:
        if mask_dir is not None:
            fov_dir = None  # asked for as the label masks
        else:
            seg_dir = None  # DRIVE's test/ with images/ + mask/ only: FOV masks
    if img_dir is not None and seg_dir is not None:
        ds = _from_segmentation(plugin, root, img_dir, seg_dir)
        if fov_dir is not None:
            _attach_fovs(ds, fov_dir)
        return ds
    if img_dir is not None and not _list_images(root, plugin, recurse=False):
        files = _list_images(img_dir, plugin, recurse=True)
        _require(files, img_dir, plugin)
        ds = LocalDataset(plugin, files, layout="folder", root=root)
        if fov_dir is not None:
            _attach_fovs(ds, fov_dir)
        return ds

    paired = _from_paired_folder(plugin, root)
    if paired is not None:
        return paired

    classes = _class_dirs(root, plugin)
    if len(classes) >= 2 or (classes and class_names is not None):
        names = list(class_names) if class_names is not None else [c.name for c in classes]
        files: list[Path] = []
        labels: list[int] = []
        for c in classes:
            if c.name not in names:
                raise InputError(f"class folder {c.name!r} is not one of the classes {names}", root)
            imgs = [f for f in _list_images(c, plugin, recurse=True)]
            masks_here = mask_files_among(imgs)
            imgs = [f for f in imgs if f not in masks_here]
            files.extend(imgs)
            labels.extend([names.index(c.name)] * len(imgs))
        ds = LocalDataset(
            plugin, files, labels=[[lab] for lab in labels] if multi_label else labels, class_names=names,
            multi_label=multi_label, layout="class_folders", root=root,
        )  # fmt: skip
        kind = "multi-label (data.multi_label=true)" if multi_label else "single-label, one class per image"
        ds.notes.append(f"classes: one per folder ({', '.join(names)}); {kind}")
        return ds

    files = _list_images(root, plugin, recurse=True)
    _require(files, root, plugin)
    return LocalDataset(plugin, files, layout="folder", root=root)


def _fov_dir(by_name: dict[str, Path], seg_dir: Path | None, img_dir: Path, plugin: DomainPlugin) -> Path | None:
    """The field-of-view folder beside ``images/``: an FOV-named folder, or DRIVE's ``mask/``."""
    fov = next((by_name[n] for n in FOV_DIRS if n in by_name), None)
    if fov is not None:
        return fov
    drive_mask = by_name.get("mask")
    if drive_mask is None:
        return None
    if seg_dir is not None and seg_dir != drive_mask:
        return drive_mask  # DRIVE training/: 1st_manual/ holds the vessels, mask/ the field of view
    # images/ + mask/ only: FOV masks when named like DRIVE's (<image stem>_mask), e.g. DRIVE test/
    images = _list_images(img_dir, plugin, recurse=False)
    stems = {_stem(m).lower() for m in drive_mask.iterdir() if m.is_file() and not _hidden(m)}
    if images and all(f"{_stem(i).lower()}_mask" in stems for i in images) and any(
        _stem(i).lower().endswith(("_test", "_training")) for i in images
    ):
        return drive_mask
    return None


def _stem_matcher(candidates: Sequence[Path], suffixes: Sequence[str]) -> Callable[[Path], list[Path]]:
    """``image -> the candidates matching it``: the same stem, else the stem plus one of ``suffixes``
    (``_mask``, ``_manual1`` ...), else the image's stem without its own suffix (``_training``)."""
    by_stem: dict[str, list[Path]] = {}
    by_key: dict[str, list[Path]] = {}
    for m in candidates:
        by_stem.setdefault(_stem(m).lower(), []).append(m)
        by_key.setdefault(_strip(_stem(m), suffixes), []).append(m)

    def find(img: Path) -> list[Path]:
        stem = _stem(img).lower()
        for table, k in ((by_stem, stem), (by_key, stem), (by_key, _strip(stem, IMAGE_SUFFIXES))):
            if table.get(k):
                return table[k]
        return []

    return find


def _match(folder: Path, images: Sequence[Path], suffixes: Sequence[str]) -> tuple[list[Path | None], list[str]]:
    """Per image, the file of ``folder`` with its stem (or its stem + one of ``suffixes``)."""
    candidates = [p for p in sorted(folder.iterdir()) if not _hidden(p) and p.is_file()]
    find = _stem_matcher(candidates, suffixes)
    out: list[Path | None] = []
    missing: list[str] = []
    for img in images:
        found = find(img)
        out.append(found[0] if found else None)
        if not found:
            missing.append(img.name)
    return out, missing


def _attach_fovs(ds: LocalDataset, fov_dir: Path) -> None:
    fovs, missing = _match(fov_dir, ds.files, (*FOV_SUFFIXES, "_mask", "_masks"))
    if all(f is None for f in fovs):
        return
    ds.fovs = fovs
    ds.columns["fov"] = f"{fov_dir.name}/ folder"
    if missing:
        ds.notes.append(f"field of view: {len(missing)} images have no FOV mask in {fov_dir.name}/ ({_few(missing)}); "
                        "detected from intensity for those")  # fmt: skip


def _require(files: Sequence[Path], folder: Path, plugin: DomainPlugin) -> None:
    if not files:
        raise InputError(f"no {plugin.name} images found (accepted: {_accepted(plugin)}); {LAYOUT_HELP}", folder)


def _strip(stem: str, suffixes: Sequence[str]) -> str:
    low = stem.lower()
    for s in suffixes:
        if low.endswith(s) and len(low) > len(s):
            return low[: -len(s)]
    return low


def _from_segmentation(plugin: DomainPlugin, root: Path, img_dir: Path, seg_dir: Path) -> LocalDataset:
    images = _list_images(img_dir, plugin, recurse=False)
    _require(images, img_dir, plugin)
    candidates = [p for p in sorted(seg_dir.iterdir()) if not _hidden(p) and (p.is_file() or _is_image(p, plugin))]
    find = _stem_matcher(candidates, MASK_SUFFIXES)

    masks: list[Path] = []
    missing: list[str] = []
    for img in images:
        found = find(img)
        if not found:
            missing.append(img.name)
            continue
        if len(found) > 1:
            raise InputError(
                f"image {img.name} matches several masks in {seg_dir.name}/: {_few([f.name for f in found])}", root
            )
        masks.append(found[0])
    if missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images in {img_dir.name}/ have no mask in {seg_dir.name}/: "
            f"{_few(missing)} (masks are matched by file stem, optionally with a suffix such as _mask)",
            root,
        )
    ds = LocalDataset(plugin, images, masks=masks, layout="segmentation", root=root)
    ds.columns["mask"] = f"{seg_dir.name}/ folder"
    return ds


# -- images and masks in one folder (CHASE_DB1, STARE, x.png + x_mask.png) --------------------------
def _mask_role(stem: str, image_stems: set[str]) -> tuple[str, str, str] | None:
    """``(kind, image stem, suffix)`` when ``stem`` is an image's stem plus a mask or FOV suffix."""
    low = stem.lower()
    for kind, suffixes in (("fov", FOV_SUFFIXES), ("mask", PAIRED_MASK_SUFFIXES)):
        for s in suffixes:
            if low.endswith(s) and low[: -len(s)] in image_stems:
                return kind, low[: -len(s)], s
    return None


def mask_files_among(files: Iterable[str | Path]) -> set[Path]:
    """The files of ``files`` that are some other file's mask or FOV mask (same folder, stem + suffix).

    ``Image_01L_1stHO.png`` beside ``Image_01L.jpg`` (CHASE_DB1), ``im0001.ah.ppm`` beside ``im0001.ppm``
    (STARE), ``x_mask.png`` / ``x_fov.png`` beside ``x.png``. Used so that ``predict`` never runs on a mask.
    """
    paths = [Path(f) for f in files]
    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, []).append(p)
    out: set[Path] = set()
    for group in by_folder.values():
        stems = {_stem(p).lower() for p in group}
        for p in group:
            stem = _stem(p).lower()
            role = _mask_role(stem, stems - {stem})
            if role is not None:
                out.add(p)
    return out


def _from_paired_folder(plugin: DomainPlugin, root: Path) -> LocalDataset | None:
    """Images with their masks beside them in ``root``; None when no file there is an image's mask."""
    files = [p for p in sorted(root.iterdir()) if p.is_file() and not _hidden(p)]
    accepted = [p for p in files if plugin.accepts(p)]
    if not accepted:
        return None
    maskish = [p for p in files if p.name.lower().endswith(MASK_EXTENSIONS) or plugin.accepts(p)]
    all_stems = {_stem(p).lower() for p in accepted}
    roles: dict[Path, tuple[str, str, str]] = {}
    for p in maskish:
        stem = _stem(p).lower()
        role = _mask_role(stem, all_stems - {stem})
        if role is not None:
            roles[p] = role
    if not roles:
        return None
    images = [p for p in accepted if p not in roles]
    if not images:
        return None
    masks: list[Path | None] = []
    fovs: list[Path | None] = []
    missing: list[str] = []
    used: set[str] = set()
    alternatives: set[str] = set()
    order = {s: i for i, s in enumerate(PAIRED_MASK_SUFFIXES)}
    by_image: dict[str, list[tuple[Path, tuple[str, str, str]]]] = {}
    for p, r in roles.items():
        by_image.setdefault(r[1], []).append((p, r))
    for img in images:
        stem = _stem(img).lower()
        mine = by_image.get(stem, [])
        segs = sorted((x for x in mine if x[1][0] == "mask"), key=lambda x: order.get(x[1][2], 99))
        fov = next((p for p, r in mine if r[0] == "fov"), None)
        fovs.append(fov)
        if segs:
            masks.append(segs[0][0])
            used.add(segs[0][1][2])
            alternatives.update(r[2] for _, r in segs[1:])
        else:
            masks.append(None)
            missing.append(img.name)
    has_masks = any(m is not None for m in masks)
    if has_masks and missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images have no mask beside them: {_few(missing)} (in this folder "
            f"masks are named after their image with a suffix such as {', '.join(sorted(used))})",
            root,
        )
    ds = LocalDataset(plugin, images, masks=masks if has_masks else None, fovs=fovs, layout="paired", root=root)
    if has_masks:
        ds.columns["mask"] = "masks beside their images (" + ", ".join(sorted(used)) + ")"
        alt = sorted(alternatives - used)
        extra = f"; other annotations ({', '.join(alt)}) not used" if alt else ""
        ds.notes.append(f"masks: {len(images)} images with their masks beside them (suffix {', '.join(sorted(used))}){extra}")
    if ds.fovs is not None:
        ds.columns["fov"] = "_fov files beside their images"
    return ds


# -- CSV manifests -------------------------------------------------------------------------------
class _DoesNotFit(InputError):
    """A folder's manifest.csv that does not describe the folder in a way this tool reads."""

    def __init__(self, reason: str, path: Path) -> None:
        super().__init__(reason, path)
        self.reason = reason


def _norm_col(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _column(cols: dict[str, str], options: Sequence[str]) -> str | None:
    return next((cols[o] for o in options if o in cols), None)


def _as_int(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        try:
            f = float(token)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def _from_manifest(
    plugin: DomainPlugin,
    csv_path: Path,
    *,
    class_names: Sequence[str] | None = None,
    smap: dict[str, str] | None = None,
    multi_label: bool | None = None,
    group_by: str | None = None,
) -> LocalDataset:
    """Every row of a manifest (files checked), with ``item_splits`` when it has a split column."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError("manifest is not a UTF-8 text CSV", csv_path) from err
    except OSError as err:
        raise InputError(f"cannot read manifest ({err.strerror or err})", csv_path) from err
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InputError("manifest is empty (expected a header row with an 'image' column)", csv_path)
    cols: dict[str, str] = {}
    for c in reader.fieldnames:
        if c is not None:
            cols.setdefault(_norm_col(c), c)
    image_col = _column(cols, COLUMNS["image"])
    if image_col is None:
        raise _DoesNotFit(
            f"manifest has no 'image' column (columns: {', '.join(str(c) for c in reader.fieldnames)}; "
            f"an image column may be called {', '.join(COLUMNS['image'][:6])} ...)",
            csv_path,
        )
    label_col = _column(cols, COLUMNS["label"])
    name_col = _column(cols, COLUMNS["class_name"])
    if label_col is None and name_col is not None:
        label_col, name_col = name_col, None  # class names are the labels
    mask_col = _column(cols, COLUMNS["mask"])
    fov_col = _column(cols, COLUMNS["fov"])
    split_col = _column(cols, COLUMNS["split"])
    group_source = None
    if group_by is not None and str(group_by).strip().lower() not in ("none", "null", "", "false", "prefix",
                                                                        "stem_prefix", "filename_prefix"):  # fmt: skip
        group_col = cols.get(_norm_col(group_by))
        if group_col is None:
            raise InputError(
                f"data.group_by={group_by!r} is not a column of the manifest (columns: "
                f"{', '.join(str(c) for c in reader.fieldnames)})",
                csv_path,
            )
    elif group_by is not None and str(group_by).strip().lower() in ("none", "null", "", "false"):
        group_col = None
    elif group_by is not None:
        group_col = None  # "prefix": file-name groups, set after listing
    else:
        group_col = _column(cols, COLUMNS["group"])

    def cell(row: dict, col: str | None) -> str:
        v = row.get(col) if col is not None else None
        return "" if v is None else str(v).strip()

    rows: list[tuple[int, dict]] = [(line, row) for line, row in enumerate(reader, start=2)]
    if not rows:
        raise InputError("manifest has a header but no rows", csv_path)

    # splits first: names the manifest uses that cannot be mapped are one clear choice for the user
    smap = dict(smap or {})
    row_splits: list[str] | None = None
    if split_col is not None:
        row_splits = []
        unknown: dict[str, int] = {}
        for line, row in rows:
            s = cell(row, split_col)
            norm = smap.get(s.lower()) or _norm_split(s)
            if norm is None:
                unknown.setdefault(s, line)
            row_splits.append(norm or "")
        if unknown:
            first_name, first_line = next(iter(unknown.items()))
            names = ", ".join(repr(u) for u in unknown)
            example = ",".join(f"{u or 'EMPTY'}:train" for u in list(unknown)[:2])
            raise _DoesNotFit(
                f"line {first_line}: unknown split {first_name!r} (split names in column {split_col!r} this tool "
                f"cannot map: {names}; it understands train, val, test and their aliases: map them with "
                f"data.split_map={example} (or NAME:none to leave those rows out))",
                csv_path,
            )
        if all(s == "none" for s in row_splits):
            raise InputError("data.split_map leaves every row out", csv_path)

    # labels: the class list comes from all rows, whatever the split
    raw = [cell(r, label_col) for _, r in rows]
    tokens = [[t.strip() for t in v.split("|") if t.strip()] for v in raw]
    has_labels = label_col is not None and any(tokens)
    multi = bool(multi_label) if multi_label is not None else any("|" in v for v in raw)
    if multi_label is False and any("|" in v for v in raw):
        line = next(line for (line, _), v in zip(rows, raw) if "|" in v)
        raise InputError(f"line {line}: several labels ('|') but data.multi_label=false", csv_path)
    names: list[str] = []
    numeric = False
    if has_labels:
        flat = [t for ts in tokens for t in ts]
        numeric = all(_as_int(t) is not None for t in flat)
        if class_names is not None:
            names = [str(c) for c in class_names]
        elif numeric:
            names = _names_for_indices(csv_path, rows, tokens, name_col, cell)
        else:
            names = sorted(set(flat))

    base = csv_path.parent
    files: list[Path] = []
    labels: list[Any] = []
    masks: list[Path] = []
    fovs: list[Path | None] = []
    groups: list[str | None] = []
    splits_kept: list[str] = []
    for k, ((line, row), toks) in enumerate(zip(rows, tokens)):
        if row_splits is not None and row_splits[k] == "none":
            continue
        rel = cell(row, image_col)
        if not rel:
            raise InputError(f"line {line}: empty image path", csv_path)
        img = _resolve(base, rel)
        if not img.exists():
            raise InputError(f"line {line}: image file {rel!r} not found (paths are relative to the CSV)", csv_path)
        if not _is_image(img, plugin):
            raise _DoesNotFit(
                f"line {line}: {rel!r} is not a file the {plugin.name} domain reads (accepted: {_accepted(plugin)})",
                csv_path,
            )
        files.append(img)
        if has_labels:
            labels.append(_encode(csv_path, line, toks, names, multi, numeric, class_names is not None))
        if mask_col is not None:
            mrel = cell(row, mask_col)
            if not mrel:
                raise InputError(f"line {line}: empty mask path (every row needs one when a mask column exists)", csv_path)
            mpath = _resolve(base, mrel)
            if not mpath.exists():
                raise InputError(f"line {line}: mask file {mrel!r} not found (paths are relative to the CSV)", csv_path)
            masks.append(mpath)
        if fov_col is not None:
            frel = cell(row, fov_col)
            fpath = _resolve(base, frel) if frel else None
            if fpath is not None and not fpath.exists():
                raise InputError(f"line {line}: FOV mask file {frel!r} not found (paths are relative to the CSV)", csv_path)
            fovs.append(fpath)
        if group_col is not None:
            groups.append(cell(row, group_col) or None)
        if row_splits is not None:
            splits_kept.append(row_splits[k])

    ds = LocalDataset(
        plugin,
        files,
        labels=labels if has_labels else None,
        masks=masks if mask_col is not None else None,
        fovs=fovs if fov_col is not None else None,
        groups=groups if group_col is not None else None,
        class_names=names,
        multi_label=multi and has_labels,
        layout="csv",
        root=csv_path,
    )
    roles = {"image": image_col, "label": label_col if has_labels else None, "class_name": name_col,
             "mask": mask_col, "fov": fov_col, "split": split_col, "group": group_col}  # fmt: skip
    ds.columns = {k: str(v) for k, v in roles.items() if v is not None}
    if group_col is not None:
        ds.group_source = str(group_col)
        ds.all_groups = list(ds.groups or [])  # type: ignore[attr-defined]
    used = ", ".join(f"{role} {col!r}" for role, col in ds.columns.items())
    ignored = [str(c) for c in reader.fieldnames if c is not None and c not in ds.columns.values()]
    ds.notes.append(f"{csv_path.name}: columns used: {used}" + (f"; not used: {', '.join(ignored)}" if ignored else ""))
    if has_labels:
        kind = "multi-label ('|'-separated names)" if ds.multi_label else "single-label, one class per image"
        ds.notes.append(f"classes: {', '.join(names)} ({kind})")
    if row_splits is not None:
        ds.item_splits = splits_kept  # type: ignore[attr-defined]
        ds.split_source = "column"
    return ds


def _resolve(base: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else base / p


def _names_for_indices(csv_path: Path, rows, tokens, name_col: str | None, cell) -> list[str]:
    """Class names for integer labels: from a ``class_name`` column when present, else ``"0"``, ``"1"`` ..."""
    idx = [_as_int(t) for ts in tokens for t in ts]
    for (line, _), ts in zip(rows, tokens):
        for t in ts:
            if _as_int(t) < 0:  # type: ignore[operator]
                raise InputError(f"line {line}: negative label {t!r}", csv_path)
    n = max(idx) + 1  # type: ignore[type-var]
    mapping: dict[int, str] = {}
    if name_col is not None:
        for (line, row), ts in zip(rows, tokens):
            nm = [x.strip() for x in cell(row, name_col).split("|") if x.strip()]
            if not nm:
                continue
            if len(nm) != len(ts):
                raise InputError(f"line {line}: {len(ts)} labels but {len(nm)} class names", csv_path)
            for t, name in zip(ts, nm):
                i = _as_int(t)
                if mapping.setdefault(i, name) != name:  # type: ignore[arg-type]
                    raise InputError(
                        f"line {line}: label {i} is called {name!r} here but {mapping[i]!r} earlier", csv_path
                    )
    return [mapping.get(i, str(i)) for i in range(n)]


def _encode(
    csv_path: Path, line: int, toks: list[str], names: list[str], multi: bool, numeric: bool, fixed: bool
) -> int | list[int] | None:
    """Label tokens of one row -> an index (single-label) or a list of indices (multi-label)."""
    out: list[int] = []
    for t in toks:
        if t in names and (fixed or not numeric):
            out.append(names.index(t))
            continue
        i = _as_int(t) if (numeric or fixed) else None
        if i is None:
            raise InputError(f"line {line}: unknown class {t!r}; known: {', '.join(names)}.{_close(t, names)}", csv_path)
        if not 0 <= i < len(names):
            raise InputError(f"line {line}: label {i} is out of range for {len(names)} classes", csv_path)
        out.append(i)
    if multi:
        return sorted(set(out))
    if not out:
        raise InputError(f"line {line}: empty label", csv_path)
    return out[0]


# ------------------------------------------------------------------------------------------------
# checks before training, normal classes, prediction helpers
# ------------------------------------------------------------------------------------------------
def _norm_name(name: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def normal_class_index(names: Sequence[str], given: Any = None, *, where: Any = None) -> tuple[int | None, str]:
    """The index of the normal class among ``names`` and how it was chosen (for a note).

    ``given`` (``data.normal_class`` / ``--normal-class``): a class name (case-insensitive) or an index.
    Otherwise a class named like :data:`NORMAL_NAMES` (``normal``, ``healthy``, ``No Finding``,
    ``No_findings`` ...), else ``"0"`` when every class name is an integer (a 0/1-labelled set).
    Returns ``(None, reason)`` when none is found; an unknown ``given`` raises :class:`InputError`.
    """
    norm = [_norm_name(n) for n in names]
    if given is not None and str(given).strip() not in ("", "none", "null"):
        g = _norm_name(given)
        if g in norm:
            return norm.index(g), f"data.normal_class={given}"
        i = _as_int(str(given).strip())
        if i is not None and 0 <= i < len(names):
            return i, f"data.normal_class={given} (label {i})"
        raise InputError(
            f"normal class {given!r} is not one of the classes ({', '.join(map(str, names))})", where
        )
    for i, n in enumerate(norm):
        if n in NORMAL_NAMES:
            return i, f"the class named {names[i]!r}"
    if norm and all(_as_int(n) is not None for n in norm) and "0" in norm:
        return norm.index("0"), "label 0 of integer labels"
    return None, f"no class is named normal / healthy / no finding ({', '.join(map(str, names))})"


def check_classes(train: LocalDataset, val: LocalDataset | None, where: Any = None) -> None:
    """One-line errors, before training, for classes a single-label classifier cannot learn or validate.

    A class with one image in all (naming it and its file), a class with images in validation but none
    in training, and a class with training images but none in validation.
    """
    if train.labels is None or train.multi_label:
        return
    names = train.class_names
    tr = Counter(int(lab) for lab in train.labels if lab is not None)
    va = Counter(int(lab) for lab in (val.labels or [])) if val is not None and val.labels is not None else Counter()
    same_files = val is not None and set(val.files) == set(train.files)
    for c, name in enumerate(names):
        total = tr[c] + (0 if same_files else va[c])
        if total == 1 and not same_files:
            single = train if tr[c] else val
            f = next(p for p, lab in zip(single.files, single.labels) if lab == c)  # type: ignore[union-attr, arg-type]
            raise InputError(
                f"class {name!r} has only one image ({f.name}); a class needs at least two, one to train on and one to "
                "validate on (add images or drop the class)",
                where,
            )
        if va[c] and not tr[c]:
            raise InputError(f"class {name!r} has {va[c]} validation images but no training images", where)
        if val is not None and val.labels is not None and tr[c] and not va[c]:
            how = {"carved": "the carved validation set", "holdout": "the held-out validation set",
                   "column": "the split column's val rows", "folders": "the val/ folder"}.get(
                       str(val.split_source), "the validation data")  # fmt: skip
            raise InputError(
                f"class {name!r} has no validation images in {how} (its {tr[c]} images are all in train); "
                "add some to the validation split",
                where,
            )


def _image_hw(path: Path) -> tuple[int, ...] | None:
    """The spatial size of an image or mask from its header (PIL, NIfTI), or None when it cannot be told."""
    low = path.name.lower()
    try:
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return tuple(int(s) for s in nib.load(str(path)).shape[:3])
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return (int(im.height), int(im.width))
    except Exception:  # noqa: BLE001 - e.g. a multi-band GeoTIFF PIL cannot open: try rasterio
        pass
    if low.endswith((".tif", ".tiff")):
        try:
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(path) as src:
                    return (int(src.height), int(src.width))
        except Exception:  # noqa: BLE001
            return None
    return None


def check_sizes(ds: LocalDataset) -> None:
    """A one-line error naming the mask (or FOV mask) whose size differs from its image's, before training."""
    if ds.masks is None and ds.fovs is None:
        return
    for i, img in enumerate(ds.files):
        pairs = [("mask", ds.masks[i] if ds.masks is not None else None),
                 ("FOV mask", ds.fovs[i] if ds.fovs is not None else None)]  # fmt: skip
        if all(p is None for _, p in pairs) or img.is_dir():
            continue
        size = _image_hw(img)
        if size is None:
            continue
        for what, m in pairs:
            if m is None or m.is_dir():
                continue
            msize = _image_hw(m)
            if msize is not None and msize != size:
                def fmt(s: tuple[int, ...]) -> str:
                    return f"{s[1]}x{s[0]} (WxH)" if len(s) == 2 else "x".join(map(str, s))

                raise InputError(f"{what} is {fmt(msize)} but its image {img.name} is {fmt(size)}", m)


def fov_for_image(path: str | Path) -> Path | None:
    """A field-of-view mask published beside an image: DRIVE's ``../mask/<stem>_mask.gif``, an FOV folder,
    or ``<stem>_fov.*`` in the image's folder; None when there is none."""
    p = Path(path)
    folder = p.parent
    stem = _stem(p).lower()
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if f.is_file() and f != p and _stem(f).lower() in {stem + s for s in FOV_SUFFIXES}:
            return f
    if folder.name.lower() not in IMAGE_DIRS:
        return None
    parent = folder.parent
    by_name = {s.name.lower(): s for s in parent.iterdir() if s.is_dir() and not _hidden(s)}
    dirs = [by_name[n] for n in FOV_DIRS if n in by_name]
    if "mask" in by_name:
        others = [n for n in MASK_DIRS if n in by_name and n != "mask"]
        m = by_name["mask"]
        names = {_stem(x).lower() for x in m.iterdir() if x.is_file()}
        if others or f"{stem}_mask" in names:
            dirs.append(m)
    for d in dirs:
        fovs, _ = _match(d, [p], (*FOV_SUFFIXES, "_mask", "_masks"))
        if fovs[0] is not None:
            return fovs[0]
    return None


def image_folder_of(folder: str | Path) -> Path | None:
    """The image sub-folder of a dataset folder (``images/`` beside ``1st_manual/``, ``mask/`` ...), if any."""
    f = Path(folder)
    if not f.is_dir():
        return None
    by_name = {s.name.lower(): s for s in f.iterdir() if s.is_dir() and not _hidden(s)}
    return next((by_name[n] for n in IMAGE_DIRS if n in by_name), None)


# ------------------------------------------------------------------------------------------------
# domain guessing
# ------------------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    low = path.name.lower()
    for ext in MULTI_SUFFIXES:
        if low.endswith(ext):
            return ext
    return path.suffix.lower()


def _dicom_modality(path: Path) -> str:
    """The Modality of a DICOM file from its header only (never its patient fields)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "NumberOfFrames"])
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"not a readable DICOM file ({type(err).__name__})", path) from err
    return str(getattr(ds, "Modality", "") or "").upper()


def _zip_has_dicom(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]
            if any(n.lower().endswith((".dcm", ".dicom")) for n in names):
                return True
            for n in names[:4]:
                with zf.open(n) as f:
                    head = f.read(132)
                if len(head) == 132 and head[128:132] == b"DICM":
                    return True
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(f"not a readable zip file ({type(err).__name__})", path) from err
    return False


def _guess_tiff(path: Path) -> str:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                count, crs = src.count, src.crs
    except (RasterioError, OSError) as err:
        raise InputError("not a readable TIFF file", path) from err
    return "multispectral" if count > 4 or crs is not None else "fundus"


_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _guess_picture(path: Path) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode in _GREY_MODES:
                    return "xray"
                check_pixel_limit((im.height, im.width), path)
                im.draft("RGB", (128, 128))  # JPEG: decode at reduced scale; no-op elsewhere
                small = im.convert("RGB")
                small.thumbnail((128, 128))
                arr = np.asarray(small, dtype=np.int16)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"not a readable {path.suffix.lower().lstrip('.').upper()} image", path) from err
    spread = arr.max(axis=-1) - arr.min(axis=-1)  # channel disagreement per pixel
    grey = float(spread.mean()) < 3.0 and float(np.percentile(spread, 99)) < 16.0
    return "xray" if grey else "fundus"


def _fits(name: str, path: Path) -> bool:
    """Whether the registered ``name`` plugin accepts ``path`` (True when the registry is unavailable)."""
    try:
        from unimae.domains import get_domain

        return bool(get_domain(name).accepts(path))
    except ImportError:
        return True


def guess_domain_name(path: str | Path) -> str:
    """Guess the domain of a file from its extension and, where ambiguous, a cheap look at its content.

    ``.nii``/``.nii.gz`` and folders or ``.zip`` files of DICOM -> ``"ct"``; a single DICOM (``.dcm``,
    ``.dicom`` or the ``DICM`` magic) -> ``"ct"`` if its Modality is CT, else ``"xray"`` (header only,
    ``stop_before_pixels``); ``.tif``/``.tiff`` -> ``"multispectral"`` if it has more than 4 bands or
    a CRS, else ``"fundus"``; ``.png``/``.jpg``/``.jpeg``/``.bmp`` -> ``"xray"`` for grey modes
    (``L``, ``I;16``, ``I``) or colour images whose channels are (nearly) equal on a downsampled copy,
    else ``"fundus"``. Patient fields are never read into anything that is printed.

    Raises:
        InputError: a missing or unreadable file, or an unsupported kind (listing the supported ones).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("file not found", p)
    if p.is_dir():
        if _is_dicom_dir(p) or any(_is_dicom_dir(s) for s in sorted(p.iterdir()) if s.is_dir() and not _hidden(s)):
            return "ct"
        raise InputError("folder holds no DICOM files (give one image file, or a DICOM series folder)", p)
    ext = _suffix(p)
    if ext in (".nii", ".nii.gz"):
        return "ct"
    if ext == ".zip":
        if _zip_has_dicom(p):
            return "ct"
        raise InputError("zip holds no DICOM files", p)
    if ext in (".dcm", ".dicom") or (ext not in GUESS_EXTENSIONS and _has_dicom_magic(p)):
        return "ct" if _dicom_modality(p) == "CT" else "xray"
    if ext in (".tif", ".tiff"):
        return _guess_tiff(p)
    if ext in (".png", ".jpg", ".jpeg", ".bmp", ".ppm"):
        name = _guess_picture(p)
        if name == "xray" and not _fits("xray", p) and _fits("fundus", p):
            return "fundus"  # e.g. a grey .bmp: the X-ray reader does not take it, the fundus reader does
        return name
    raise InputError(
        f"cannot guess the domain of a {ext or 'extension-less'} file; supported: "
        f"{', '.join(GUESS_EXTENSIONS)}, or a DICOM series folder (or name the domain explicitly)",
        p,
    )


# ------------------------------------------------------------------------------------------------
# describe (unimae info)
# ------------------------------------------------------------------------------------------------
_PIL_DTYPES = {"1": "bool", "L": "uint8", "LA": "uint8", "P": "uint8", "RGB": "uint8", "RGBA": "uint8",
               "CMYK": "uint8", "YCbCr": "uint8", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16",
               "I;16N": "uint16", "I": "int32", "F": "float32"}  # fmt: skip


def _is_dicom_source(path: Path) -> bool:
    ext = _suffix(path)
    if path.is_dir():
        return _is_dicom_dir(path)
    if ext == ".zip":
        return True
    return ext in (".dcm", ".dicom") or (ext not in GUESS_EXTENSIONS and _has_dicom_magic(path))


def _stored_dtype(path: Path) -> str | None:
    """The sample type as stored in the file (header only), or None when it cannot be told cheaply."""
    ext = _suffix(path)
    try:
        if ext in (".nii", ".nii.gz"):
            import nibabel as nib

            return str(nib.load(str(path)).header.get_data_dtype())
        if ext in (".tif", ".tiff"):
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(path) as src:
                    kinds = sorted(set(src.dtypes))
            return "/".join(kinds)
        if ext in (".png", ".jpg", ".jpeg", ".bmp", ".gif"):
            from PIL import Image

            with Image.open(path) as im:
                return _PIL_DTYPES.get(im.mode, im.mode)
        dcm: Path | None = None
        if path.is_dir():
            dcm = next((f for f in sorted(path.iterdir()) if f.is_file() and not _hidden(f)
                        and (f.suffix.lower() in (".dcm", ".dicom") or _has_dicom_magic(f))), None)  # fmt: skip
        elif ext in (".dcm", ".dicom") or _has_dicom_magic(path):
            dcm = path
        if dcm is not None:
            import pydicom

            ds = pydicom.dcmread(
                dcm, stop_before_pixels=True, specific_tags=["BitsAllocated", "PixelRepresentation"]
            )
            bits = int(getattr(ds, "BitsAllocated", 16) or 16)
            signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
            return f"{'int' if signed else 'uint'}{bits}"
    except Exception:  # noqa: BLE001 - informational only; the reader reports real problems
        return None
    return None


def _jsonable(v: Any, depth: int = 0) -> Any:
    """A JSON-friendly copy of small metadata values (numpy/tensor scalars and arrays become lists)."""
    if depth > 4:
        return None
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else str(f)
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        if v.size > 64:
            return None
        return _jsonable(v.tolist(), depth + 1)
    if isinstance(v, (list, tuple)):
        if len(v) > 64:
            return None
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items() if not _PATIENTISH.search(str(k))}
    return str(v)


def _crs_name(wkt: Any) -> tuple[str | None, str | None]:
    """A short CRS name (``EPSG:32633`` when known) and its linear unit, from a WKT string."""
    if not wkt:
        return None, None
    try:
        from rasterio.crs import CRS

        crs = CRS.from_user_input(wkt)
        epsg = crs.to_epsg()
        unit = crs.linear_units if crs.is_projected else ("degree" if crs.is_geographic else None)
        return (f"EPSG:{epsg}" if epsg else crs.to_string()), unit
    except Exception:  # noqa: BLE001 - an odd CRS is still shown as given
        return str(wkt)[:80], None


_CONTRACT_KEYS = {"spatial_dims", "channels", "spacing", "affine", "crs", "transform", "nodata", "valid",
                  "modality", "path", "source_shape", "dtype", "normalization",
                  # plugin spellings of facts already shown under their own heading
                  "source_dtype", "spacing_units", "crs_name"}  # fmt: skip


def describe(path: str | Path, domain: str | None = None, bands: str | Sequence[str] | None = None) -> dict[str, Any]:
    """What UniMAE sees in a file, as a JSON-serialisable dict (for ``unimae info FILE [--json]``).

    The file is read with the domain plugin's ``read()`` (source geometry, before preprocessing). Keys:
    ``path``, ``domain``, ``domain_guessed``, ``modality``, ``shape`` (C, spatial...), ``spatial_dims``,
    ``source_shape``, ``dtype`` (as stored), ``tensor_dtype``, ``spacing`` + ``spacing_unit``,
    ``channels`` (name, wavelength µm, min, max), ``crs``, ``transform``, ``nodata``, ``affine``,
    ``orientation`` (axis codes of the affine), ``value_range`` (min/max over valid pixels),
    ``valid_fraction``, ``bands_note`` (multispectral: where the band names came from; says when they
    were guessed from the band count) and ``extra`` (other small plugin metadata; never patient fields).
    ``bands`` (``unimae info --bands``: a preset such as ``eurosat`` or comma-separated band names) is
    passed to readers that take it.
    """
    from unimae.domains import get_domain

    p = Path(path).expanduser()
    guessed = domain is None
    name = guess_domain_name(p) if guessed else str(domain)
    plugin = get_domain(name)
    read_kw: dict[str, Any] = {}
    if bands is not None and str(bands).strip():
        if "bands" not in _params(plugin.read):
            raise InputError(f"--bands applies to multispectral files; this is read as {name}", p)
        read_kw["bands"] = [b.strip() for b in bands.split(",") if b.strip()] if isinstance(bands, str) and "," in bands else bands
    sample = plugin.read(p, **read_kw)
    meta = sample.meta
    image = sample.image.detach()
    valid = sample.valid.bool()
    c = int(image.shape[0])
    flat = image.reshape(c, -1).float()
    vmask = valid.reshape(-1)
    if vmask.shape[0] != flat.shape[1]:
        vmask = torch.ones(flat.shape[1], dtype=torch.bool)
    use = flat[:, vmask] if bool(vmask.any()) else flat
    finite = torch.isfinite(use)
    hi = torch.where(finite, use, torch.full_like(use, -math.inf)).amax(dim=1)
    lo = torch.where(finite, use, torch.full_like(use, math.inf)).amin(dim=1)

    channels = []
    for i, ch in enumerate(meta.get("channels") or [{"name": f"c{i}", "wavelength": None} for i in range(c)]):
        channels.append(
            {
                "name": str(ch.get("name", f"c{i}")),
                "wavelength": ch.get("wavelength"),
                "min": _jsonable(lo[i].item()) if i < c else None,
                "max": _jsonable(hi[i].item()) if i < c else None,
            }
        )

    crs, crs_unit = _crs_name(meta.get("crs"))
    affine = meta.get("affine")
    orientation = None
    if affine is not None:
        try:
            import nibabel as nib

            orientation = "".join(nib.aff2axcodes(np.asarray(affine, dtype=float)))
        except Exception:  # noqa: BLE001
            orientation = None
    if meta.get("spacing_unit") or meta.get("spacing_units"):
        unit = str(meta.get("spacing_unit") or meta.get("spacing_units"))
    elif name == "multispectral":
        unit = crs_unit or ("pixel" if crs is None else None)
    elif affine is not None or name == "ct":
        unit = "mm"
    elif _is_dicom_source(p):
        unit = "mm"  # DICOM PixelSpacing / ImagerPixelSpacing
    else:
        unit = "pixel"

    d: dict[str, Any] = {
        "path": str(path),
        "domain": name,
        "domain_guessed": guessed,
        "modality": _jsonable(meta.get("modality", plugin.modality)),
        "shape": [int(s) for s in image.shape],
        "spatial_dims": int(meta.get("spatial_dims", image.ndim - 1)),
        "source_shape": _jsonable(meta.get("source_shape")),
        "dtype": _jsonable(meta.get("dtype") or meta.get("source_dtype")) or _stored_dtype(p),
        "tensor_dtype": str(image.dtype).replace("torch.", ""),
        "spacing": _jsonable(meta.get("spacing")),
        "spacing_unit": unit,
        "channels": channels,
        "crs": crs,
        "transform": _jsonable(meta.get("transform")),
        "nodata": _jsonable(meta.get("nodata")),
        "affine": _jsonable(affine),
        "orientation": orientation,
        "value_range": [_jsonable(lo.min().item()), _jsonable(hi.max().item())],
        "valid_fraction": float(valid.float().mean().item()) if valid.numel() else 0.0,
    }
    source = meta.get("band_source")
    if source is not None:
        preset = meta.get("band_preset")
        d["bands_note"] = {
            "band_count": f"guessed from the band count ({c} bands -> {preset or 'a preset'} order); if the file "
                          "stores its bands in another order (EuroSAT keeps B8A last) pass --bands eurosat or the "
                          "band names",
            "user": f"as given with --bands ({preset or 'band names'})",
            "descriptions": "from the file's band descriptions / tags",
            "wavelength_tags": "from the file's wavelength tags",
        }.get(str(source), str(source))  # fmt: skip
        d["bands_guessed"] = str(source) == "band_count"
    d["extra"] = {
        k: _jsonable(v)
        for k, v in meta.items()
        if k not in _CONTRACT_KEYS and k not in d and not _PATIENTISH.search(str(k)) and _jsonable(v) is not None
    }
    json.dumps(d)  # fail here, not in the CLI, if something slipped through
    return d


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _compact(v: Any, limit: int = 100) -> str:
    """A short one-line rendering of a metadata value (floats to 6 significant digits)."""
    if isinstance(v, str):
        text = v
    elif isinstance(v, dict):
        text = "{" + ", ".join(f"{k}: {_compact(x, limit)}" for k, x in v.items()) + "}"
    elif isinstance(v, (list, tuple)):
        text = "[" + ", ".join(_compact(x, limit) for x in v) + "]"
    elif isinstance(v, bool) or v is None:
        text = json.dumps(v)
    else:
        text = _num(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_description(d: dict[str, Any]) -> str:
    """The readable, aligned text block of :func:`describe`'s dict (``unimae info FILE``)."""
    rows: list[tuple[str, str]] = [("file", str(d.get("path")))]
    rows.append(("domain", f"{d['domain']}{' (guessed)' if d.get('domain_guessed') else ''}"))
    if d.get("modality"):
        rows.append(("modality", str(d["modality"])))
    shape = " x ".join(str(s) for s in d["shape"])
    if d.get("spatial_dims") == 2:
        axes = "channels x H x W"
    elif d.get("affine") is not None:
        axes = "channels x i x j x k, the affine's voxel axes"
    else:
        axes = "channels x spatial axes"
    rows.append(("shape", f"{shape}  ({axes})"))
    if d.get("source_shape") and list(d["source_shape"]) != list(d["shape"][1:]):
        rows.append(("stored shape", " x ".join(str(s) for s in d["source_shape"])))
    rows.append(("dtype", f"{d.get('dtype') or '?'} (read as {d.get('tensor_dtype')})"))
    if d.get("spacing") is not None:
        label = "resolution" if d.get("domain") == "multispectral" else "spacing"
        unit = f" {d['spacing_unit']}" if d.get("spacing_unit") else ""
        rows.append((label, " x ".join(_num(s) for s in d["spacing"]) + unit))
    if d.get("crs") is not None or d.get("domain") == "multispectral":
        rows.append(("crs", str(d.get("crs") or "none (not georeferenced)")))
    if d.get("transform") is not None:
        rows.append(("transform", "(" + ", ".join(_num(t) for t in d["transform"]) + ")"))
    if d.get("nodata") is not None:
        rows.append(("nodata", _num(d["nodata"])))
    if d.get("affine") is not None:
        aff = d["affine"]
        for i, r in enumerate(aff):
            rows.append(("affine" if i == 0 else "", "[" + "  ".join(f"{float(x):9.4g}" for x in r) + "]"))
    if d.get("orientation"):
        rows.append(("orientation", str(d["orientation"])))
    chans = d.get("channels") or []
    width = max((len(ch["name"]) for ch in chans), default=0)
    for i, ch in enumerate(chans):
        wl = f"{ch['wavelength']:.3f} µm" if ch.get("wavelength") is not None else ""
        rng = f"{_num(ch['min'])} .. {_num(ch['max'])}" if ch.get("min") is not None else ""
        rows.append(("channels" if i == 0 else "", f"{ch['name']:<{width}}  {wl:>9}  {rng}".rstrip()))
    if d.get("bands_note"):
        rows.append(("bands", str(d["bands_note"])))
    lo, hi = d.get("value_range", [None, None])
    rows.append(("value range", f"{_num(lo)} .. {_num(hi)}"))
    rows.append(("valid", f"{100.0 * float(d.get('valid_fraction', 0.0)):.1f} %"))
    for k, v in (d.get("extra") or {}).items():
        rows.append((k, _compact(v)))
    key_w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{key_w}}  {v}" for k, v in rows)
