"""Reading GeoTIFFs (rasterio) into the data contract: bands, reflectance, nodata -> ``valid``, geometry.

:class:`GeoTiffReader` opens a file once, works out its bands and DN -> reflectance rule from the header
and then reads any window. ``read_geotiff`` reads one image (or one window) into a :class:`Sample`;
``read_class_map`` reads a label raster. Both raise a one-line :class:`InputError` for bad files.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from unimae.core.errors import InputError
from unimae.domains.base import Sample, check_pixel_limit
from unimae.domains.multispectral.bands import BandSet, resolve_bands
from unimae.domains.multispectral.windows import as_window, window_tuple

try:  # GDAL errors surface as CPLE_* exceptions (private module, present in rasterio 1.3/1.4)
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover
    CPLE_BaseError = RasterioError

__all__ = ["GeoTiffReader", "read_geotiff", "read_class_map", "GeoreferenceWarning"]

TIFF_SUFFIXES = (".tif", ".tiff")

_MAGIC: list[tuple[bytes, str]] = [
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"%PDF", "PDF"),
    (b"\x89HDF", "HDF5"),
    (b"CDF\x01", "netCDF"),
    (b"<", "XML/HTML text"),
]
_TAG_NAME_KEYS = ("name", "band_name", "bandname", "band", "common_name", "description", "long_name")
_TAG_WAVELENGTH_KEYS = ("wavelength", "center_wavelength", "centre_wavelength", "central_wavelength")
_TAG_ADD_OFFSET_KEYS = ("boa_add_offset", "radio_add_offset")


class GeoreferenceWarning(UserWarning):
    """A GeoTIFF without a CRS: it is read, and results are written without a CRS."""


def _is_local(path: str | Path) -> bool:
    s = str(path)
    return "://" not in s and not s.startswith("/vsi")


def sniff_format(path: Path) -> str | None:
    """The format named by a file's first bytes (``"TIFF"``, ``"PNG"`` ...), or None if unknown."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 4 and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return None


def check_file(path: str | Path, suffixes: Sequence[str] = TIFF_SUFFIXES, what: str = "GeoTIFF") -> None:
    """Raise :class:`InputError` for a missing, empty or wrong-format local file (by content, not name)."""
    if not _is_local(path):
        return
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", path)
    if p.is_dir():
        raise InputError(f"is a folder, not a {what}", path)
    if p.stat().st_size == 0:
        raise InputError(f"file is empty (0 bytes), not a {what}", path)
    if p.suffix.lower() in suffixes:
        kind = sniff_format(p)
        if kind != "TIFF":
            found = f"{kind} data" if kind else "unrecognised content"
            raise InputError(f"not a {what}: the file holds {found} behind a {p.suffix} extension", path)


def _root_message(err: BaseException) -> str:
    msgs = []
    e: BaseException | None = err
    while e is not None and len(msgs) < 5:
        m = str(e).strip()
        if m and "see previous exception" not in m.lower():
            msgs.append(m)
        e = e.__cause__ or e.__context__
    return msgs[-1] if msgs else type(err).__name__


@contextlib.contextmanager
def gdal_errors(path: str | Path, action: str = "read") -> Iterator[None]:
    """Turn rasterio/GDAL errors into a one-line :class:`InputError` naming the file."""
    try:
        yield
    except InputError:
        raise
    except (RasterioError, CPLE_BaseError) as err:
        detail = _root_message(err).replace(str(path), "").strip(" :")
        raise InputError(f"cannot {action} this GeoTIFF (truncated or corrupt?): {detail}", path) from err


