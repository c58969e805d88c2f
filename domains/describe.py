"""What UniMAE sees in a file (``unimae info FILE``): :func:`describe` and its text block.

The file is read with its domain plugin's ``read`` (the domain guessed by the registry's sniffers unless
named); the plugin's ``georeferenced`` and ``spacing_unit`` attributes say how to label its geometry.
Patient fields never reach the output.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import unimae.domains as _registry  # the package's public registry API (get_domain, guess_domain_name)
from unimae.core.errors import InputError
from unimae.domains.localdata import _params
from unimae.domains.sniff import has_dicom_magic, hidden, is_dicom_dir, looks_dicom, suffix

__all__ = ["describe", "format_description"]

_PATIENTISH = re.compile(r"patient|birth|accession|institution|physician|operator|referring|address", re.I)
_PIL_DTYPES = {"1": "bool", "L": "uint8", "LA": "uint8", "P": "uint8", "RGB": "uint8", "RGBA": "uint8",
               "CMYK": "uint8", "YCbCr": "uint8", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16",
               "I;16N": "uint16", "I": "int32", "F": "float32"}  # fmt: skip


def _is_dicom_source(path: Path) -> bool:
    if path.is_dir():
        return is_dicom_dir(path)
    return suffix(path) == ".zip" or looks_dicom(path)


def _stored_dtype(path: Path) -> str | None:
    """The sample type as stored in the file (header only), or None when it cannot be told cheaply."""
    ext = suffix(path)
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
            dcm = next((f for f in sorted(path.iterdir()) if f.is_file() and not hidden(f)
                        and (f.suffix.lower() in (".dcm", ".dicom") or has_dicom_magic(f))), None)  # fmt: skip
        elif ext in (".dcm", ".dicom") or has_dicom_magic(path):
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
    p = Path(path).expanduser()
    guessed = domain is None
    name = _registry.guess_domain_name(p) if guessed else str(domain)
    plugin = _registry.get_domain(name)
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
    elif plugin.georeferenced:
        unit = crs_unit or ("pixel" if crs is None else None)
    elif affine is not None or plugin.spacing_unit:
        unit = plugin.spacing_unit or "mm"
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


def _georeferenced(name: Any) -> bool:
    """Whether the named domain's files sit on a map grid (a CRS row and "resolution" in the text block)."""
    try:
        return bool(_registry.get_domain(str(name)).georeferenced)
    except InputError:
        return False


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
    geo = _georeferenced(d.get("domain"))
    if d.get("spacing") is not None:
        label = "resolution" if geo else "spacing"
        unit = f" {d['spacing_unit']}" if d.get("spacing_unit") else ""
        rows.append((label, " x ".join(_num(s) for s in d["spacing"]) + unit))
    if d.get("crs") is not None or geo:
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
