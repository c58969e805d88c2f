"""DICOM CT series reading with pydicom: a folder, a ``.zip`` or a single (multi-frame) file.

Slices are ordered by their ``ImagePositionPatient`` projected on the slice normal (the cross
product of the row and column directions of ``ImageOrientationPatient``), never by file name.
``RescaleSlope`` / ``RescaleIntercept`` (or a Modality LUT) are applied to give HU.

Voxel order and affine
----------------------
The volume is returned as ``(I, J, K)`` = (column, row, slice): ``i`` runs along the row direction
(``ImageOrientationPatient[:3]``), ``j`` along the column direction (``[3:]``) and ``k`` along the
sorted slices. The affine is built in DICOM LPS and converted to RAS (x and y negated), so it is
the same affine a NIfTI converter would write for this array::

    LPS = [[r * dc, c * dr, s, p0], ...]   r, c: row/column direction cosines,
                                             dc = PixelSpacing[1], dr = PixelSpacing[0],
                                             s = (p_last - p_first) / (n - 1), p0 = first position
    RAS = diag(-1, -1, 1, 1) @ LPS

A tilted gantry gives a slice vector ``s`` that is not along the normal: the affine then carries the
shear and the geometry stays exact.

Patient fields (name, ID, birth date ...) are never read into the result, printed or logged.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.errors import InputError, check_finite
from unimae.domains.base import check_pixel_limit, max_pixels
from unimae.domains.sniff import has_dicom_magic

__all__ = ["read_dicom", "is_dicom_file", "folder_has_dicom", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_HU_FLOOR = -1500.0  # below this a CT value is padding / outside the reconstruction circle


#: True if a path is a file with the DICOM Part-10 preamble (``DICM`` at byte 128)
is_dicom_file = has_dicom_magic


def folder_has_dicom(path: str | Path, max_files: int = 64) -> bool:
    """True if a folder holds at least one DICOM file among its first ``max_files`` files."""
    path = Path(path)
    if not path.is_dir():
        return False
    for n, f in enumerate(_walk(path)):
        if n >= max_files:
            break
        if is_dicom_file(f):
            return True
    return False


def _walk(folder: Path) -> Iterator[Path]:
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts):
            yield f


# -- sources: where the bytes of each file come from ----------------------------------------------


@dataclass
class _File:
    name: str  # shown in messages: file name or zip member
    open: Callable[[], Any]  # returns a path or a binary file object for pydicom


def _folder_files(folder: Path) -> list[_File]:
    return [_File(str(f.relative_to(folder)), (lambda f=f: str(f))) for f in _walk(folder)]


def _zip_files(path: Path) -> tuple[list[_File], zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError("is not a valid zip archive", path) from err
    infos = [
        i
        for i in zf.infolist()
        if not i.is_dir()
        and not i.filename.startswith("__MACOSX/")
        and not Path(i.filename).name.startswith(".")
        and Path(i.filename).name.upper() != "DICOMDIR"
    ]
    total = sum(i.file_size for i in infos)
    limit = 8 * max_pixels() + 2**30
    if total > limit:
        raise InputError(f"archive unpacks to {total / 2**30:.1f} GiB, over the limit of {limit / 2**30:.1f} GiB", path)

    def opener(info: zipfile.ZipInfo) -> Callable[[], Any]:
        def _open() -> Any:
            try:
                return io.BytesIO(zf.read(info))
            except (zipfile.BadZipFile, OSError, EOFError) as err:  # CRC errors, truncation
                raise InputError(f"corrupt zip member {info.filename!r}", path) from err

        return _open

    return [_File(i.filename, opener(i)) for i in infos], zf


# -- frames: one 2D image each, with its geometry -------------------------------------------------


@dataclass
class _Frame:
    name: str
    position: np.ndarray  # (3,) LPS mm, ImagePositionPatient
    orientation: np.ndarray  # (6,) row and column direction cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    size: tuple[int, int]  # (rows, columns)
    series: str
    series_number: int | None
    thickness: float | None
    spacing_between: float | None
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (HU float32 (rows, cols), valid bool)
    info: dict[str, Any] = field(default_factory=dict)


def _floats(value: Any, n: int, what: str, name: str, path: Path) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: {what} is not numeric", path) from err
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(f"{name}: {what} should hold {n} finite numbers", path)
    return arr


def _opt_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _pixel_spacing(ds: Any, name: str, path: Path) -> tuple[float, float]:
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if ps is None:
        warnings.warn(f"{path.name}: {name} has no PixelSpacing; assuming 1 mm pixels", stacklevel=3)
        return (1.0, 1.0)
    arr = _floats(ps, 2, "PixelSpacing", name, path)
    if (arr <= 0).any():
        raise InputError(f"{name}: PixelSpacing must be positive, got {arr.tolist()}", path)
    return (float(arr[0]), float(arr[1]))


def _decode(ds: Any, name: str, path: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{name}: DICOM has no pixel data", path)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises many types for truncated / undecodable data
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise InputError(f"{name}: cannot decode pixel data (truncated or unsupported: {reason})", path) from err


def _check_grey(ds: Any, name: str, path: Path) -> None:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise InputError(f"{name}: SamplesPerPixel is {spp} (colour); a CT slice must be greyscale", path)


def _single_frame(ds: Any, f: _File, path: Path) -> _Frame:
    name = f.name
    _check_grey(ds, name, path)
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        raise InputError(f"{name}: missing ImagePositionPatient/ImageOrientationPatient; cannot place the slice", path)
    size = (int(ds.Rows), int(ds.Columns))

    def load() -> tuple[np.ndarray, np.ndarray]:
        from pydicom.pixels import apply_modality_lut

        full = _dcmread(f, path, stop_before_pixels=False)
        raw = _decode(full, name, path)
        if raw.shape != size:
            raise InputError(f"{name}: pixel data is {raw.shape}, header says {size[0]}x{size[1]}", path)
        valid = np.ones(size, dtype=bool)
        pad = full.get("PixelPaddingValue")
        if pad is not None:
            valid &= raw != pad
        hu = np.asarray(apply_modality_lut(raw, full), dtype=np.float32)
        return hu, valid & (hu > _HU_FLOOR)

    return _Frame(
        name=name,
        position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", name, path),
        orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", name, path),
        pixel_spacing=_pixel_spacing(ds, name, path),
        size=size,
        series=str(ds.get("SeriesInstanceUID", "")),
        series_number=_series_number(ds),
        thickness=_opt_float(ds.get("SliceThickness")),
        spacing_between=_opt_float(ds.get("SpacingBetweenSlices")),
        load=load,
        info={"source_dtype": _stored_dtype(ds)},
    )


def _series_number(ds: Any) -> int | None:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


def _stored_dtype(ds: Any) -> str:
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return f"{'int' if signed else 'uint'}{bits}"


def _group_item(ds: Any, frame_item: Any, seq: str) -> Any | None:
    """The first item of functional-group ``seq`` for a frame (per-frame first, then shared)."""
    for holder in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and seq in holder:
            item = _first(holder.get(seq))
            if item is not None:
                return item
    return None


def _first(seq: Any) -> Any | None:
    try:
        return seq[0] if seq is not None and len(seq) else None
    except TypeError:
        return None


def _multi_frame(ds: Any, f: _File, path: Path) -> list[_Frame]:
    """Frames of an enhanced (multi-frame) CT, placed by their functional groups."""
    name = f.name
    _check_grey(ds, name, path)
    n = int(ds.NumberOfFrames)
    size = (int(ds.Rows), int(ds.Columns))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n:
        raise InputError(f"{name}: multi-frame DICOM without per-frame positions is not supported", path)
    cache: dict[str, np.ndarray] = {}

    def frames_raw() -> np.ndarray:
        if "raw" not in cache:
            full = _dcmread(f, path, stop_before_pixels=False)
            raw = _decode(full, name, path)
            if raw.shape != (n, *size):
                raise InputError(f"{name}: pixel data is {raw.shape}, header says {n}x{size[0]}x{size[1]}", path)
            cache["raw"] = raw
            cache["pad"] = full.get("PixelPaddingValue")
        return cache["raw"]

    frames = []
    for k, item in enumerate(per_frame):
        pos = _group_item(ds, item, "PlanePositionSequence")
        ori = _group_item(ds, item, "PlaneOrientationSequence")
        mea = _group_item(ds, item, "PixelMeasuresSequence")
        if pos is None or ori is None or "ImagePositionPatient" not in pos or "ImageOrientationPatient" not in ori:
            raise InputError(f"{name}: frame {k + 1} has no plane position/orientation", path)
        tr = _group_item(ds, item, "PixelValueTransformationSequence")
        slope = _opt_float(tr.get("RescaleSlope")) if tr is not None else _opt_float(ds.get("RescaleSlope"))
        inter = _opt_float(tr.get("RescaleIntercept")) if tr is not None else _opt_float(ds.get("RescaleIntercept"))
        slope = 1.0 if slope is None else slope
        inter = 0.0 if inter is None else inter

        def load(k: int = k, slope: float = slope, inter: float = inter) -> tuple[np.ndarray, np.ndarray]:
            raw = frames_raw()[k]
            valid = np.ones(size, dtype=bool) if cache.get("pad") is None else raw != cache["pad"]
            hu = raw.astype(np.float32) * np.float32(slope) + np.float32(inter)
            return hu, valid & (hu > _HU_FLOOR)

        frames.append(
            _Frame(
                name=f"{name} frame {k + 1}",
                position=_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", name, path),
                orientation=_floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", name, path),
                pixel_spacing=_pixel_spacing(mea if mea is not None and "PixelSpacing" in mea else ds, name, path),
                size=size,
                series=str(ds.get("SeriesInstanceUID", "")),
                series_number=_series_number(ds),
                thickness=_opt_float(mea.get("SliceThickness")) if mea is not None else None,
                spacing_between=_opt_float(mea.get("SpacingBetweenSlices")) if mea is not None else None,
                load=load,
                info={"source_dtype": _stored_dtype(ds)},
            )
        )
    return frames


def _dcmread(f: _File, path: Path, *, stop_before_pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(f.open(), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise
    except InputError:
        raise
    except Exception as err:  # truncated headers raise EOFError, OSError, ValueError, struct.error ...
        raise InputError(f"{f.name}: truncated or corrupt DICOM ({type(err).__name__})", path) from err


def _frames_of(files: list[_File], path: Path, single: bool) -> tuple[list[_Frame], int, int]:
    """Parse headers (no pixels). Returns the image frames, the DICOM file count and non-image count."""
    from pydicom.errors import InvalidDicomError

    frames: list[_Frame] = []
    n_dicom = n_nonimage = 0
    for f in files:
        try:
            ds = _dcmread(f, path, stop_before_pixels=True)
        except InvalidDicomError as err:
            if single:
                raise InputError("is not a DICOM file (no DICM preamble)", path) from err
            continue  # not DICOM: ignore other files in a folder or archive
        n_dicom += 1
        if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == _DICOMDIR_UID:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            n_nonimage += 1  # structured reports, presentation states ...
            continue
        image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
        if "LOCALIZER" in image_type and not single:
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            frames.extend(_multi_frame(ds, f, path))
        else:
            frames.append(_single_frame(ds, f, path))
    return frames, n_dicom, n_nonimage


def _pick_series(frames: list[_Frame], series: int | None, path: Path) -> list[_Frame]:
    """The frames of one series (by ``SeriesInstanceUID``), chosen by ``SeriesNumber`` if several."""
    groups: dict[str, list[_Frame]] = {}
    for fr in frames:
        groups.setdefault(fr.series, []).append(fr)

    def label(g: list[_Frame]) -> str:
        number = g[0].series_number if g[0].series_number is not None else "?"
        return f"series {number} ({len(g)} slices)"

    if series is not None:
        chosen = [g for g in groups.values() if g[0].series_number == int(series)]
        if not chosen:
            known = sorted({fr.series_number for fr in frames if fr.series_number is not None})
            raise InputError(
                f"no DICOM series number {series}; found series {', '.join(map(str, known)) or 'none'}", path
            )
        if len(chosen) > 1:
            raise InputError(
                f"{len(chosen)} different DICOM series have series number {series}; split them into folders", path
            )
        return chosen[0]
    if len(groups) > 1:
        listing = ", ".join(label(g) for g in sorted(groups.values(), key=len, reverse=True))
        raise InputError(f"holds {len(groups)} DICOM series: {listing}; pass dicom_series=<number> to pick one", path)
    return frames


def _assemble(frames: list[_Frame], path: Path) -> tuple[list[_Frame], np.ndarray, dict[str, Any]]:
    """Sort frames by position and build the RAS affine. Returns (sorted frames, affine, info)."""
    sizes = sorted({fr.size for fr in frames})
    if len(sizes) > 1:
        shown = " and ".join(f"{r}x{c}" for r, c in sizes[:3])
        raise InputError(f"slices have inconsistent sizes ({shown}); expected one size per series", path)
    ori = frames[0].orientation
    for fr in frames:
        if not np.allclose(fr.orientation, ori, atol=1e-3):
            raise InputError(f"slices have different orientations ({fr.name}); expected one orientation", path)
    spacings = sorted({fr.pixel_spacing for fr in frames})
    if not np.allclose(spacings[0], spacings[-1], atol=1e-4):
        raise InputError(f"slices have different PixelSpacing ({spacings[0]} and {spacings[-1]} mm)", path)
    row, col = ori[:3], ori[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise InputError(f"ImageOrientationPatient {ori.tolist()} is not two orthogonal unit vectors", path)
    normal = np.cross(row, col)
    frames = sorted(frames, key=lambda fr: float(fr.position @ normal))
    proj = np.array([fr.position @ normal for fr in frames])
    n = len(frames)
    dr, dc = frames[0].pixel_spacing
    info: dict[str, Any] = {}
    if n > 1:
        gaps = np.diff(proj)
        if gaps.min() < 1e-3:
            raise InputError(
                f"{int((gaps < 1e-3).sum()) + 1} slices share a position; "
                "the series mixes several acquisitions or echoes",
                path,
            )
        med = float(np.median(gaps))
        if np.abs(gaps - med).max() > max(0.05 * med, 1e-2):
            raise InputError(
                f"slice spacing is irregular (gaps {gaps.min():.3g} to {gaps.max():.3g} mm); are slices missing?", path
            )
        slice_vec = (frames[-1].position - frames[0].position) / (n - 1)
        tilt = np.degrees(np.arccos(min(1.0, abs(slice_vec @ normal) / np.linalg.norm(slice_vec))))
        info["gantry_tilt_deg"] = float(round(tilt, 3))
    else:
        step = frames[0].spacing_between or frames[0].thickness or 1.0
        slice_vec = normal * step
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = slice_vec
    lps[:3, 3] = frames[0].position
    info["slice_thickness"] = frames[0].thickness
    info["series_number"] = frames[0].series_number
    info["n_slices"] = n
    info["source_dtype"] = frames[0].info.get("source_dtype")
    return frames, LPS_TO_RAS @ lps, info


def read_dicom(path: str | Path, *, series: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Read a DICOM CT from a folder, a ``.zip`` archive or a single (possibly multi-frame) file.

    Args:
        path: folder (searched recursively), ``.zip`` archive, or one DICOM file.
        series: ``SeriesNumber`` to read when the folder/archive holds several series.

    Returns:
        ``(hu, valid, affine, info)``: ``hu`` float32 ``(I, J, K)`` = (column, row, slice) in HU;
        ``valid`` bool, False for ``PixelPaddingValue`` and values below -1500 HU (outside the
        reconstruction circle); ``affine`` the 4x4 RAS voxel-to-world matrix (see module docstring);
        ``info`` non-identifying extras (``slice_thickness``, ``series_number``, ``n_slices`` ...).

    Raises:
        InputError: empty/corrupt file or archive, no DICOM inside, no pixel data, inconsistent slice
            sizes or orientations, duplicate or irregular slice positions, over the pixel limit
            (checked from the headers before any pixel is decoded), NaN/Inf.
    """
    path = Path(path)
    zf = None
    if not path.exists():
        raise InputError("file or folder not found", path)
    if path.is_dir():
        files, where, single = _folder_files(path), "folder", False
    elif path.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", path)
    elif path.name.lower().endswith(".zip"):
        files, zf = _zip_files(path)
        where, single = "archive", False
    else:
        files, where, single = [_File(path.name, lambda: str(path))], "file", True
    try:
        frames, n_dicom, n_nonimage = _frames_of(files, path, single)
        if not frames:
            if n_dicom == 0:
                raise InputError(f"no DICOM files in the {where}", path)
            if single:
                raise InputError("DICOM has no pixel data (not an image)", path)
            raise InputError(f"the {where} holds {n_dicom} DICOM files but none is an image with pixel data", path)
        frames = _pick_series(frames, series, path)
        frames, affine, info = _assemble(frames, path)
        rows, cols = frames[0].size
        check_pixel_limit((cols, rows, len(frames)), path)
        hu = np.empty((cols, rows, len(frames)), dtype=np.float32)
        valid = np.empty((cols, rows, len(frames)), dtype=bool)
        for k, fr in enumerate(frames):
            h, v = fr.load()
            hu[:, :, k] = h.T
            valid[:, :, k] = v.T
    finally:
        if zf is not None:
            zf.close()
    check_finite(hu, "image", path)
    if single and len(frames) == 1:
        warnings.warn(f"{path.name}: read one slice; pass the series folder or a .zip to read the volume", stacklevel=2)
    return hu, valid, affine, info
