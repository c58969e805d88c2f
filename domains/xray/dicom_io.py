"""DICOM radiographs (CR / DX) through pydicom, into the ``[0, 1]`` display range.

The display pipeline of DICOM PS3.4 (grayscale standard display), in order:

1. **Pixel padding** (``PixelPaddingValue`` / ``PixelPaddingRangeLimit``): those pixels (outside the
   detector / collimated out) become ``valid = False`` and 0.
2. **Modality LUT**: ``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence
   (:func:`pydicom.pixels.apply_modality_lut`).
3. **VOI LUT**: a VOI LUT Sequence (preferred) or ``WindowCenter``/``WindowWidth`` with the
   ``VOILUTFunction`` (LINEAR, LINEAR_EXACT, SIGMOID), through pydicom (:func:`pydicom.pixels.apply_voi`,
   :func:`pydicom.pixels.apply_windowing`); the first window is used when several are listed. The LUT's /
   window's output range is mapped to ``[0, 1]``. Without VOI (or with ``window=False``) the valid pixels'
   min..max is stretched to ``[0, 1]``.
4. **MONOCHROME1** (minimum = white) is inverted, ``x -> 1 - x``, so that 1 is always white (dense).
   A DX ``PresentationLUTShape`` of INVERSE accompanies MONOCHROME1 by definition and is not applied twice.

Spacing comes from ``PixelSpacing`` (at the patient) or else ``ImagerPixelSpacing`` (at the detector;
uncorrected for magnification), as ``(row, column)`` mm in image axis order.

Privacy: only the tags below are parsed (``dcmread(specific_tags=...)``), so patient and study fields
(name, ID, birth date, accession, UIDs ...) are never decoded, printed, logged or put in ``meta``.
Multi-frame files and colour DICOMs other than RGB/YBR are rejected; compressed transfer syntaxes decode
when pydicom has a decoder for them (RLE always; JPEG needs ``pylibjpeg`` or GDCM installed).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.errors import InputError
from unimae.domains.base import check_pixel_limit
from unimae.domains.xray.image_io import luminance
from unimae.domains.xray.sniff import check_file, format_hint, sniff_format

__all__ = ["read_dicom", "DICOM_TAGS"]

#: The only DICOM attributes the reader parses (none identifies the patient).
DICOM_TAGS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "Modality",
    "ViewPosition",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "PresentationLUTShape",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _dcmread(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    fmt = sniff_format(path)
    if fmt != "dicom":
        what = format_hint(fmt, "no 'DICM' marker at byte 128")
        raise InputError(f"not a DICOM file ({what})", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd values; the messages may quote them
            return pydicom.dcmread(path, specific_tags=list(DICOM_TAGS))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise InputError(f"truncated or corrupt DICOM ({type(err).__name__}: {err})", path) from err
    except Exception as err:  # struct.error and friends from a malformed header
        raise InputError(f"truncated or corrupt DICOM ({type(err).__name__})", path) from err


def _syntax_name(ds) -> str | None:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return None if syntax is None else str(getattr(syntax, "name", "") or syntax)


def _spacing(ds) -> tuple[tuple[float, float], str]:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is None:
            continue
        try:
            sp = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if len(sp) == 2 and all(np.isfinite(s) and s > 0 for s in sp):
            return (sp[0], sp[1]), key
    return (1.0, 1.0), "none"


def _padding_valid(raw: np.ndarray, ds) -> np.ndarray:
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return np.ones(raw.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit")
    lo, hi = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
    return ~((raw >= lo) & (raw <= hi))


def _voi(arr: np.ndarray, ds, path: Path) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Apply the VOI LUT or window; return the ``[0, 1]`` image and a description (None if no VOI)."""
    from pydicom.pixels import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence")
    has_lut = bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        if has_lut:
            descriptor = [int(v) for v in seq[0].LUTDescriptor]
            entries, first = descriptor[0] or 2**16, descriptor[1]
            if np.issubdtype(arr.dtype, np.floating):
                arr = np.rint(arr).astype(np.int64)  # LUT input values are integers
            probe = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds)
            lo, hi = float(probe.min()), float(probe.max())
            out = apply_voi(arr, ds).astype(np.float64)
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
            return out, {"source": "VOILUTSequence", "entries": int(entries), "first_mapped": int(first)}
        if has_window:
            with np.errstate(over="ignore"):
                y0, y1 = apply_windowing(np.array([-1e30, 1e30]), ds)  # the output range the window maps to
            out = (apply_windowing(arr, ds) - y0) / (y1 - y0)
            center = ds["WindowCenter"].value
            width = ds["WindowWidth"].value
            center = float(center[0] if ds["WindowCenter"].VM > 1 else center)
            width = float(width[0] if ds["WindowWidth"].VM > 1 else width)
            func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            return out, {"source": "WindowCenter/WindowWidth", "center": center, "width": width, "function": func}
    except (ValueError, NotImplementedError, AttributeError, TypeError, IndexError) as err:
        raise InputError(f"invalid VOI LUT / window in DICOM ({err})", path) from err
    return arr, None


