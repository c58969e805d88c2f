"""The CT domain plugin: NIfTI and DICOM series in, label maps and heat maps out on the source grid.

Axis order: an image is ``(C, I, J, K)`` over the voxel index axes of ``meta["affine"]`` (NIfTI as
stored; DICOM as (column, row, slice)). After ``preprocess`` (default ``orientation="RAS"``) the axes
are (R, A, S). See :mod:`unimae.domains.ct.geometry` for the full convention.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, ResultFile, Sample, channel_list, check_pixel_limit, result_kind
from unimae.domains.ct.examples import write_examples as _write_examples
from unimae.domains.ct.augment import CTAugment
from unimae.domains.ct.dicom import folder_has_dicom, is_dicom_file, read_dicom
from unimae.domains.ct.geometry import (
    resample_to_grid,
    same_grid,
    same_voxels,
    spacing_from_affine,
    to_ras_for_display,
)
from unimae.domains.ct.nifti import is_nifti_path, read_nifti, read_nifti_labels, write_nifti
from unimae.domains.ct.plot import plot_ct
from unimae.domains.ct.preprocess import WINDOWS, preprocess_ct, source_grid_of, to_source_grid
from unimae.domains.ct.synthetic import SEG_CLASS_NAMES, SyntheticCT
from unimae.domains.display import in_model_space, stretch, valid_np
from unimae.domains.sniff import dicom_modality, holds_dicom_series, looks_dicom, suffix, zip_has_dicom

__all__ = ["CTPlugin"]


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def _ras(volume: np.ndarray, affine: Any) -> np.ndarray:
    """A source-grid volume in RAS axis order (flips and transposes only); as stored without an affine."""
    if affine is None:
        return np.ascontiguousarray(volume)
    return np.ascontiguousarray(to_ras_for_display(np.asarray(volume), np.asarray(affine, dtype=np.float64)))


def _axial(volume: np.ndarray, affine: Any) -> np.ndarray:
    """The middle axial slice of an ``(I, J, K)`` volume, radiological display (patient right on the left)."""
    vol = _ras(volume, affine)
    return np.ascontiguousarray(vol[::-1, :, vol.shape[2] // 2].T[::-1])


_DEMO_DATA = {"window": "soft_tissue", "spacing": [9.0, 9.0, 9.0]}  # 9 mm: a 288 mm trunk fits the 32-voxel crop


class CTPlugin(DomainPlugin):
    """Computed tomography: NIfTI (``.nii``, ``.nii.gz``) and DICOM (series folder, ``.zip``, one ``.dcm`` file).

    ``read`` gives HU on the source grid; ``preprocess`` reorients to RAS, resamples to 1.5 mm and maps
    an HU window to ``[-1, 1]``; ``write`` puts a label map or heat map back on the source grid.
    """

    name: ClassVar[str] = "ct"
    spatial_dims: ClassVar[int] = 3
    modality: ClassVar[str] = "CT"
    extensions: ClassVar[tuple[str, ...]] = (".nii", ".nii.gz", ".dcm", ".dicom", ".zip")
    tasks: ClassVar[tuple[str, ...]] = ("segment", "anomaly")
    windows: ClassVar[dict[str, tuple[float, float]]] = dict(WINDOWS)
    presets: ClassVar[dict[str, dict[str, Any]]] = {name: {"window": cw} for name, cw in WINDOWS.items()}
    seg_class_names: ClassVar[tuple[str, ...]] = SEG_CLASS_NAMES
    #: phantom CTs in model space (96³, lesion_prob 0.5), in a CT ``window`` as ``preprocess``'s
    synthetic_data: ClassVar[type[SyntheticCT]] = SyntheticCT
    synthetic_options: ClassVar[tuple[str, ...]] = ("window",)
    augment_class: ClassVar[type[CTAugment]] = CTAugment
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        # 3D MAE for CT: 16^3 patches on 96^3 crops at 1.5 mm, soft-tissue window
        "pretrain": {"patch_size": 16, "input_size": 96, "mask_ratio": 0.75, "window": "soft_tissue",
                     "spacing": (1.5, 1.5, 1.5)},
        "finetune": {"patch_size": 16, "input_size": 96, "layer_decay": 0.75, "window": "soft_tissue",
                     "spacing": (1.5, 1.5, 1.5)},
    }
    class_names: ClassVar[tuple[str, ...]] = ()
    all_band_names: ClassVar[tuple[str, ...]] = ("CT",)
    rgb_bands: ClassVar[tuple[str, ...]] = ("CT",)
    folder_input: ClassVar[str] = "a DICOM series folder"
    title: ClassVar[str] = "CT"
    description: ClassVar[str] = (
        "Computed tomography volumes: **NIfTI** (`.nii`, `.nii.gz`), a single **DICOM** file or a **zipped DICOM "
        "series**. Results come back on the scan's own voxel grid (NIfTI with the source affine)."
    )
    default_window: ClassVar[str] = "soft_tissue"
    window_unit: ClassVar[str] = "HU"
    spacing_unit: ClassVar[str] = "mm"
    result_suffix: ClassVar[str] = ".nii.gz"
    demo_models: ClassVar[dict[str, dict[str, Any]]] = {
        "segment": {"model": {"patch_size": 8, "feature_size": 8},
                    "data": {"input_size": 32, "num_val_samples": 4, **_DEMO_DATA},
                    "train": {"max_steps": 150, "batch_size": 2, "lr": 4e-3, "class_weights": "auto"}},
        # as configs/ct/anomaly.yaml: a variance head, trained hiding what the K masks hide, no flips; 512 normal
        # phantoms made once and revisited (making one costs more than a training step: 700 steps drawing fresh
        # ones took 41 s of the first start, these 512 about 20 s, validation AUROC 0.64 -> 0.69 on 32 images)
        "anomaly": {"model": {"embed_dim": 32, "num_heads": 2, "decoder_dim": 32, "decoder_depth": 1,
                              "decoder_heads": 2, "patch_size": 8, "mask_ratio": 0.25, "predict_variance": True},
                    "data": {"input_size": 32, "num_samples": 512, "cache_synthetic": True, "num_val_samples": 32,
                             "val_lesion_prob": 0.5, "flip_prob": 0.0, **_DEMO_DATA},
                    "train": {"max_steps": 700, "batch_size": 4},
                    "anomaly": {"sigma": 1.0, "top_fraction": 0.001}},
    }  # fmt: skip
    demo_test_size: ClassVar[int] = 24
    demo_examples: ClassVar[dict[str, dict[str, Any]]] = {
        # the demo models' own 9 mm grid: the anomaly model knows the noise texture of its training phantoms only,
        # and reads a volume resampled from 3 mm (smoother) as abnormal throughout (measured: normal example 49 %
        # flagged)
        "default": {"size": (32, 32, 32), "spacing": (9.0, 9.0, 9.0)},
        "test": {"size": (26, 24, 24), "spacing": (9.0, 9.0, 9.0)},
    }

    # -- files -----------------------------------------------------------------------------------
    def accepts(self, path: str | Path) -> bool:
        """NIfTI / DICOM / zip by suffix, a folder holding DICOM files, or a file with the DICOM preamble."""
        p = Path(path)
        if super().accepts(p):
            return True
        if p.is_dir():
            return folder_has_dicom(p)
        return p.is_file() and is_dicom_file(p)

    def sniff(self, path: str | Path) -> float:
        """1 for NIfTI, a DICOM series (folder or zip) and a DICOM file whose header says CT; 0 for other
        DICOM modalities and other files. A folder or zip without DICOM files raises (it would be ours)."""
        p = Path(path)
        if p.is_dir():
            if holds_dicom_series(p):
                return 1.0
            raise InputError("folder holds no DICOM files (give one image file, or a DICOM series folder)", p)
        ext = suffix(p)
        if ext in (".nii", ".nii.gz"):
            return 1.0
        if ext == ".zip":
            if zip_has_dicom(p):
                return 1.0
            raise InputError("zip holds no DICOM files", p)
        if looks_dicom(p):
            return 1.0 if dicom_modality(p) == "CT" else 0.0
        return 0.0

    def read(self, path: str | Path, *, dicom_series: int | None = None) -> Sample:
        """Read a CT in HU on its source grid.

        Args:
            path: ``.nii`` / ``.nii.gz``; a DICOM series as a folder or ``.zip``; or one DICOM file.
            dicom_series: ``SeriesNumber`` to read when a folder or archive holds several series.

        Returns:
            ``image`` ``(1, I, J, K)`` float32 HU in source voxel order; ``meta`` with the data contract:
            ``spacing`` (mm per axis, from the affine), ``affine`` (4x4 RAS), ``grid_affine`` (same, the
            grid the tensor is on), ``source_shape``, ``orientation`` (axis codes), ``valid`` (False for
            DICOM padding and values below -1500 HU), plus ``source_format``, ``source_dtype`` and, for
            DICOM, ``slice_thickness``, ``n_slices``, ``series_number``, ``gantry_tilt_deg``.
        """
        p = Path(path)
        info: dict[str, Any]
        if is_nifti_path(p):
            hu, affine, info = read_nifti(p)
            valid = hu > -1500.0
            fmt = "nifti"
        elif p.is_dir() or p.name.lower().endswith((".zip", ".dcm", ".dicom")) or (p.is_file() and is_dicom_file(p)):
            hu, valid, affine, info = read_dicom(p, series=dicom_series)
            fmt = "dicom"
        elif not p.exists():
            raise InputError("file not found", p)
        else:
            raise InputError(
                "is not a CT file; expected .nii, .nii.gz, a DICOM file, a DICOM series folder or a .zip", p
            )
        meta: dict[str, Any] = {
            "spatial_dims": 3,
            "channels": channel_list(["CT"]),
            "spacing": spacing_from_affine(affine),
            "affine": affine,
            "grid_affine": affine.copy(),
            "source_shape": tuple(int(s) for s in hu.shape),
            "orientation": _axcodes(affine),
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.from_numpy(np.ascontiguousarray(valid)),
            "modality": self.modality,
            "path": str(path),
            "source_format": fmt,
            "units": "HU",
        }
        meta.update({k: v for k, v in info.items() if v is not None})
        return Sample(image=torch.from_numpy(np.ascontiguousarray(hu))[None], meta=meta)

    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        """Read a NIfTI label map as int64 indices.

        Without ``like`` the map is returned as stored, shape ``(I, J, K)``. With ``like`` (a sample from
        ``read`` or ``preprocess``) the map must cover the same voxels as ``like``'s source file (same
        shape, same affine up to axis flips/permutations, else :class:`InputError`) and is returned on
        ``like``'s current grid (nearest neighbour), shape ``like.spatial_shape``.
        """
        p = Path(path)
        if not is_nifti_path(p):
            raise InputError("CT masks must be NIfTI label maps (.nii or .nii.gz)", p)
        labels, affine = read_nifti_labels(p)
        if like is None:
            return torch.from_numpy(labels)
        src_affine, src_shape = source_grid_of(like.meta)
        if sorted(labels.shape) != sorted(src_shape) or labels.size != int(np.prod(src_shape)):
            raise InputError(
                f"mask shape {'x'.join(map(str, labels.shape))} does not match the image shape "
                f"{'x'.join(map(str, src_shape))}",
                p,
            )
        if not same_grid(affine, labels.shape, src_affine, src_shape):
            raise InputError("mask affine does not match the image's: they cover different voxels", p)
        grid_affine = np.asarray(like.meta.get("grid_affine", src_affine), dtype=np.float64)
        if tuple(labels.shape) == tuple(like.spatial_shape) and same_voxels(affine, grid_affine):
            return torch.from_numpy(labels)
        out = resample_to_grid(labels[None].astype(np.float32), affine, grid_affine, like.spatial_shape)
        return out[0].round().long()

    #: reorient to ``orientation``, resample to ``spacing`` mm, window HU into ``[-1, 1]``: ``window`` is one of
    #: :attr:`presets` (soft_tissue 400/40, lung 1500/-600, bone 2500/480, liver 150/90, brain 80/40) or a
    #: ``(center, width)`` pair (:func:`~unimae.domains.ct.preprocess.preprocess_ct`, called as it is)
    preprocess = staticmethod(preprocess_ct)

    def to_source_grid(self, array: np.ndarray, meta: Mapping[str, Any], *, kind: str) -> np.ndarray:
        """A result on the grid of ``meta`` (reoriented / resampled) resampled onto the source affine and shape:
        nearest neighbour for labels, trilinear for heat maps."""
        labels = result_kind(kind, array) == "labels"
        arr = np.asarray(array).astype(np.float32)[None]
        return to_source_grid(arr, meta, mode="nearest" if labels else "bilinear")[0].numpy()

    def _write(self, array: Any, meta: dict[str, Any], out: ResultFile) -> Path:
        """Write a result on the sample grid back to the source grid as NIfTI (``.nii.gz`` or ``.nii``), atomically.

        ``array``: ``(I, J, K)`` or ``(1, I, J, K)`` on the grid of ``meta`` (``meta["valid"]``'s shape; ``meta``
        from ``read``, ``preprocess`` or ``synthetic``), integer/bool labels or a float map. ``"labels"``: nearest,
        integer output; ``"heat"``: trilinear, float32; ``"auto"``: labels for integer/bool arrays, heat for
        floats. ``nodata`` and ``class_names`` are not stored in NIfTI (voxels outside the image are 0). The file
        has the source ``affine`` and ``source_shape`` (for synthetic data: its own grid); sform/qform codes
        follow the source NIfTI where known.
        """
        path = out.path
        kind = {"heat": "map"}.get(out.kind, out.kind)
        arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3:
            raise InputError(f"write needs a (I, J, K) or (1, I, J, K) array, got shape {arr.shape}", path)
        grid_shape = tuple(np.asarray(meta["valid"]).shape) if meta.get("valid") is not None else None
        src_affine, src_shape = source_grid_of(meta)
        if grid_shape is None:
            grid_shape = src_shape if "grid_affine" not in meta else tuple(arr.shape)
        if tuple(arr.shape) != tuple(grid_shape):
            raise InputError(
                f"array shape {'x'.join(map(str, arr.shape))} does not match the sample grid "
                f"{'x'.join(map(str, grid_shape))}",
                path,
            )
        if kind == "auto":
            kind = "labels" if arr.dtype.kind in "biu" else "map"
        check_pixel_limit(src_shape, path)
        if kind == "labels":
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError("label map contains NaN or Inf values", path)
            labels = np.rint(arr).astype(np.int64)
            out = to_source_grid(labels[None].astype(np.float32), meta, mode="nearest")[0].round().numpy()
            lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
            dtype = np.uint8 if lo >= 0 and hi < 256 else (np.int16 if -(2**15) <= lo and hi < 2**15 else np.int32)
            data = out.astype(dtype)
        else:
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                warnings.warn("map holds NaN/Inf; they are written as 0", stacklevel=2)
                arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
            data = to_source_grid(arr[None], meta, mode="bilinear")[0].numpy().astype(np.float32)
        return write_nifti(data, src_affine, path, codes=meta.get("nifti_codes"), is_label=kind == "labels")

    #: axial / coronal / sagittal middle slices with ``prediction`` (or ``sample.mask``) overlaid
    #: (:func:`~unimae.domains.ct.plot.plot_ct`, called as it is)
    plot = staticmethod(plot_ct)

    # -- display ---------------------------------------------------------------------------------
    def display_image(self, sample: Sample, *, window: tuple[float, float] | None = None) -> np.ndarray:
        """The middle axial slice (radiological display): HU through ``window`` (default soft tissue), a windowed
        model-space volume as is, anything else stretched."""
        if sample.image.ndim != 4:
            return super().display_image(sample, window=window)
        meta = sample.meta
        vol = sample.image.detach().cpu().float().numpy()[0]
        if meta.get("units") == "HU":
            c, w = window or self.windows[self.default_window]
            vol = np.clip((vol - (c - w / 2)) / w, 0.0, 1.0)
        elif in_model_space(meta) and meta["normalization"].get("kind") == "window":
            vol = np.clip((vol + 1.0) / 2.0, 0.0, 1.0)
        else:
            vol = stretch(vol, valid_np(meta, vol.shape), 0.5, 99.5)
        grey = _axial(vol, meta.get("grid_affine", meta.get("affine")))
        return np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)

    def display_window(self, preprocess: Mapping[str, Any] | None) -> tuple[float, float]:
        """The model's preprocessing window (preset name, ``(center, width)`` or a dict), else soft tissue."""
        win = (preprocess or {}).get("window")
        if isinstance(win, str):
            return WINDOWS.get(win, WINDOWS[self.default_window])
        if isinstance(win, (list, tuple)) and len(win) == 2:
            return float(win[0]), float(win[1])
        if isinstance(win, Mapping) and "center" in win:
            return float(win["center"]), float(win["width"])
        return WINDOWS[self.default_window]

    def display_volume(self, array: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """RAS axis order (axis 0 -> patient right, 1 -> anterior, 2 -> superior) from the source affine."""
        return _ras(array, meta.get("affine"))

    def display_spacing(self, meta: Mapping[str, Any]) -> tuple[float, float, float]:
        """Voxel size along the R, A, S axes of :meth:`display_volume`'s result."""
        affine = meta.get("affine")
        if affine is None:
            return (1.0, 1.0, 1.0)
        a = np.asarray(affine, dtype=np.float64)[:3, :3]
        spacing = np.linalg.norm(a, axis=0)
        world_axis = np.argmax(np.abs(a), axis=0)  # the world axis each voxel axis runs along most
        out = [1.0, 1.0, 1.0]
        for voxel_axis, w in enumerate(world_axis):
            out[int(w)] = float(spacing[voxel_axis])
        return tuple(out)  # type: ignore[return-value]

    def overview(self, array: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """The middle axial slice, as :meth:`display_image` shows the scan."""
        return _axial(array, meta.get("affine"))

    def write_examples(self, dest: Path, *, seed: int, **settings: Any) -> list[Path]:
        """Phantoms as NIfTI (with lesions, normal) and a zipped DICOM series (see :mod:`.examples`)."""
        return _write_examples(dest, seed=seed, **settings)