def _band_labels(ds, indexes: Sequence[int]) -> tuple[list[list[str]], list[float | None], list[float]]:
    """Per band: candidate names (description + name-like tags), wavelength tag (µm), DN add-offset tag."""
    labels, wavelengths, add_offsets = [], [], []
    for i in indexes:
        cands = []
        desc = ds.descriptions[i - 1]
        if desc:
            cands.append(str(desc))
        tags = {str(k).lower(): v for k, v in ds.tags(i).items()}
        cands += [str(tags[k]) for k in _TAG_NAME_KEYS if tags.get(k)]
        labels.append(cands)
        wl = None
        for k in _TAG_WAVELENGTH_KEYS:
            if k in tags:
                with contextlib.suppress(ValueError):
                    wl = float(str(tags[k]).split()[0])
                    units = str(tags.get("wavelength_units", tags.get("units", ""))).lower()
                    if "nm" in units or "nanomet" in units or wl > 100:  # nanometres -> µm
                        wl /= 1000.0
                break
        wavelengths.append(wl)
        add = 0.0
        for k in _TAG_ADD_OFFSET_KEYS:
            if k in tags:
                with contextlib.suppress(ValueError):
                    add = float(tags[k])
                break
        add_offsets.append(add)
    return labels, wavelengths, add_offsets


def _per_band(value: float | Sequence[float], n: int, what: str, path) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        arr = np.repeat(arr, n)
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must be one finite number or {n} (one per band), got {value!r}", path)
    return arr