def read_dicom(path: str | Path, *, window: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one DICOM radiograph.

    Args:
        path: a single-frame CR/DX (or secondary-capture) DICOM file.
        window: apply the file's VOI LUT / window when present; False stretches min..max instead.

    Returns:
        ``(image, valid, info)``: float32 ``(H, W)`` in ``[0, 1]`` (1 = white / dense), bool ``(H, W)``
        (False on padding pixels), and reader metadata (``modality``, ``photometric``, ``spacing``,
        ``spacing_source``, ``window``, ``bits_stored``, ``view_position`` ...). No patient fields.
    """
    from pydicom.pixels import apply_modality_lut

    path = check_file(path)
    ds = _dcmread(path)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InputError(
            "DICOM has no pixel data (a report, presentation state or header-only file, or truncated)", path
        )
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise InputError("DICOM has pixel data but no Rows/Columns", path)
    check_pixel_limit((int(rows), int(cols)), path)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise InputError(f"multi-frame DICOM ({frames} frames); give a single radiograph", path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel") or 1)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = np.asarray(ds.pixel_array)
    except Exception as err:  # missing codec, short pixel data, bad header values ...
        name = _syntax_name(ds)
        raise InputError(f"cannot decode DICOM pixel data; truncated or corrupt file? ({name}: {err})", path) from err
    if raw.shape[:2] != (int(rows), int(cols)):
        raise InputError(f"DICOM pixel data has shape {raw.shape}, expected {int(rows)}x{int(cols)}", path)

    info: dict[str, Any] = {
        "photometric": photometric,
        "source_modality": str(ds.get("Modality", "") or "") or None,
        "view_position": str(ds.get("ViewPosition", "") or "") or None,
        "bits_stored": int(ds.get("BitsStored") or raw.dtype.itemsize * 8),
        "dtype": str(raw.dtype),
        "transfer_syntax": _syntax_name(ds),
    }
    info["spacing"], info["spacing_source"] = _spacing(ds)
    info["spacing_unit"] = "pixel" if info["spacing_source"] == "none" else "mm"

    if samples == 3 or raw.ndim == 3:  # RGB / YBR secondary capture (pydicom converts YBR to RGB)
        if raw.ndim != 3 or raw.shape[-1] != 3:
            raise InputError(f"unsupported DICOM colour layout {raw.shape} ({photometric})", path)
        top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
        image = luminance(raw) / top
        valid = np.ones(image.shape, dtype=bool)
        info.update(window=None, intensity_scale={"kind": "dtype", "max": top, "luminance": "ITU-R 601"})
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        valid = _padding_valid(raw, ds)
        try:
            values = apply_modality_lut(raw, ds)
        except Exception as err:
            raise InputError(f"invalid modality LUT / rescale in DICOM ({err})", path) from err
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise InputError("DICOM pixel values contain NaN or Inf (after rescale)", path)
        voi = None
        if window:
            values, voi = _voi(values, ds, path)
        if voi is None:
            values = values.astype(np.float64)
            inside = values[valid] if valid.any() else values
            lo, hi = float(inside.min()), float(inside.max())
            values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
            info["intensity_scale"] = {"kind": "minmax", "min": lo, "max": hi}
        else:
            info["intensity_scale"] = {"kind": "voi"}
        info["window"] = voi
        image = np.clip(values, 0.0, 1.0)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
    else:
        raise InputError(f"unsupported photometric interpretation {photometric!r} for a radiograph", path)

    if not np.isfinite(image).all():
        raise InputError("DICOM image contains NaN or Inf values", path)
    image = np.where(valid, image, 0.0).astype(np.float32)
    modality = str(ds.get("Modality", "") or "").upper()
    info["modality"] = "DX" if modality == "DX" else "CR"
    return image, valid, info
