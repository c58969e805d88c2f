"""NIfTI reading and writing for CT volumes and label maps (nibabel).

Every reader checks the header first (dimensions, data type, affine, the pixel limit) and only then
loads the voxels, so a decompression bomb or a 4D series is refused before any allocation.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.errors import InputError, check_finite
from unimae.core.fileio import atomic_path
from unimae.domains.base import check_pixel_limit
from unimae.domains.sniff import check_file

__all__ = ["NIFTI_SUFFIXES", "is_nifti_path", "read_nifti", "write_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _load_header(path: Path):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    check_file(path)
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise InputError("has a .gz suffix but is not gzip-compressed; not a NIfTI file", path)
    try:
        img = nib.load(str(path))
    except ImageFileError as err:
        raise InputError("is not a NIfTI file (no valid NIfTI-1/NIfTI-2 header)", path) from err
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise InputError(f"truncated or corrupt NIfTI header ({type(err).__name__})", path) from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"is a {type(img).__name__}, not a NIfTI image", path)
    return img


def _spatial_shape(img, path: Path) -> tuple[int, int, int]:
    """The 3D spatial shape of ``img``; 2D becomes one slice; trailing singleton axes are dropped."""
    shape = tuple(int(s) for s in img.shape)
    if any(s <= 0 for s in shape):
        raise InputError(f"has an empty dimension (shape {'x'.join(map(str, shape))})", path)
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) < 2:
        raise InputError(f"is {len(shape)}D (shape {shape}); a CT volume needs 3 dimensions", path)
    extra = shape[3:]
    if any(s != 1 for s in extra):
        dims = "x".join(map(str, shape))
        raise InputError(
            f"is a {len(shape)}D NIfTI (shape {dims}); give a single 3D volume (split the series first)", path
        )
    return shape[:3]  # type: ignore[return-value]


def _checked_affine(img, path: Path) -> np.ndarray:
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError("has a non-finite affine in its header", path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("has a singular affine (zero voxel size) in its header", path)
    return affine


def _load_voxels(img, path: Path, shape: tuple[int, int, int], dtype) -> np.ndarray:
    try:
        data = np.asarray(img.dataobj, dtype=dtype)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise InputError(f"truncated or corrupt NIfTI voxel data ({type(err).__name__})", path) from err
    return data.reshape(shape)


def _scalar_volume_header(path: Path, need: str) -> tuple[Any, tuple[int, ...], np.dtype, np.ndarray]:
    """The checked header of a 3D NIfTI of one numeric value per voxel: ``(image, shape, dtype, affine)``;
    ``need`` ends the error for another voxel type (what the caller needs)."""
    img = _load_header(path)
    shape = _spatial_shape(img, path)
    check_pixel_limit(shape, path)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(f"has voxel type {dtype}; {need}", path)
    return img, shape, dtype, _checked_affine(img, path)


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a 3D NIfTI intensity volume.

    Returns:
        ``(volume, affine, info)``: ``volume`` float32 ``(I, J, K)`` in the file's voxel order with
        ``scl_slope``/``scl_inter`` applied (HU for a CT), ``affine`` the 4x4 RAS voxel-to-world matrix
        (sform, else qform), ``info`` extra metadata (``source_dtype``, ``nifti_codes``).

    Raises:
        InputError: missing, empty, truncated or corrupt file; not NIfTI; 4D; non-numeric data;
            over the pixel limit (checked from the header); NaN or Inf values.
    """
    path = Path(path)
    img, shape, dtype, affine = _scalar_volume_header(path, "a CT needs one scalar value per voxel")
    volume = _load_voxels(img, path, shape, np.float32)
    check_finite(volume, "image", path)
    header = img.header
    codes = (int(header["qform_code"]), int(header["sform_code"]))
    return volume, affine, {"source_dtype": str(dtype), "nifti_codes": codes}


def read_nifti_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI label map as int64 ``(I, J, K)`` plus its affine.

    Raises:
        InputError: as :func:`read_nifti`, plus non-integer or negative label values.
    """
    path = Path(path)
    img, shape, dtype, affine = _scalar_volume_header(path, "a label map needs integer labels")
    data = _load_voxels(img, path, shape, np.float64 if dtype.kind == "f" else np.int64)
    if data.dtype.kind == "f":
        check_finite(data, "label map", path)
        if not np.array_equal(data, np.round(data)):
            raise InputError("label map holds non-integer values; expected class indices", path)
        data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise InputError(f"label map holds negative values (min {int(data.min())}); expected class indices", path)
    return data, affine


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    codes: tuple[int, int] | None = None,
    is_label: bool = False,
) -> Path:
    """Write a 3D array as NIfTI with ``affine`` (sform and qform), atomically.

    Args:
        array: ``(I, J, K)`` integer labels or float values.
        affine: 4x4 RAS voxel-to-world matrix.
        path: output ``.nii`` or ``.nii.gz`` (compressed by suffix).
        codes: ``(qform_code, sform_code)``; codes of 0 become 1 (scanner) so the affine is honoured.
        is_label: mark the file with the NIfTI ``label`` intent.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise InputError("output must end in .nii or .nii.gz", path)
    qcode, scode = codes if codes is not None else (1, 1)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=int(scode) or 1)
    img.set_qform(img.affine, code=int(qcode) or 1)
    img.header.set_xyzt_units("mm")
    if is_label:
        img.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