class GeoTiffReader:
    """An open GeoTIFF whose bands and reflectance rule are resolved once from the header.

    Parameters
    ----------
    path:   a GeoTIFF (local path, or any GDAL path such as ``/vsicurl/...``).
    bands:  a band preset name (``"sentinel2_l1c"``, ``"sentinel2_l2a"``, ``"eurosat"``, ``"landsat8"``,
            ``"landsat9"``, ``"rgb"``) or a list of band names, overriding what the file says.
    scale:  reflectance = ``DN * scale + offset``; one number or one per band. Overrides the file's
            scale and the default DN rule (``DN / 10000`` for Sentinel-2 integer data, ``DN * 2.75e-5 - 0.2``
            for Landsat C2 L2, ``/255`` for 8-bit). ``scale=1`` keeps the stored values.
    offset: overrides the offset (e.g. ``-0.1`` for Sentinel-2 processing baseline >= 04.00 files).

    Without ``scale``/``offset``: the file's own ``scales``/``offsets`` are applied when set, else the
    default DN rule for integer data (``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` band tags are honoured),
    else float data is taken as already in reflectance.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bands: str | Sequence[str] | None = None,
        scale: float | Sequence[float] | None = None,
        offset: float | Sequence[float] | None = None,
    ) -> None:
        self.path = path
        check_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with gdal_errors(path, "open"):
                self._ds = rasterio.open(path)
        try:
            self._setup(bands, scale, offset)
        except BaseException:
            self._ds.close()
            raise

    # -- header ----------------------------------------------------------------------------------
    def _setup(self, bands, scale, offset) -> None:
        ds, path = self._ds, self.path
        if ds.driver not in ("GTiff", "COG") and Path(str(path)).suffix.lower() in TIFF_SUFFIXES:
            raise InputError(f"not a GeoTIFF: GDAL reads it as {ds.driver}", path)
        if ds.count == 0 or ds.width == 0 or ds.height == 0:
            raise InputError(f"the image is empty ({ds.count} bands of {ds.height}x{ds.width})", path)
        dtype = np.dtype(ds.dtypes[0])
        if np.issubdtype(dtype, np.complexfloating):
            raise InputError(f"complex data ({dtype}) is not supported; expected real-valued bands", path)
        if len(set(ds.dtypes)) > 1:
            raise InputError(f"bands have mixed data types {sorted(set(ds.dtypes))}", path)
        interp = list(ds.colorinterp)
        self.indexes = [i + 1 for i in range(ds.count) if interp[i] != ColorInterp.alpha]
        if not self.indexes:
            raise InputError("the file has only an alpha band", path)
        self.dtype = str(dtype)
        labels, wls, add = _band_labels(ds, self.indexes)
        hint = " ".join([Path(str(path)).name] + [f"{k}={v}" for k, v in ds.tags().items()])
        self.bandset: BandSet = resolve_bands(
            len(self.indexes), labels=labels, wavelengths=wls, bands=bands, hint=hint, path=path
        )
        generic = all(re.fullmatch(r"\s*band[\s_]*\d+\s*", c, flags=re.I) for cands in labels for c in cands)
        if self.bandset.source == "band_count" and any(labels) and not generic:
            warnings.warn(
                f"{Path(str(path)).name}: band descriptions {[c[0] if c else None for c in labels]} are not known "
                f"band names; using band preset {self.bandset.preset!r}",
                UserWarning,
                stacklevel=3,
            )
        self._scaling(scale, offset, add)
        self._georef()
        self._needs_mask = any(
            MaskFlags.all_valid not in ds.mask_flag_enums[i - 1] for i in self.indexes
        ) or len(self.indexes) < ds.count

    def _scaling(self, scale, offset, add_offsets) -> None:
        ds, n = self._ds, len(self.indexes)
        f_scale = np.array([ds.scales[i - 1] for i in self.indexes], dtype=np.float64)
        f_offset = np.array([ds.offsets[i - 1] for i in self.indexes], dtype=np.float64)
        file_has = bool(np.any(f_scale != 1.0) or np.any(f_offset != 0.0))
        dn_scale, dn_offset = self.bandset.dn_rule(self.dtype)
        if scale is not None or offset is not None:
            if scale is not None:
                s = _per_band(scale, n, "scale", self.path)
            elif file_has:
                s = f_scale
            else:
                s = np.full(n, 1.0 if dn_scale is None else dn_scale)
            o = _per_band(offset, n, "offset", self.path) if offset is not None else (
                f_offset if (file_has and scale is None) else np.zeros(n)
            )
            source = "user"
        elif file_has:
            s, o, source = f_scale, f_offset, "file"
        elif dn_scale is not None:
            s = np.full(n, dn_scale)
            o = np.full(n, dn_offset) + np.asarray(add_offsets) * dn_scale
            source = "default"
        else:
            s, o, source = np.ones(n), np.zeros(n), "none"
        self.scale, self.offset, self.scale_source = s, o, source
        integer = np.issubdtype(np.dtype(self.dtype), np.integer)
        self.units = "DN" if (source == "none" and integer) else "reflectance"

    def _georef(self) -> None:
        ds = self._ds
        self.crs = ds.crs.to_wkt() if ds.crs else None
        self.crs_name = ds.crs.to_string() if ds.crs else None
        t = ds.transform
        gcps, gcp_crs = ds.gcps
        self.gcps = [(g.row, g.col, g.x, g.y, g.z or 0.0) for g in gcps] if gcps else None
        self.gcps_crs = gcp_crs.to_wkt() if (gcps and gcp_crs) else None
        self.transform = None if (ds.crs is None and t.is_identity) else tuple(float(v) for v in t[:6])
        if self.crs is None and self.gcps is None:
            warnings.warn(
                f"{Path(str(self.path)).name}: no georeference (no CRS); reading in pixel coordinates, "
                "results will be written without a CRS",
                GeoreferenceWarning,
                stacklevel=4,
            )
        if self.transform is not None:
            a, b, _, d, e, _ = self.transform
            self.spacing = (math.hypot(b, e), math.hypot(a, d))
            if ds.crs is None:
                self.spacing_units = None
            elif ds.crs.is_geographic:
                self.spacing_units = "degree"
            else:
                self.spacing_units = (ds.crs.linear_units or "metre").replace("meter", "metre")
        else:
            self.spacing, self.spacing_units = (1.0, 1.0), "pixel"
        self.nodata = None if ds.nodata is None else float(ds.nodata)

    # -- properties ------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return int(self._ds.height)

    @property
    def width(self) -> int:
        return int(self._ds.width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def count(self) -> int:
        return len(self.indexes)

    @property
    def channels(self) -> list[dict]:
        return self.bandset.channels

    @property
    def may_be_invalid(self) -> bool:
        """Some pixels may be nodata (a mask, a nodata value, or float samples that may be NaN)."""
        return bool(self._needs_mask) or np.issubdtype(np.dtype(self.dtype), np.floating)

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> GeoTiffReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------
    def read_array(
        self, window: Window | Sequence[int] | None = None, *, allow_empty: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reflectance ``(C, h, w)`` float32 (0 where invalid) and ``valid`` ``(h, w)`` bool for a window.

        A pixel is invalid when any band is nodata, masked (internal mask or alpha) or NaN. Inf raises;
        an all-invalid window raises unless ``allow_empty``.
        """
        path = self.path
        if window is None:
            check_pixel_limit(self.shape, path)
            win = None
        else:
            win = as_window(window, self.height, self.width, path)
            check_pixel_limit((int(win.height), int(win.width)), path)
        with gdal_errors(path, "read"):
            raw = self._ds.read(self.indexes, window=win)
            masks = self._ds.read_masks(self.indexes, window=win) if self._needs_mask else None
        valid = np.ones(raw.shape[1:], dtype=bool) if masks is None else np.all(masks != 0, axis=0)
        if np.issubdtype(raw.dtype, np.floating):
            inf = np.isinf(raw)
            if inf.any() and (inf & valid[None]).any():
                raise InputError("the image contains Inf values", path)
            valid &= np.all(np.isfinite(raw), axis=0)
        if not valid.any() and not allow_empty:
            where = "every pixel" if win is None else f"every pixel of window {window_tuple(win)}"
            nod = f" (nodata={self.nodata:g})" if self.nodata is not None else ""
            raise InputError(f"{where} is nodata or NaN{nod}; nothing to read", path)
        data = raw.astype(np.float32, copy=True)
        if self.scale_source != "none" and (np.any(self.scale != 1.0) or np.any(self.offset != 0.0)):
            data *= self.scale.astype(np.float32)[:, None, None]
            data += self.offset.astype(np.float32)[:, None, None]
        data[:, ~valid] = 0.0
        return data, valid

    def meta(self, window: Window | Sequence[int] | None = None) -> dict[str, Any]:
        """The data-contract ``meta`` (without ``valid``) for the whole file or a window of it."""
        win = None if window is None else as_window(window, self.height, self.width, self.path)
        transform = self.transform
        if win is not None and transform is not None:
            a, b, c, d, e, f = transform
            r, q = float(win.row_off), float(win.col_off)
            transform = (a, b, c + a * q + b * r, d, e, f + d * q + e * r)
        gcps = self.gcps
        if win is not None and gcps is not None:
            gcps = [(r - win.row_off, c - win.col_off, x, y, z) for r, c, x, y, z in gcps]
        bs = self.bandset
        return {
            "spatial_dims": 2,
            "channels": bs.channels,
            "spacing": tuple(float(s) for s in self.spacing),
            "spacing_units": self.spacing_units,
            "affine": None,
            "crs": self.crs,
            "crs_name": self.crs_name,
            "transform": transform,
            "gcps": gcps,
            "gcps_crs": self.gcps_crs,
            "nodata": self.nodata,
            "modality": bs.modality or "multispectral",
            "path": str(self.path),
            "source_shape": self.shape,
            "source_transform": self.transform,
            "window": None if win is None else window_tuple(win),
            "dtype": self.dtype,
            "band_preset": bs.preset,
            "band_source": bs.source,
            "band_stats_table": bs.stats,
            "scale": [float(v) for v in self.scale],
            "offset": [float(v) for v in self.offset],
            "scale_source": self.scale_source,
            "units": self.units,
        }

    def read(self, window: Window | Sequence[int] | None = None, *, allow_empty: bool = False) -> Sample:
        """The whole image (or a window) as a :class:`Sample` in source geometry (reflectance units)."""
        data, valid = self.read_array(window, allow_empty=allow_empty)
        meta = self.meta(window)
        meta["valid"] = torch.from_numpy(valid)
        return Sample(image=torch.from_numpy(data), meta=meta)


