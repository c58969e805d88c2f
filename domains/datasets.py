"""Local datasets in the layouts users have, domain guessing and ``unimae info`` descriptions.

Shared by every domain: the functions here only talk to a plugin through the protocol of
:mod:`unimae.domains.base` (``accepts``, ``read``, ``read_mask``, ``preprocess``, ``plot``,
``spatial_dims``, ``extensions``, ``multi_label``).

Layouts :func:`local_dataset` understands (checked in this order)
------------------------------------------------------------------
``csv``
    A CSV manifest (``source`` ends in ``.csv``, or a folder holding ``manifest.csv``). Columns:
    ``image`` (required; ``path``/``file``/``filename`` are accepted aliases), optional ``label``
    (a class name or an integer index; multi-label as ``|``-separated names), optional
    ``class_name`` (names for integer labels), optional ``mask`` (a path), optional ``split``
    (``train``/``val``/``test``; ``valid``/``validation``/``dev`` mean ``val``). Paths are relative
    to the CSV's folder. Class names are taken from *all* rows, so train and val agree on indices.
``split folders``
    A folder whose subfolders are split names (``train``/``training``, ``val``/``valid``/
    ``validation``, ``test``/``testing``): the requested split's subfolder is read with the
    layouts below (class names are the union over the splits).
``segmentation``
    A folder with an image folder (``images``, ``imagesTr`` ...) and a mask folder (``masks``,
    ``labels``, ``labelsTr``, ``annotations``, ``1st_manual`` ...). Files are paired by stem;
    mask stems may carry a suffix (``_mask``, ``_manual1``, ``_label``, ``_seg``, ``_gt`` ...) and
    image stems may carry ``_training``/``_test``/``_0000`` (DRIVE, nnU-Net).
``class_folders``
    No image files at the top and at least two subfolders holding images: one class per
    subfolder, class names = sorted subfolder names (``data/normal/*.png``,
    ``data/pneumonia/*.png``). For 3D domains a subfolder that *is* a DICOM series is an image,
    not a class.
``folder``
    Anything else: the image files in the folder and its direct subfolders, unlabelled
    (pretraining). For 3D domains a DICOM series folder counts as one image, and a ``source``
    that is itself a DICOM series is a dataset of one volume.

Splits
------
When the source carries split information (a ``split`` column or split subfolders) ``split``
selects it, and an empty selection is an error. A source *without* split information is taken
whole for every split, so ``data.train`` and ``data.val`` can each point at their own folder or
CSV. To carve a validation set out of a single source instead, pass ``val_fraction`` (e.g. 0.1):
a deterministic hold-out by hash of each file's path relative to the source; ``split="train"``
gets the rest and ``"val"``/``"test"`` get the held-out files.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
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
    "SPLITS",
    "LAYOUTS",
]

LAYOUTS = ("csv", "segmentation", "class_folders", "folder")
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}

IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")
LABEL_COLUMNS = ("label", "labels", "class", "target")
NAME_COLUMNS = ("class_name", "label_name", "classname")
MASK_COLUMNS = ("mask", "mask_path", "segmentation")
SPLIT_COLUMNS = ("split", "subset")

IMAGE_DIRS = ("images", "image", "imgs", "img", "imagestr")
MASK_DIRS = (
    "masks", "labels", "labelstr", "annotations", "1st_manual", "manual", "segmentations",
    "ground_truth", "groundtruth", "gt", "label", "mask",
)  # fmt: skip
MASK_SUFFIXES = (
    "_segmentation", "_manual1", "_manual", "_masks", "_mask", "_labels", "_label", "_seg", "_gt",
    "-mask", "-label", "-seg", ".mask",
)  # fmt: skip
IMAGE_SUFFIXES = ("_training", "_train", "_test", "_image", "_img", "_0000")
MULTI_SUFFIXES = (".nii.gz", ".tar.gz")

GUESS_EXTENSIONS = (".nii", ".nii.gz", ".dcm", ".dicom", ".zip", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
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


def _holdout(items: Sequence[Path], root: Path, fraction: float) -> set[int]:
    """Indices of a deterministic hold-out: the ``round(n * fraction)`` (>= 1) items of smallest path hash."""
    n = len(items)
    k = min(max(1, round(n * fraction)), n - 1)
    if k <= 0:
        return set()

    def key(i: int) -> str:
        try:
            rel = items[i].resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = items[i].as_posix()
        return hashlib.md5(rel.encode("utf-8")).hexdigest()

    return set(sorted(range(n), key=key)[:k])


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

    ``__getitem__(i)`` reads ``files[i]`` (``plugin.read``), reads its mask in source geometry
    (``plugin.read_mask(mask, like=sample)``) and sets ``sample.mask``, then ``plugin.preprocess`` (which
    carries the mask through any geometry change), and attaches the label: a long scalar index, or a
    float multi-hot vector of length ``len(class_names)`` when ``multi_label``.

    Args:
        plugin: the domain plugin that reads the files.
        files: image paths (files, or DICOM series folders for 3D domains).
        labels: per file, a class index (int), a list of class indices (multi-label), or None.
        masks: per file, a mask path, or None.
        class_names: names of the classification classes (label indices point into it).
        multi_label: labels are multi-hot vectors rather than one index.
        layout: how the source was read (one of :data:`LAYOUTS`).
        root: the source folder or CSV the files came from.
        split: the split this dataset holds (``"train"``, ``"val"``, ``"test"``).
        load_kwargs: keyword arguments for ``plugin.read`` / ``plugin.preprocess`` (each takes what it knows).
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
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} files")
        if masks is not None and len(masks) != n:
            raise ValueError(f"{len(masks)} masks for {n} files")
        self.labels = None if labels is None else list(labels)
        self.masks = None if masks is None else [None if m is None else Path(m) for m in masks]
        self.class_names = tuple(str(c) for c in class_names)
        self.multi_label = bool(multi_label)
        self.layout = layout
        self.root = None if root is None else Path(root)
        self.split = split
        self.load_kwargs = dict(load_kwargs or {})
        self.split_source: str | None = None  # "column", "folders", "holdout", or None (source taken whole)

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

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        parts = [f"domain={self.domain!r}", f"layout={self.layout!r}", f"split={self.split!r}", f"n={len(self)}"]
        if self.class_names:
            parts.append(f"classes={list(self.class_names)}" + (" (multi-label)" if self.multi_label else ""))
        if self.has_masks:
            parts.append("masks")
        return f"LocalDataset({', '.join(parts)})"

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
        return torch.tensor(int(lab), dtype=torch.long)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        index = int(index) % n
        path = self.files[index]
        plugin = self.plugin
        sample = plugin.read(path, **kwargs_for(plugin.read, self.load_kwargs))
        if self.masks is not None and self.masks[index] is not None:
            sample.mask = plugin.read_mask(self.masks[index], like=sample)
        sample = plugin.preprocess(sample, **kwargs_for(plugin.preprocess, self.load_kwargs))
        label = self.label_tensor(index)
        if label is not None:
            sample.label = label
        return sample

    def plot(self, index: int | Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """The plugin's figure for item ``index`` (or a :class:`Sample`), with ``prediction`` overlaid."""
        sample = index if isinstance(index, Sample) else self[index]
        return self.plugin.plot(sample, prediction, **kwargs)


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
    val_fraction: float = 0.0,
    task: str | None = None,
    **kwargs: Any,
) -> LocalDataset:
    """A :class:`LocalDataset` of ``source`` (a folder or a CSV manifest) read through ``plugin``.

    The layout is detected as described in the module docstring (``csv``, split folders,
    ``segmentation``, ``class_folders``, ``folder``). Only files the plugin ``accepts()`` are listed.

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
        val_fraction: for a source without split information, hold out this fraction (0 <= f < 1) of the
            files, deterministically by path hash, as the ``val``/``test`` split; ``train`` gets the rest.
        task: when given, check the data can serve it: ``"classify"`` needs labels, ``"segment"`` masks.
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
    if not 0.0 <= float(val_fraction) < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    src = Path(source).expanduser()
    if not src.exists():
        raise InputError("dataset source not found (give a folder or a CSV manifest)", src)

    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise InputError("a dataset source must be a folder or a .csv manifest", src)
        ds = _from_manifest(plugin, src, want, class_names)
    else:
        ds = _from_folder(plugin, src, want, class_names, mask_dir)
    ds.load_kwargs = dict(kwargs)
    ds.split = want

    if val_fraction and ds.split_source is None:
        held = _holdout(ds.files, src if src.is_dir() else src.parent, float(val_fraction))
        keep = [i for i in range(len(ds)) if (i in held) == (want != "train")]
        _subset(ds, keep)
        ds.split_source = "holdout"
    if len(ds) == 0:
        raise InputError(f"no {want} images found", src)
    _check_task(ds, task, src)
    return ds


def _subset(ds: LocalDataset, keep: Sequence[int]) -> None:
    ds.files = [ds.files[i] for i in keep]
    if ds.labels is not None:
        ds.labels = [ds.labels[i] for i in keep]
    if ds.masks is not None:
        ds.masks = [ds.masks[i] for i in keep]


def _check_task(ds: LocalDataset, task: str | None, src: Path) -> None:
    if task == "classify" and not ds.has_labels:
        raise InputError(
            f"classification needs labels but this {ds.layout} dataset has none "
            "(use a folder per class or a CSV with a label column)",
            src,
        )
    if task == "segment" and not ds.has_masks:
        raise InputError(
            f"segmentation needs masks but this {ds.layout} dataset has none "
            "(use images/ + masks/ folders or a CSV with a mask column)",
            src,
        )


def _from_folder(
    plugin: DomainPlugin,
    root: Path,
    want: str,
    class_names: Sequence[str] | None,
    mask_dir: str | None,
) -> LocalDataset:
    manifest = root / "manifest.csv"
    if manifest.is_file():
        return _from_manifest(plugin, manifest, want, class_names)

    subs = _subdirs(root, plugin)
    split_dirs = {s: _norm_split(s.name) for s in subs}
    if subs and all(split_dirs.values()) and not _list_images(root, plugin, recurse=False):
        chosen = [s for s, name in split_dirs.items() if name == want]
        if not chosen:
            found = ", ".join(s.name for s in subs)
            raise InputError(f"no {want} split folder (found {found}); add {want}/ or pass it as its own source", root)
        if class_names is None:  # the same class indices in every split
            union: set[str] = set()
            for s in subs:
                union.update(c.name for c in _class_dirs(s, plugin))
            class_names = sorted(union) if len(union) >= 2 else None
        ds = _from_plain_folder(plugin, chosen[0], class_names, mask_dir)
        ds.split_source = "folders"
        ds.root = root
        return ds
    return _from_plain_folder(plugin, root, class_names, mask_dir)


def _class_dirs(folder: Path, plugin: DomainPlugin) -> list[Path]:
    """Sub-folders that hold images (class folders), when ``folder`` has no loose images."""
    if _list_images(folder, plugin, recurse=False):
        return []
    return [s for s in _subdirs(folder, plugin) if _list_images(s, plugin, recurse=True)]


def _from_plain_folder(
    plugin: DomainPlugin, root: Path, class_names: Sequence[str] | None, mask_dir: str | None
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
    if img_dir is not None and seg_dir is not None:
        return _from_segmentation(plugin, root, img_dir, seg_dir)
    if img_dir is not None and not _list_images(root, plugin, recurse=False):
        files = _list_images(img_dir, plugin, recurse=True)
        _require(files, img_dir, plugin)
        return LocalDataset(plugin, files, layout="folder", root=root)

    classes = _class_dirs(root, plugin)
    if len(classes) >= 2 or (classes and class_names is not None):
        names = list(class_names) if class_names is not None else [c.name for c in classes]
        files: list[Path] = []
        labels: list[int] = []
        for c in classes:
            if c.name not in names:
                raise InputError(f"class folder {c.name!r} is not one of the classes {names}", root)
            imgs = _list_images(c, plugin, recurse=True)
            files.extend(imgs)
            labels.extend([names.index(c.name)] * len(imgs))
        return LocalDataset(
            plugin,
            files,
            labels=labels,
            class_names=names,
            multi_label=plugin.multi_label,
            layout="class_folders",
            root=root,
        )

    files = _list_images(root, plugin, recurse=True)
    _require(files, root, plugin)
    return LocalDataset(plugin, files, layout="folder", root=root)


def _require(files: Sequence[Path], folder: Path, plugin: DomainPlugin) -> None:
    if not files:
        raise InputError(f"no {plugin.name} images found (accepted: {_accepted(plugin)})", folder)


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
    by_stem: dict[str, list[Path]] = {}
    by_key: dict[str, list[Path]] = {}
    for m in candidates:
        by_stem.setdefault(_stem(m).lower(), []).append(m)
        by_key.setdefault(_strip(_stem(m), MASK_SUFFIXES), []).append(m)

    masks: list[Path] = []
    missing: list[str] = []
    for img in images:
        stem = _stem(img).lower()
        key = _strip(stem, IMAGE_SUFFIXES)
        found: list[Path] = []
        for table, k in ((by_stem, stem), (by_key, stem), (by_key, key)):
            found = table.get(k, [])
            if found:
                break
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
    return LocalDataset(plugin, images, masks=masks, layout="segmentation", root=root)


# -- CSV manifests -------------------------------------------------------------------------------
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


def _from_manifest(plugin: DomainPlugin, csv_path: Path, want: str, class_names: Sequence[str] | None) -> LocalDataset:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError("manifest is not a UTF-8 text CSV", csv_path) from err
    except OSError as err:
        raise InputError(f"cannot read manifest ({err.strerror or err})", csv_path) from err
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InputError("manifest is empty (expected a header row with an 'image' column)", csv_path)
    cols = {str(c).strip().lower(): c for c in reader.fieldnames if c is not None}
    image_col = _column(cols, IMAGE_COLUMNS)
    if image_col is None:
        raise InputError(
            f"manifest has no 'image' column (columns: {', '.join(str(c) for c in reader.fieldnames)})", csv_path
        )
    label_col = _column(cols, LABEL_COLUMNS)
    name_col = _column(cols, NAME_COLUMNS)
    mask_col = _column(cols, MASK_COLUMNS)
    split_col = _column(cols, SPLIT_COLUMNS)

    def cell(row: dict, col: str | None) -> str:
        v = row.get(col) if col is not None else None
        return "" if v is None else str(v).strip()

    rows: list[tuple[int, dict]] = [(line, row) for line, row in enumerate(reader, start=2)]
    if not rows:
        raise InputError("manifest has a header but no rows", csv_path)

    # labels: the class list comes from all rows, whatever the split
    raw = [cell(r, label_col) for _, r in rows]
    tokens = [[t.strip() for t in v.split("|") if t.strip()] for v in raw]
    has_labels = label_col is not None and any(tokens)
    multi = bool(plugin.multi_label) or any("|" in v for v in raw)
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
    splits_seen: set[str] = set()
    for (line, row), toks in zip(rows, tokens):
        if split_col is not None:
            s = cell(row, split_col)
            norm = _norm_split(s)
            if norm is None:
                raise InputError(f"line {line}: unknown split {s!r} (use train, val or test)", csv_path)
            splits_seen.add(norm)
            if norm != want:
                continue
        rel = cell(row, image_col)
        if not rel:
            raise InputError(f"line {line}: empty image path", csv_path)
        img = _resolve(base, rel)
        if not img.exists():
            raise InputError(f"line {line}: image file {rel!r} not found (paths are relative to the CSV)", csv_path)
        if not _is_image(img, plugin):
            raise InputError(
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

    if split_col is not None and not files:
        seen = ", ".join(sorted(splits_seen)) or "none"
        raise InputError(f"no rows with split {want!r} (splits present: {seen})", csv_path)
    ds = LocalDataset(
        plugin,
        files,
        labels=labels if has_labels else None,
        masks=masks if mask_col is not None else None,
        class_names=names,
        multi_label=multi and has_labels,
        layout="csv",
        root=csv_path,
    )
    ds.split_source = "column" if split_col is not None else None
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
    if ext in (".png", ".jpg", ".jpeg", ".bmp"):
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


def describe(path: str | Path, domain: str | None = None) -> dict[str, Any]:
    """What UniMAE sees in a file, as a JSON-serialisable dict (for ``unimae info FILE [--json]``).

    The file is read with the domain plugin's ``read()`` (source geometry, before preprocessing). Keys:
    ``path``, ``domain``, ``domain_guessed``, ``modality``, ``shape`` (C, spatial...), ``spatial_dims``,
    ``source_shape``, ``dtype`` (as stored), ``tensor_dtype``, ``spacing`` + ``spacing_unit``,
    ``channels`` (name, wavelength µm, min, max), ``crs``, ``transform``, ``nodata``, ``affine``,
    ``orientation`` (axis codes of the affine), ``value_range`` (min/max over valid pixels),
    ``valid_fraction`` and ``extra`` (other small plugin metadata; never patient fields).
    """
    from unimae.domains import get_domain

    p = Path(path).expanduser()
    guessed = domain is None
    name = guess_domain_name(p) if guessed else str(domain)
    plugin = get_domain(name)
    sample = plugin.read(p)
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
    lo, hi = d.get("value_range", [None, None])
    rows.append(("value range", f"{_num(lo)} .. {_num(hi)}"))
    rows.append(("valid", f"{100.0 * float(d.get('valid_fraction', 0.0)):.1f} %"))
    for k, v in (d.get("extra") or {}).items():
        rows.append((k, _compact(v)))
    key_w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{key_w}}  {v}" for k, v in rows)
