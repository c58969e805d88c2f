"""The data contract every reader honours: :class:`Sample`, its ``meta`` keys, and small shared guards.

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

This module depends on nothing else in :mod:`unimae.domains`, so the dataset layouts, the protocol and
every plugin can import it without importing each other.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from unimae.core.errors import InputError, look_up

__all__ = [
    "Sample",
    "Transform",
    "to_item",
    "max_pixels",
    "check_pixel_limit",
    "channel_list",
    "kwargs_for",
    "size_pair",
    "sample_index",
    "SyntheticSamples",
    "DEFAULT_MAX_PIXELS",
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


def size_pair(
    value: int | Sequence[int], what: str = "input_size", *, minimum: int | None = 1, pair: str = "(height, width)"
) -> tuple[int, int]:
    """A 2D size given as one number (``224`` -> ``(224, 224)``) or a pair, as two ints.

    Raises :class:`InputError` for a sequence of another length (``what`` names the setting, ``pair`` its two
    sides) or a side below ``minimum`` (None: no lower bound)."""
    if isinstance(value, numbers.Real):
        a = b = int(value)
    else:
        vals = [int(v) for v in value]
        if len(vals) != 2:
            raise InputError(f"{what} must be an int or {pair}, got {value!r}")
        a, b = vals
    if minimum is not None and min(a, b) < minimum:
        raise InputError(f"{what} must be at least {minimum}, got {a}x{b}")
    return a, b


def sample_index(index: int, n: int) -> int:
    """``index`` into a dataset of ``n`` samples, a negative one counted from the end; IndexError outside."""
    i = int(index)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {index} out of range for {n} samples")
    return i


class SyntheticSamples(Dataset):
    """The base of the domains' synthetic datasets: ``n`` samples in model space for one of :attr:`tasks`,
    sample ``i`` a function of ``(seed, i)`` only (``np.random.default_rng([seed, i])``).

    Every subclass takes these keywords after ``n`` (beside its own, such as ``size``):

    - ``seed``: the dataset seed (>= 0).
    - ``task``: one of :attr:`tasks` (what ``label`` and ``mask`` hold).
    - ``lesion_prob``: the chance that a sample is abnormal, in [0, 1] (``0.0``: normal-only data for anomaly
      training); None: :attr:`default_lesion_prob`.
    """

    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    default_lesion_prob: ClassVar[float] = 0.5

    def __init__(self, n: int, *, seed: int = 0, task: str = "segment", lesion_prob: float | None = None) -> None:
        if int(n) < 0:
            raise InputError(f"number of samples must be >= 0, got {n}")
        if int(seed) < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        p = self.default_lesion_prob if lesion_prob is None else float(lesion_prob)
        if not 0.0 <= p <= 1.0:
            raise InputError(f"lesion_prob must be in [0, 1], got {lesion_prob}")
        self.n = int(n)
        self.seed = int(seed)
        self.task = look_up(task, self.tasks, what="task")
        self.lesion_prob = p

    def __len__(self) -> int:
        return self.n


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


def kwargs_for(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts by name (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}