def read_geotiff(
    path: str | Path,
    *,
    bands: str | Sequence[str] | None = None,
    window: Window | Sequence[int] | None = None,
    scale: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
    allow_empty: bool = False,
) -> Sample:
    """Read a GeoTIFF (or a ``window`` of it, ``(row_off, col_off, height, width)``) as reflectance into a
    :class:`Sample`; see :class:`GeoTiffReader`.

    ``bands``: preset name or band names (else from band descriptions/tags, else by band count).
    ``scale``/``offset``: reflectance = DN * scale + offset, overriding the file and default rules.
    ``allow_empty``: return an all-invalid window instead of raising (for streamed tiling).
    """
    with GeoTiffReader(path, bands=bands, scale=scale, offset=offset) as reader:
        return reader.read(window, allow_empty=allow_empty)


# --------------------------------------------------------------------------------------------------
# class maps
# --------------------------------------------------------------------------------------------------


def _read_image_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read the mask image (corrupt or not an image): {err}", path) from err
    if arr.ndim == 3:
        if mode in ("RGBA", "LA"):
            arr = arr[..., :-1]
        if not np.all(arr == arr[..., :1]):
            raise InputError(f"mask is a colour ({mode}) image; expected one channel of class indices", path)
        arr = arr[..., 0]
    return arr


