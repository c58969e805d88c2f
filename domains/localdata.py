"""The local dataset itself: files on disk read lazily through a domain plugin, and what the layouts share.

:class:`LocalDataset` holds the listing that :mod:`unimae.domains.layouts` builds from a folder or a CSV
manifest (files, labels, masks, field-of-view masks, groups) and reads items through the plugin's
``read`` / ``read_mask`` / ``preprocess``. The constants name what the layouts recognise (folder names,
mask suffixes, manifest columns, split names); the helpers list a folder's images for a plugin.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.data import Dataset

from unimae.domains.sample import Sample, kwargs_for
from unimae.domains.sniff import MULTI_SUFFIXES
from unimae.domains.sniff import hidden as _hidden
from unimae.domains.sniff import is_dicom_dir as _is_dicom_dir

if TYPE_CHECKING:  # the protocol's module imports the layouts; annotations only here
    from unimae.domains.base import DomainPlugin

__all__ = [
    "LocalDataset",
    "CachedSamples",
    "SampleMemo",
    "cache_budget_bytes",
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
MASK_EXTENSIONS = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm", ".pgm", ".nii", ".nii.gz")

#: class names that mean "normal" for anomaly training and evaluation (compared lower-case, ``_`` for spaces)
NORMAL_NAMES = ("normal", "healthy", "no_finding", "no_findings", "nofinding", "nofindings", "negative", "good",
                "background", "none", "no_dr", "control", "controls", "clear", "benign_normal", "ok")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# small file helpers
# ------------------------------------------------------------------------------------------------
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
        self._cache = SampleMemo()
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
        self._cache = SampleMemo()  # indices change
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
        index = _item_index(index, len(self))
        sample = self._cache.get(index)
        if sample is None:
            plugin = self.plugin
            sample = self.read_source(index)
            if self.masks is not None and self.masks[index] is not None:
                sample.mask = plugin.read_mask(self.masks[index], like=sample)
            sample = self._cache.put(index, plugin.preprocess(sample, **kwargs_for(plugin.preprocess, self.load_kwargs)))
        # the label is looked up each time (labels may be changed after the dataset is built)
        return sample.replace(label=self.label_tensor(index))

    def plot(self, index: int | Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """The plugin's figure for item ``index`` (or a :class:`Sample`), with ``prediction`` overlaid."""
        sample = index if isinstance(index, Sample) else self[index]
        return self.plugin.plot(sample, prediction, **kwargs)


class SampleMemo:
    """Samples kept in memory by index, up to :func:`cache_budget_bytes` in all. ``get`` and ``put`` hand out a
    fresh :class:`Sample` each time (image and mask copied, meta dict new), so what a caller changes never
    reaches the memo."""

    def __init__(self) -> None:
        self.items: dict[int, Sample] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, index: object) -> bool:
        return index in self.items

    def get(self, index: int) -> Sample | None:
        sample = self.items.get(index)
        return None if sample is None else _fresh(sample)

    def put(self, index: int, sample: Sample) -> Sample:
        """Keep ``sample`` if the budget allows; returns what the caller may use (a copy of a kept sample)."""
        size = _sample_bytes(sample)
        if self.nbytes + size <= cache_budget_bytes():
            self.items[index] = sample
            self.nbytes += size
            return _fresh(sample)
        return sample


class CachedSamples(Dataset):
    """A deterministic sample source (e.g. a domain's synthetic data: sample ``i`` depends only on the seed and
    ``i``) whose samples are made once and then kept in a :class:`SampleMemo`: epochs that revisit a small
    pool cost augmentation only. Other attributes are the source's."""

    def __init__(self, samples: Any) -> None:
        self.samples = samples
        self.memo = SampleMemo()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        index = _item_index(index, len(self))
        sample = self.memo.get(index)
        return self.memo.put(index, self.samples[index]) if sample is None else sample

    def __getattr__(self, name: str) -> Any:
        if name in ("samples", "memo"):  # not set yet (unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.samples, name)


def _item_index(index: int, n: int) -> int:
    """``index`` (negative counts from the end) as ``0 .. n-1``, or an ``IndexError`` naming the size."""
    if not -n <= int(index) < n:
        raise IndexError(f"index {index} out of range for a dataset of {n}")
    return int(index) % n


def _fresh(sample: Sample) -> Sample:
    return sample.replace(image=sample.image.clone(), mask=None if sample.mask is None else sample.mask.clone(),
                          meta=dict(sample.meta))  # fmt: skip


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
