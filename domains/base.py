"""The domain plugin protocol: everything an app needs to know about a kind of image.

Data flows ``sniff -> read -> preprocess -> augment -> model -> to_source_grid -> write``: a plugin says
whether a file is its own (:meth:`DomainPlugin.sniff`), reads it into a :class:`Sample` in source
geometry (:meth:`~DomainPlugin.read`; the data contract of ``meta`` is in :mod:`unimae.domains.sample`),
normalises it into model space (:meth:`~DomainPlugin.preprocess`), crops it for training
(:meth:`~DomainPlugin.augment`), maps a model-grid result back onto the source grid
(:meth:`~DomainPlugin.to_source_grid`) and writes it there with one signature for every domain
(:meth:`~DomainPlugin.write`: NIfTI with the source affine, GeoTIFF with the source CRS / transform /
nodata, PNG at the source resolution ...). The app draws with the plugin's display methods and builds a
tab per registered plugin from its class attributes (title, description, tasks, windows, composites,
examples, demo-model recipes). Nothing outside a domain's folder compares domain names.

The apps and the shared dataset code (:mod:`unimae.domains.layouts`) only ever call what is defined
here; see ``docs/ARCHITECTURE.md`` for adding a domain.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from unimae.core.errors import InputError, look_up
from unimae.domains import sample as _sample
from unimae.domains.display import grey_volume_slice, picture
from unimae.domains.layouts import local_dataset
from unimae.domains.localdata import CachedSamples
from unimae.domains.sample import (  # the data contract, re-exported (see __all__)
    DEFAULT_MAX_PIXELS,
    Sample,
    SyntheticSamples,
    Transform,
    channel_list,
    check_pixel_limit,
    kwargs_for,
    max_pixels,
    sample_index,
    size_pair,
    to_item,
)

# the data contract's names (domains.sample) are re-exported: plugins import them from here
__all__ = ["DomainPlugin", "TrainingView", "ResultFile", "RESULT_KINDS", "kind_name", "result_kind", *_sample.__all__]

#: what :meth:`DomainPlugin.write` and :meth:`DomainPlugin.to_source_grid` are told a result is
RESULT_KINDS = ("auto", "labels", "heat")
_KIND_ALIASES = {"label": "labels", "map": "heat"}


def kind_name(kind: str) -> str:
    """``kind`` as one of :data:`RESULT_KINDS` (``"label"`` and ``"map"`` are read as ``"labels"`` and ``"heat"``);
    :class:`InputError` for any other name."""
    return look_up(_KIND_ALIASES.get(str(kind), str(kind)), RESULT_KINDS, what="result kind")


def result_kind(kind: str, array: Any = None) -> str:
    """``"labels"`` or ``"heat"``: ``kind`` (``"label"`` and ``"map"`` are read as those), or for ``"auto"`` the
    dtype of ``array`` (integer / bool -> labels, float -> heat)."""
    kind = kind_name(kind)
    if kind != "auto":
        return kind
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    return "labels" if arr.dtype.kind in "biu" else "heat"


@dataclass(frozen=True)
class ResultFile:
    """What :meth:`DomainPlugin.write` hands its plugin's :meth:`~DomainPlugin._write` beside the array and
    ``meta``: the output ``path``, the result ``kind`` (one of :data:`RESULT_KINDS`), ``nodata`` and
    ``class_names`` (for the formats that store them)."""

    path: str | Path
    kind: str = "auto"
    nodata: float | None = None
    class_names: Sequence[str] | None = None


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
    """What a domain provides. Subclasses set the class attributes and implement the abstract methods;
    the other methods have defaults that suit a plain 2D picture format.

    Identity and files
    ------------------
    name:            registry name (``"ct"``, ``"fundus"``, ``"xray"``, ``"multispectral"``, or yours)
    spatial_dims:    2 or 3
    modality:        default ``meta['modality']``
    extensions:      file suffixes the reader accepts (lower case, with the dot, e.g. ``".nii.gz"``)
    folder_input:    what kind of folder the reader takes as one image (CT: ``"a DICOM series folder"``), or ""
    title:           the app's tab title (default: the name)
    description:     the app's tab introduction (Markdown): formats read, where results go

    Tasks and labels
    ----------------
    tasks:           supported tasks among ``"classify"``, ``"segment"``, ``"anomaly"``
    class_names:     class names of the synthetic classification labels
    seg_class_names: class names of the synthetic segmentation labels (index 0 = background)
    multi_label:     True if classification labels are multi-hot (X-ray findings)
    synthetic_data:  the :class:`SyntheticSamples` class that :meth:`synthetic` builds (None: the plugin
                     implements :meth:`synthetic` itself)
    synthetic_options: the keywords of ``synthetic_data`` that :meth:`synthetic` passes on besides ``seed``,
                     ``size``, ``task`` and ``lesion_prob`` (e.g. the preprocessing the samples follow)

    Preprocessing and training
    --------------------------
    augment_class:   the seeded transform that :meth:`augment` builds, ``cls(train=, input_size=, **options)``; its
                     other keyword arguments are the ``data`` keys a config may set (None: the plugin implements
                     :meth:`augment` itself)
    presets:         named preprocessing presets (e.g. CT windows), each a dict of ``preprocess`` kwargs
    symmetries:      per task, the test-time augmentation its images allow (:mod:`unimae.core.tta`: ``mirror``,
                     ``dihedral``; a task not named: ``none``), what ``data.tta: auto`` records in a checkpoint
    recipes:         training defaults from the papers, ``{"pretrain": {...}, "finetune": {...}}`` with
                     keys such as ``patch_size``, ``input_size``, ``mask_ratio``, ``crop_scale``,
                     ``layer_decay``; the YAML configs in ``configs/<domain>/`` follow them

    Geometry and display
    --------------------
    display:         how the app draws an input: ``"image"`` (a picture), ``"scene"`` (band composites chosen
                     at display time) or ``"volume"`` (slices); None: ``"volume"`` for 3D domains, else ``"image"``
    windows:         intensity windows ``{name: (center, width)}`` the volume viewer offers (CT HU windows)
    default_window:  the window a volume opens with (a key of ``windows``)
    window_unit:     the unit of a window's center and width (``"HU"``), or ""
    composites:      ``{name: label}`` of the band composites a scene viewer offers
    rgb_bands:       the channel names shown as red, green, blue
    channel_noun:    what channels are called where their count is worth telling (``"bands"``), or None
    spacing_unit:    the unit of ``meta['spacing']`` when the file does not say (``"mm"`` for CT)
    georeferenced:   results sit on a map grid (a CRS and a resolution rather than a spacing)
    result_suffix:   the suffix of written label / heat maps (``""``: ``.nii.gz`` for 3D, ``.png`` for 2D)
    streams:         large inputs are predicted tile by tile (:meth:`open_scene`, :meth:`scene_writer`)

    The app's demo
    --------------
    demo_models:     per task, the recipe of the demo model built from synthetic data: the ``model``,
                     ``data``, ``train`` (``max_steps``, ``batch_size``, ``lr`` and any other ``train`` key)
                     and ``anomaly`` sections of a ``unimae finetune`` config
    demo_test_size:  the synthetic input size of the test profile's (tiny) demo models
    demo_examples:   per demo profile (``"default"``, ``"test"``), the keyword arguments of
                     :meth:`write_examples`
    """

    name: ClassVar[str]
    spatial_dims: ClassVar[int]
    modality: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    folder_input: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    class_names: ClassVar[tuple[str, ...]] = ()
    seg_class_names: ClassVar[tuple[str, ...]] = ()
    multi_label: ClassVar[bool] = False
    synthetic_data: ClassVar[type[SyntheticSamples] | None] = None
    synthetic_options: ClassVar[tuple[str, ...]] = ()
    augment_class: ClassVar[type | None] = None
    symmetries: ClassVar[dict[str, str]] = {}
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}
    display: ClassVar[str | None] = None
    windows: ClassVar[dict[str, tuple[float, float]]] = {}
    default_window: ClassVar[str | None] = None
    window_unit: ClassVar[str] = ""
    composites: ClassVar[dict[str, str]] = {}
    rgb_bands: ClassVar[tuple[str, ...]] = ()
    channel_noun: ClassVar[str | None] = None
    spacing_unit: ClassVar[str | None] = None
    georeferenced: ClassVar[bool] = False
    result_suffix: ClassVar[str] = ""
    streams: ClassVar[bool] = False
    demo_models: ClassVar[dict[str, dict[str, Any]]] = {}
    demo_test_size: ClassVar[int] = 64
    demo_examples: ClassVar[dict[str, dict[str, Any]]] = {}

    # -- identity ------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The name people see (the tab title)."""
        return self.title or self.name

    @property
    def display_kind(self) -> str:
        """``"image"``, ``"scene"`` or ``"volume"`` (see :attr:`display`)."""
        return self.display or ("volume" if self.spatial_dims == 3 else "image")

    @property
    def suffix(self) -> str:
        """The suffix results are written with (see :attr:`result_suffix`)."""
        return self.result_suffix or (".nii.gz" if self.spatial_dims == 3 else ".png")

    # -- files -----------------------------------------------------------------------------------
    def accepts(self, path: str | Path) -> bool:
        """True if ``path`` has one of this domain's extensions (or is a folder / zip the domain reads)."""
        name = str(path).lower()
        return any(name.endswith(ext) for ext in self.extensions)

    def sniff(self, path: str | Path) -> float:
        """How sure this domain is that ``path`` (an existing file or folder) is its own: 0 (not mine) to 1.

        The registry guesses a file's domain by the highest score (:func:`~unimae.domains.guess_domain`), and
        a model refuses a file its domain scores 0 when another domain claims it. Look at headers only, never
        decode a whole image. Raise :class:`InputError` for a file this domain would claim but cannot read
        (the reason is shown when no other domain claims the file).

        Default: 0.5 for a file with one of :attr:`extensions` (a guess by name), else 0.
        """
        p = Path(path)
        return 0.5 if p.is_file() and self.accepts(p) else 0.0

    @abstractmethod
    def read(self, path: str | Path, **kwargs: Any) -> Sample:
        """Read a file into a :class:`Sample` in source geometry. Raise :class:`InputError` on bad input."""

    def read_for_model(self, path: str | Path, trained_read: Mapping[str, Any]) -> Sample:
        """Read a file for a model whose training files were read with ``trained_read`` (the checkpoint contract's
        ``read`` options, e.g. the band order of files that do not name their bands). Default: :meth:`read`."""
        return self.read(path)

    def read_options(self, path: str | Path) -> dict[str, Any]:
        """Extra :meth:`read` keywords for a file from what is published beside it (e.g. the fundus field-of-view
        mask next to a photograph); ``{}`` when there is nothing."""
        return {}

    @abstractmethod
    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        """Read a label/mask file (PNG/GIF 0/255, NIfTI labels, GeoTIFF class map) as int64 indices.

        ``like`` is the image sample the mask belongs to; its spatial shape must match (else InputError).
        """

    @abstractmethod
    def preprocess(self, sample: Sample, **kwargs: Any) -> Sample:
        """Normalise into model space (channels, intensity, orientation, spacing); keep and update ``meta``."""

    def preset_channels(self, preset: str) -> list[dict[str, Any]]:
        """The channel list (``[{"name", "wavelength"}]``) of a named band preset, for ``model.channels: NAME``."""
        raise InputError(f"the {self.name} domain has no channel presets; give model.channels as a list")

    def augment(self, *, train: bool, input_size: int | Sequence[int], **options: Any) -> Transform:
        """A seeded transform ``(sample, seed) -> sample`` producing fixed ``input_size`` crops.

        Random crops/flips when ``train``; a deterministic centre crop or pad otherwise. ``valid`` and
        ``mask`` move with the image; padding is marked invalid. Builds :attr:`augment_class` with
        ``options`` (its keyword arguments); a plugin without one implements this method itself.
        """
        if self.augment_class is None:
            raise NotImplementedError(f"the {self.name} domain has no transform: set augment_class")
        return self.augment_class(train=train, input_size=input_size, **options)

    @property
    def augment_builder(self) -> Callable[..., Transform]:
        """What :meth:`augment` calls, whose keyword arguments name its options: :attr:`augment_class`, or the
        plugin's own :meth:`augment`."""
        if type(self).augment is DomainPlugin.augment and self.augment_class is not None:
            return self.augment_class
        return self.augment

    def augment_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``kwargs`` (e.g. a config's ``data`` section) that :meth:`augment` takes by name."""
        return kwargs_for(self.augment_builder, dict(kwargs))

    def synthetic(
        self,
        n: int,
        *,
        seed: int = 0,
        size: int | Sequence[int] | None = None,
        task: str = "segment",
        lesion_prob: float | None = None,
        **options: Any,
    ) -> Dataset:
        """A deterministic dataset of ``n`` synthetic :class:`Sample` already in model space.

        Sample ``i`` depends only on ``(seed, i)``. ``task`` picks the targets: ``"classify"`` sets
        ``label`` (index into ``class_names``, or multi-hot for multi-label domains); ``"segment"`` sets
        ``mask`` (indices into ``seg_class_names``); ``"anomaly"`` sets ``mask`` to the lesion/anomaly
        mask and ``label`` to 0/1. ``lesion_prob`` is the chance that a sample has lesions/anomalies
        (``0.0`` gives normal-only data for anomaly training); ``None`` uses the domain default, as does
        ``size=None``. ``options``: those named in :attr:`synthetic_options`.

        Builds :attr:`synthetic_data`; a plugin without one implements this method itself, with this signature.
        """
        unknown = [k for k in options if k not in self.synthetic_options]
        if unknown:
            raise TypeError(f"synthetic() got an unexpected keyword argument {unknown[0]!r}")
        if self.synthetic_data is None:
            raise NotImplementedError(f"the {self.name} domain has no synthetic data: set synthetic_data")
        sized = {} if size is None else {"size": size}
        return self.synthetic_data(n, seed=seed, task=task, lesion_prob=lesion_prob, **sized, **options)

    def synthetic_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``kwargs`` (e.g. a config's ``data`` section) that :meth:`synthetic` takes by name."""
        if self.synthetic_data is None:  # the plugin's own synthetic(): its signature says
            return kwargs_for(self.synthetic, dict(kwargs))
        names = ("seed", "size", "task", "lesion_prob", *self.synthetic_options)
        return {k: v for k, v in kwargs.items() if k in names}

    # -- results ---------------------------------------------------------------------------------
    def to_source_grid(self, array: np.ndarray, meta: Mapping[str, Any], *, kind: str) -> np.ndarray:
        """A label map (``kind="labels"``) or heat map (``"heat"``) on the grid of ``meta`` (a preprocessed or
        evaluation-view sample) mapped back onto the source grid ``meta["source_shape"]``.

        Default: undo a centre crop / pad (``meta["crop"] = (row, col, height, width)``), else resize (nearest
        for labels, linear for heat). Plugins whose preprocessing moves the grid (resampling, letterboxing)
        undo exactly that.
        """
        labels = result_kind(kind, array) == "labels"
        shape = tuple(int(s) for s in (meta.get("source_shape") or array.shape))
        crop = meta.get("crop")
        if crop is not None and tuple(array.shape) != shape:
            r0, c0, h, w = (int(v) for v in crop)
            out = np.zeros(shape, dtype=array.dtype)
            ys, xs = max(0, r0), max(0, c0)
            ye, xe = min(shape[0], r0 + h), min(shape[1], c0 + w)
            out[ys:ye, xs:xe] = array[ys - r0 : ye - r0, xs - c0 : xe - c0]
            return out
        if tuple(array.shape) == shape:
            return array
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        mode = "nearest-exact" if labels else ("bilinear" if len(shape) == 2 else "trilinear")
        return torch.nn.functional.interpolate(t, size=shape, mode=mode)[0, 0].numpy()

    def write(
        self,
        array: Any,
        meta: dict[str, Any],
        path: str | Path,
        *,
        kind: str = "auto",
        nodata: float | None = None,
        class_names: Sequence[str] | None = None,
        **options: Any,
    ) -> Path:
        """Write a result in the source geometry of ``meta``, atomically; returns ``path``.

        The one signature of every domain. ``kind`` is checked here and the file written by the plugin's
        :meth:`_write`; a plugin may instead override ``write`` itself, with this signature.

        Args:
            array: a label map (integers / bool) or heat map (floats) on the source grid, or on the grid of
                ``meta`` when the plugin maps it back itself (it then calls :meth:`to_source_grid`).
            meta: the sample's ``meta`` (affine / CRS / transform / nodata / ``source_shape``).
            path: the output file; its suffix is :attr:`suffix`.
            kind: ``"labels"``, ``"heat"`` or ``"auto"`` (by dtype; ``"label"`` / ``"map"`` are read as
                ``"labels"`` / ``"heat"``); see :func:`result_kind`.
            nodata: the value written where the result is undefined, for formats that store one.
            class_names: the label names, for formats that record them.
            options: the plugin's own keyword arguments (those of its :meth:`_write`).
        """
        return self._write(array, meta, ResultFile(path, kind_name(kind), nodata, class_names), **options)

    def _write(self, array: Any, meta: dict[str, Any], out: ResultFile, **options: Any) -> Path:
        """Write ``array`` to ``out.path`` in the domain's format (see :meth:`write`); ``out.kind`` is one of
        :data:`RESULT_KINDS`. Every plugin implements this, or overrides :meth:`write`."""
        raise NotImplementedError(f"the {self.name} domain writes no results: implement _write")

    @abstractmethod
    def plot(self, sample: Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """A matplotlib Figure of the sample, with ``prediction`` (or ``sample.mask``) overlaid."""

    # -- display ---------------------------------------------------------------------------------
    def display_image(self, sample: Sample, *, window: tuple[float, float] | None = None) -> np.ndarray:
        """An ``(H, W, 3)`` uint8 picture of a sample (source grid): the base of the overlays.

        Default: RGB as is, grey replicated, a natural-colour composite of several bands (by
        :attr:`rgb_bands` or wavelength); volumes: the middle slice along the last axis. ``window``:
        ``(center, width)`` for plugins with intensity :attr:`windows`.
        """
        if sample.image.ndim == 4:
            return grey_volume_slice(sample)
        return picture(sample, self.rgb_bands)

    def display_window(self, preprocess: Mapping[str, Any] | None) -> tuple[float, float] | None:
        """The intensity window that shows what a model saw, from its ``preprocess`` options; None: no window."""
        return None

    def display_volume(self, array: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """A source-grid volume (image, labels or heat, ``(I, J, K)``) in the slice viewer's axis order
        (axial slices along the last axis). Default: as stored."""
        return np.ascontiguousarray(array)

    def display_spacing(self, meta: Mapping[str, Any]) -> tuple[float, float, float]:
        """The voxel size along the axes of :meth:`display_volume`'s result (keeps the displayed aspect)."""
        spacing = meta.get("spacing") or (1.0, 1.0, 1.0)
        return tuple(float(s) for s in spacing)[:3]  # type: ignore[return-value]

    def overview(self, array: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """The 2D view of a 3D result drawn on :meth:`display_image`'s picture (a static overlay file)."""
        return np.ascontiguousarray(array[:, :, array.shape[2] // 2])

    def composite(
        self, image: np.ndarray, valid: np.ndarray | None, channels: Sequence[Mapping[str, Any]], name: str
    ) -> np.ndarray:
        """A band composite (one of :attr:`composites`) of a scene ``(C, H, W)`` as ``(H, W, 3)`` uint8.

        Raises :class:`InputError` when the scene lacks the bands (e.g. no near infrared)."""
        raise InputError(f"the {self.name} domain has no {name} composite")

    # -- streamed scenes -------------------------------------------------------------------------
    def open_scene(self, path: str | Path, *, trained_read: Mapping[str, Any] | None = None) -> Any:
        """A windowed reader of a large input (see :attr:`streams`): ``shape``, ``dtype``, ``read(window,
        allow_empty=True)`` -> :class:`Sample`, ``read()``, ``meta()``, ``may_be_invalid``, ``close()``, a
        context manager. ``trained_read``: the ``read`` options the model's training files were read with."""
        raise InputError(f"the {self.name} domain has no streamed reader")

    def scene_writer(
        self,
        like: str | Path,
        path: str | Path,
        *,
        count: int,
        dtype: str,
        nodata: float | None,
        descriptions: Sequence[str] | None = None,
        tile: int = 256,
    ) -> Any:
        """A context manager writing windows ``write(array, (row, col, h, w))`` of a result on the grid of the
        input ``like``, atomically (see :attr:`streams`)."""
        raise InputError(f"the {self.name} domain has no streamed writer")

    def stream_context(self) -> contextlib.AbstractContextManager:
        """Settings around a streamed prediction (e.g. a bounded raster block cache)."""
        return contextlib.nullcontext()

    # -- the app's examples ------------------------------------------------------------------------
    def write_examples(self, dest: Path, *, seed: int, **settings: Any) -> list[Path]:
        """Example files in real formats for the app, written into ``dest`` from the synthetic generator
        (``settings``: one entry of :attr:`demo_examples`); the default writes none."""
        return []

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
        cache_synthetic: bool = False,
        **kwargs: Any,
    ) -> Dataset:
        """A dataset of collatable dicts for training (``split='train'``, random augmentation) or validation.

        ``source=None`` uses this domain's synthetic data (``num_samples`` samples, seeded so train and
        val differ; ``cache_synthetic`` keeps them in memory, for a small pool that epochs revisit); otherwise
        ``source`` is a folder or a CSV manifest read through this plugin (its samples are always kept in
        memory, within ``UNIMAE_DATA_CACHE_MB``).
        """
        train = split == "train"
        transform = self.augment(train=train, input_size=input_size, **self.augment_kwargs(kwargs))
        if source is None or str(source).lower() in ("", "none", "null", "synthetic"):
            split_seed = seed if train else seed + 100_003
            samples = self.synthetic(num_samples, seed=split_seed, size=input_size, **self.synthetic_kwargs(kwargs))
            if cache_synthetic:
                samples = CachedSamples(samples)
        else:
            samples = local_dataset(self, source, split=split, **kwargs)
        return TrainingView(samples, transform, seed=seed)