def read_class_map(path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
    """Read a class-map GeoTIFF (one band) or PNG/GIF into an int64 ``(H, W)`` tensor.

    When ``like`` is a sample read from a window of a scene and the class map covers the whole scene,
    the same window is read. The spatial shape must match ``like`` (else :class:`InputError`); a
    different georeference gives a warning.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    check_file(path, what="GeoTIFF class map" if suffix in TIFF_SUFFIXES else "mask image")
    if suffix in (".png", ".gif", ".bmp", ".jpg", ".jpeg"):
        arr = _read_image_mask(p)
        if like is not None and like.meta.get("window") is not None and arr.shape == tuple(like.meta["source_shape"]):
            r, c, h, w = like.meta["window"]
            arr = arr[r : r + h, c : c + w]
        transform = crs = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with gdal_errors(path, "open"), rasterio.open(path) as ds:
                if ds.count != 1:
                    raise InputError(f"a class map must have 1 band, this file has {ds.count}", path)
                win = None
                if (
                    like is not None
                    and like.meta.get("window") is not None
                    and (ds.height, ds.width) == tuple(like.meta["source_shape"])
                ):
                    r, c, h, w = like.meta["window"]
                    win = Window(c, r, w, h)
                check_pixel_limit((ds.height, ds.width) if win is None else (win.height, win.width), path)
                with gdal_errors(path, "read"):
                    arr = ds.read(1, window=win)
                    transform = ds.window_transform(win) if win is not None else ds.transform
                crs = ds.crs
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("class map contains NaN or Inf values", path)
        if not np.all(arr == np.round(arr)):
            raise InputError("class map holds non-integer values; expected class indices", path)
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise InputError(f"class map has unsupported data type {arr.dtype}", path)
    if like is not None:
        shape = tuple(like.spatial_shape)
        if tuple(arr.shape) != shape:
            raise InputError(
                f"mask is {arr.shape[0]}x{arr.shape[1]} but the image is {shape[0]}x{shape[1]}", path
            )
        lt = like.meta.get("transform")
        if crs is not None and lt is not None and transform is not None:
            if not np.allclose(tuple(transform)[:6], lt, rtol=0, atol=1e-6 * max(1.0, abs(lt[0]))):
                warnings.warn(f"{p.name}: the mask's geotransform differs from the image's", UserWarning, stacklevel=2)
    return torch.from_numpy(arr.astype(np.int64))
