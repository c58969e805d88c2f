"""The domain plugin protocol and the data contract every reader honours.

A reader returns a :class:`Sample`: an image tensor ``(C, H, W)`` or ``(C, D, H, W)`` plus ``meta``,
a plain dict that says where the image sits in the world. The keys of ``meta`` are:

=================  ================================================================================
``spatial_dims``   2 or 3
``channels``       list of ``{"name": str, "wavelength": float | None}`` (wavelength in µm, optical)
``spacing``        tuple of floats per spatial axis, in image axis order (mm, or metres per pixel)
``affine``         4x4 ``numpy`` voxel-to-world matrix of the *source* file (NIfTI / DICOM), or None
``crs``            WKT string of the source GeoTIFF CRS, or None
``transform``      6-tuple ``(a, b, c, d, e, f)`` GeoTIFF pixel-to-CRS affine, or None
``nodata``         source nodata value, or None
``valid``          bool tensor of the spatial shape: False for nodata, padding, outside field of view
``modality``       e.g. ``"CT"``, ``"fundus"``, ``"CR"``, ``"sentinel2_l1c"``
``path``           source path as given, or None for synthetic data
``source_shape``   spatial shape of the file as stored (before reorientation / resampling)
``normalization``  JSON dict describing the intensity normalisation ``preprocess`` applied
=================  ================================================================================

Optional keys used by several plugins: ``grid_affine`` (where the *current* 3D tensor sits after
reorientation/resampling; ``affine`` stays the source's), ``letterbox`` (the evaluation resize/pad box
that writers undo to return to the source grid), ``spacing_unit`` (``"mm"``, ``"m"`` or ``"pixel"``),
``seg_class_names`` (label names, used e.g. to swap left/right labels when flipping), ``window`` (a
rasterio window for partial reads).

Plugins may add keys (``window``, ``photometric``, ``band_stats`` ...). Patient identifiers never go in
``meta``.

Data flows ``read -> preprocess -> augment -> model -> postprocess -> write``; ``write`` puts results
back on the *source* grid (affine, CRS/transform, nodata).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from unimae.core.errors import InputError

__all__ = [
    "Sample",
    "DomainPlugin",
    "TrainingView",
    "Transform",
    "to_item",
    "max_pixels",
    "check_pixel_limit",
    "channel_list",
    "kwargs_for",
]

DEFAULT_MAX_PIXELS = 2**28  # spatial elements (~268 M): a decompression-bomb guard


def max_pixels() -> int:
    """The spatial-size guard in elements; override with the ``UNIMAE_MAX_PIXELS`` environment variable."""
    value = os.environ.get("UNIMAE_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(float(value))
    except ValueError as err:
        raise InputError(f"UNIMAE_MAX_PIXELS must be an integer, got {value!r}") from err


def check_pixel_limit(shape: Sequence[int], path: str | Path | None = None, limit: int | None = None) -> None:
    """Raise :class:`InputError` if a spatial ``shape`` exceeds the pixel limit."""
    limit = max_pixels() if limit is None else int(limit)
    n = 1
    for s in shape:
        n *= int(s)
    if n > limit:
        dims = "x".join(str(int(s)) for s in shape)
        raise InputError(
            f"image is {dims} = {n:,} pixels, over the limit of {limit:,} "
            "(set UNIMAE_MAX_PIXELS to raise it, or use tiled/streamed inference)",
            path,
        )


def channel_list(names: Sequence[str], wavelengths: Sequence[float | None] | None = None) -> list[dict]:
    """Build the ``meta['channels']`` list from names and optional wavelengths (µm)."""
    wavelengths = [None] * len(names) if wavelengths is None else list(wavelengths)
    if len(wavelengths) != len(names):
        raise ValueError(f"{len(names)} channel names but {len(wavelengths)} wavelengths")
    return [{"name": str(n), "wavelength": None if w is None else float(w)} for n, w in zip(names, wavelengths)]


@dataclass
class Sample:
    """One image with its metadata and optional targets (see the module docstring for ``meta``)."""

    image: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    label: torch.Tensor | None = None  # class index () or multi-hot (K,)
    mask: torch.Tensor | None = None  # segmentation, int64, spatial shape

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def valid(self) -> torch.Tensor:
        v = self.meta.get("valid")
        if v is None:
            return torch.ones(self.spatial_shape, dtype=torch.bool)
        return v

    def replace(self, **changes: Any) -> Sample:
        return replace(self, **changes)


def to_item(sample: Sample) -> dict[str, torch.Tensor]:
    """The tensors of a sample as a collatable dict: ``image``, ``valid`` and, if present, ``label``, ``mask``."""
    item = {"image": sample.image.float(), "valid": sample.valid.bool()}
    if sample.label is not None:
        item["label"] = sample.label
    if sample.mask is not None:
        item["mask"] = sample.mask.long()
    return item


Transform = Callable[[Sample, int], Sample]
"""An augmentation: ``transform(sample, seed) -> sample``. All randomness comes from ``seed``."""


class TrainingView(Dataset):
    """Wrap a dataset of :class:`Sample` with a seeded transform and return collatable dicts.

    The transform's seed is derived from ``(seed, epoch, index)``, so augmentation is identical across
    resumes, DataLoader workers and DDP ranks, and differs between epochs (call :meth:`set_epoch`).
    """

    def __init__(self, samples: Dataset, transform: Transform | None = None, seed: int = 0) -> None:
        self.samples = samples
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        if self.transform is not None:
            seed = (self.seed * 1_000_003 + self.epoch * 7_919 + int(index)) % (2**31 - 1)
            sample = self.transform(sample, seed)
        return to_item(sample)


class DomainPlugin(ABC):
    """What a domain provides. Subclasses set the class attributes and implement the methods.

    Class attributes
    ----------------
    name:            registry name (``"ct"``, ``"fundus"``, ``"xray"``, ``"multispectral"``)
    spatial_dims:    2 or 3
    modality:        default ``meta['modality']``
    extensions:      file suffixes the reader accepts (lower case, with the dot, e.g. ``".nii.gz"``)
    tasks:           supported tasks among ``"classify"``, ``"segment"``, ``"anomaly"``
    presets:         named preprocessing presets (e.g. CT windows), each a dict of ``preprocess`` kwargs
    class_names:     class names of the synthetic classification labels
    seg_class_names: class names of the synthetic segmentation labels (index 0 = background)
    multi_label:     True if classification labels are multi-hot (X-ray findings)
    recipes:         training defaults from the papers, ``{"pretrain": {...}, "finetune": {...}}`` with
                     keys such as ``patch_size``, ``input_size``, ``mask_ratio``, ``crop_scale``,
                     ``layer_decay``; the YAML configs in ``configs/<domain>/`` follow them
    """

    name: ClassVar[str]
    spatial_dims: ClassVar[int]
    modality: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    class_names: ClassVar[tuple[str, ...]] = ()
    seg_class_names: ClassVar[tuple[str, ...]] = ()
    multi_label: ClassVar[bool] = False
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}

    # -- files -----------------------------------------------------------------------------------
    def accepts(self, path: str | Path) -> bool:
        """True if ``path`` has one of this domain's extensions (or is a folder / zip the domain reads)."""
        name = str(path).lower()
        return any(name.endswith(ext) for ext in self.extensions)

    @abstractmethod
    def read(self, path: str | Path, **kwargs: Any) -> Sample:
        """Read a file into a :class:`Sample` in source geometry. Raise :class:`InputError` on bad input."""

    @abstractmethod
    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        """Read a label/mask file (PNG/GIF 0/255, NIfTI labels, GeoTIFF class map) as int64 indices.

        ``like`` is the image sample the mask belongs to; its spatial shape must match (else InputError).
        """

    @abstractmethod
    def preprocess(self, sample: Sample, **kwargs: Any) -> Sample:
        """Normalise into model space (channels, intensity, orientation, spacing); keep and update ``meta``."""

    @abstractmethod
    def augment(self, *, train: bool, input_size: int | Sequence[int], **kwargs: Any) -> Transform:
        """A seeded transform ``(sample, seed) -> sample`` producing fixed ``input_size`` crops.

        Random crops/flips when ``train``; a deterministic centre crop or pad otherwise. ``valid`` and
        ``mask`` move with the image; padding is marked invalid.
        """

    @abstractmethod
    def synthetic(
        self,
        n: int,
        *,
        seed: int = 0,
        size: int | Sequence[int] | None = None,
        task: str = "segment",
        lesion_prob: float | None = None,
    ) -> Dataset:
        """A deterministic dataset of ``n`` synthetic :class:`Sample` already in model space.

        Sample ``i`` depends only on ``(seed, i)``. ``task`` picks the targets: ``"classify"`` sets
        ``label`` (index into ``class_names``, or multi-hot for multi-label domains); ``"segment"`` sets
        ``mask`` (indices into ``seg_class_names``); ``"anomaly"`` sets ``mask`` to the lesion/anomaly
        mask and ``label`` to 0/1. ``lesion_prob`` is the chance that a sample has lesions/anomalies
        (``0.0`` gives normal-only data for anomaly training); ``None`` uses the domain default.
        """

    @abstractmethod
    def write(self, array: Any, meta: dict[str, Any], path: str | Path, **kwargs: Any) -> Path:
        """Write a result (label map / heat map) in the source geometry of ``meta``, atomically."""

    @abstractmethod
    def plot(self, sample: Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """A matplotlib Figure of the sample, with ``prediction`` (or ``sample.mask``) overlaid."""

    # -- datasets --------------------------------------------------------------------------------
    def load(self, path: str | Path, **kwargs: Any) -> Sample:
        """``read`` then ``preprocess`` with the same keyword arguments (each takes what it knows).

        Plugins therefore keep the keyword names of ``read`` and ``preprocess`` distinct.
        """
        return self.preprocess(self.read(path, **kwargs_for(self.read, kwargs)), **kwargs_for(self.preprocess, kwargs))

    def train_dataset(
        self,
        source: str | Path | None = None,
        *,
        split: str = "train",
        input_size: int | Sequence[int] = 224,
        num_samples: int = 256,
        seed: int = 0,
        **kwargs: Any,
    ) -> Dataset:
        """A dataset of collatable dicts for training (``split='train'``, random augmentation) or validation.

        ``source=None`` uses this domain's synthetic data (``num_samples`` samples, seeded so train and
        val differ); otherwise ``source`` is a folder or a CSV manifest read through this plugin.
        """
        train = split == "train"
        transform = self.augment(train=train, input_size=input_size, **kwargs_for(self.augment, kwargs))
        if source is None or str(source).lower() in ("", "none", "null", "synthetic"):
            split_seed = seed if train else seed + 100_003
            samples = self.synthetic(num_samples, seed=split_seed, size=input_size, **kwargs_for(self.synthetic, kwargs))
        else:
            from unimae.domains.datasets import local_dataset

            samples = local_dataset(self, source, split=split, **kwargs)
        return TrainingView(samples, transform, seed=seed)


def kwargs_for(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts by name (all of them if it takes ``**kwargs``)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}
