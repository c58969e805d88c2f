"""Writing results back onto the source grid as compressed GeoTIFFs, atomically.

:class:`GeoTiffWriter` streams windows into a GeoTIFF on a given grid (CRS, transform, nodata) so a
scene never has to be held in memory; :func:`write_geotiff` writes a whole array in the geometry of a
sample's ``meta``. Both write to a temporary file that is renamed on success.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path
from unimae.domains.multispectral.windows import as_window

__all__ = ["GeoTiffWriter", "write_geotiff", "result_dtype"]


def _crs(value: Any) -> CRS | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, CRS) else CRS.from_user_input(value)


def _gcps(meta: dict[str, Any]) -> list[GroundControlPoint] | None:
    gcps = meta.get("gcps")
    if not gcps:
        return None
    return [GroundControlPoint(row=r, col=c, x=x, y=y, z=z) for r, c, x, y, z in gcps]


class GeoTiffWriter:
    """A GeoTIFF on a fixed grid, written window by window (a context manager).

    Parameters
    ----------
    path:        output file; written as a temporary file next to it and renamed when the ``with``
                 block ends without error (on error the temporary file is removed, ``path`` untouched).
    height, width: grid size in pixels.
    count:       number of bands.
    dtype:       numpy/GDAL data type name (``"uint8"``, ``"float32"`` ...).
    crs:         CRS (WKT, ``"EPSG:..."`` or :class:`rasterio.crs.CRS`) or None for no CRS.
    transform:   6-tuple ``(a, b, c, d, e, f)`` or :class:`affine.Affine`, or None.
    nodata:      nodata value or None.
    descriptions: optional band descriptions (e.g. band or class names).
    gcps:        ground control points ``(row, col, x, y, z)`` used when there is no transform.
    gcps_crs:    the CRS of ``gcps``.
    tile:        internal tile size (a multiple of 16).
    compress:    GDAL compression (``"deflate"``, ``"lzw"``, ``"zstd"`` or None).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int,
        width: int,
        count: int = 1,
        dtype: str = "float32",
        crs: Any = None,
        transform: Sequence[float] | Affine | None = None,
        nodata: float | None = None,
        descriptions: Sequence[str | None] | None = None,
        gcps: Sequence[Sequence[float]] | None = None,
        gcps_crs: Any = None,
        tile: int = 256,
        compress: str | None = "deflate",
    ) -> None:
        if tile % 16:
            raise ValueError(f"tile must be a multiple of 16, got {tile}")
        if descriptions is not None and len(descriptions) != count:
            raise ValueError(f"{len(descriptions)} descriptions for {count} bands")
        self.path = Path(path)
        self.height, self.width, self.count = int(height), int(width), int(count)
        self.dtype = np.dtype(dtype).name
        self.crs = _crs(crs)
        self.transform = None if transform is None else Affine(*tuple(transform)[:6])
        self.nodata = nodata
        self.descriptions = None if descriptions is None else list(descriptions)
        self.gcps = _gcps({"gcps": gcps})
        self.gcps_crs = _crs(gcps_crs)
        self.tile = int(tile)
        self.compress = compress
        self._stack: contextlib.ExitStack | None = None
        self._ds = None

    @classmethod
    def like(
        cls,
        source: str | Path | dict[str, Any],
        path: str | Path,
        *,
        count: int = 1,
        dtype: str = "float32",
        nodata: float | None = None,
        descriptions: Sequence[str | None] | None = None,
        tile: int = 256,
        compress: str | None = "deflate",
    ) -> GeoTiffWriter:
        """A writer on the grid of ``source``: a GeoTIFF path (its full grid) or a sample ``meta``
        (the grid of that sample: its ``valid`` shape, ``transform`` and ``crs``)."""
        if isinstance(source, dict):
            valid = source.get("valid")
            shape = tuple(valid.shape) if valid is not None else tuple(source["source_shape"])
            return cls(
                path, height=shape[0], width=shape[1], count=count, dtype=dtype, crs=source.get("crs"),
                transform=source.get("transform"), nodata=nodata, descriptions=descriptions,
                gcps=source.get("gcps") if source.get("transform") is None else None,
                gcps_crs=source.get("gcps_crs"), tile=tile, compress=compress,
            )
        from unimae.domains.multispectral.reader import check_file, gdal_errors

        check_file(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with gdal_errors(source, "open"), rasterio.open(source) as ds:
                transform = None if (ds.crs is None and ds.transform.is_identity) else ds.transform
                gcps, gcps_crs = ds.gcps
                return cls(
                    path, height=ds.height, width=ds.width, count=count, dtype=dtype, crs=ds.crs,
                    transform=transform, nodata=nodata, descriptions=descriptions,
                    gcps=[(g.row, g.col, g.x, g.y, g.z or 0.0) for g in gcps] if (gcps and transform is None) else None,
                    gcps_crs=gcps_crs, tile=tile, compress=compress,
                )

    def profile(self) -> dict[str, Any]:
        """The rasterio creation profile."""
        prof: dict[str, Any] = {
            "driver": "GTiff",
            "height": self.height,
            "width": self.width,
            "count": self.count,
            "dtype": self.dtype,
            "crs": self.crs,
            "nodata": self.nodata,
            "tiled": True,
            "blockxsize": self.tile,
            "blockysize": self.tile,
            "BIGTIFF": "IF_SAFER",
        }
        if self.transform is not None:
            prof["transform"] = self.transform
        elif self.gcps:
            prof["gcps"] = self.gcps
            prof["crs"] = self.gcps_crs
        if self.compress:
            prof["compress"] = self.compress
            prof["predictor"] = 3 if np.issubdtype(np.dtype(self.dtype), np.floating) else 2
        return prof

    def __enter__(self) -> GeoTiffWriter:
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(tmp, "w", **self.profile())
            if self.descriptions is not None:
                for i, d in enumerate(self.descriptions, start=1):
                    if d:
                        self._ds.set_band_description(i, str(d))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def write(self, array: Any, window: Window | Sequence[int] | None = None) -> None:
        """Write ``array`` (``(count, h, w)``, or ``(h, w)`` for one band) at ``window`` (whole grid if None)."""
        if self._ds is None:
            raise RuntimeError("GeoTiffWriter.write() outside its `with` block")
        arr = _as_numpy(array)
        if arr.ndim == 2:
            arr = arr[None]
        win = Window(0, 0, self.width, self.height) if window is None else as_window(window, self.height, self.width)
        expected = (self.count, int(win.height), int(win.width))
        if arr.shape != expected:
            raise ValueError(f"array shape {arr.shape} does not fit the window: expected {expected}")
        self._ds.write(arr.astype(self.dtype, copy=False), window=win)

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        try:
            if self._ds is not None:
                self._ds.close()
        finally:
            self._ds = None
            if stack is not None:
                stack.__exit__(exc_type, exc, tb)
        return False


def _as_numpy(array: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(array, torch.Tensor):
            return array.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(array)


def _fits(value: float, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return bool(np.isnan(value) or abs(value) <= np.finfo(dtype).max)
    if not float(value).is_integer():
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def result_dtype(arr: np.ndarray, extra: float | None = None) -> np.dtype:
    """The smallest common GeoTIFF data type for ``arr`` (and an ``extra`` value such as nodata).

    Booleans -> uint8; integers -> uint8/uint16/int16/int32 (int64 past that); floats -> float32.
    """
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return np.dtype(np.float32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"cannot write data of type {arr.dtype} as a GeoTIFF")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if extra is not None and float(extra).is_integer():
        lo, hi = min(lo, int(extra)), max(hi, int(extra))
    for dt in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _free_nodata(dtype: np.dtype, used: np.ndarray) -> float:
    if np.issubdtype(dtype, np.floating):
        return float("nan")
    info = np.iinfo(dtype)
    for cand in (info.max, info.min, -1, 0):
        if info.min <= cand <= info.max and not np.any(used == cand):
            return float(cand)
    raise InputError("no free value to use as nodata; pass nodata=")


def write_geotiff(
    array: Any,
    meta: dict[str, Any],
    path: str | Path,
    *,
    nodata: float | None = None,
    descriptions: Sequence[str | None] | None = None,
    compress: str | None = "deflate",
) -> Path:
    """Write ``array`` (``(H, W)`` or ``(C, H, W)``) as a GeoTIFF in the geometry of ``meta``.

    The grid is ``meta['crs']``/``meta['transform']`` (none when the source had none) and the shape must
    equal ``meta['valid']``'s. Pixels where ``valid`` is False are written as nodata: ``nodata`` if given,
    else the source's ``meta['nodata']`` when the output type can hold it and no valid result pixel
    takes that value (a class map where 0 is a class cannot use nodata 0), else a free value (the dtype
    maximum for integers, NaN for floats) with a warning. Booleans and int64 class maps are stored in
    the smallest integer type that holds them. Returns the path.
    """
    path = Path(path)
    arr = _as_numpy(array)
    if arr.ndim not in (2, 3):
        raise InputError(f"expected an (H, W) or (C, H, W) array to write, got shape {arr.shape}", path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    valid = meta.get("valid")
    if valid is not None:
        valid = _as_numpy(valid).astype(bool)
        grid = valid.shape
    else:
        grid = tuple(meta.get("source_shape") or arr.shape[1:])
    if tuple(arr.shape[1:]) != tuple(grid):
        raise InputError(f"result is {arr.shape[1]}x{arr.shape[2]} but the image grid is {grid[0]}x{grid[1]}", path)
    if np.issubdtype(arr.dtype, np.floating) and np.isinf(arr).any():
        raise InputError("result contains Inf values", path)
    invalid = None if valid is None else ~valid
    if invalid is not None and not invalid.any():
        invalid = None
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        nan = np.isnan(arr).any(axis=0)
        invalid = nan if invalid is None else (invalid | nan)
    used = arr if invalid is None else arr[:, ~invalid]
    src = meta.get("nodata")
    if nodata is not None:
        dtype = result_dtype(arr, nodata)
        if not _fits(nodata, dtype):
            raise InputError(f"nodata={nodata!r} cannot be stored with data of type {dtype}", path)
        nd: float | None = float(nodata)
    elif src is None:
        dtype = result_dtype(arr)
        nd = None if invalid is None else _free_nodata(dtype, used)
    elif np.isnan(src) and np.issubdtype(arr.dtype, np.floating):
        dtype, nd = np.dtype(np.float32), float("nan")
    else:
        dtype = result_dtype(arr, None if np.isnan(src) else src)
        if not np.isnan(src) and _fits(src, dtype) and not np.any(used == src):
            nd = float(src)
        else:
            dtype = result_dtype(arr)
            nd = _free_nodata(dtype, used)
            warnings.warn(
                f"{path.name}: the source nodata {src:g} cannot mark invalid pixels of this result "
                f"(it is a valid result value or does not fit {dtype}); writing nodata={nd:g} instead",
                UserWarning,
                stacklevel=2,
            )
    out = arr.astype(dtype, copy=True)
    if invalid is not None:
        out[:, invalid] = nd if nd is not None else 0
    writer = GeoTiffWriter(
        path, height=out.shape[1], width=out.shape[2], count=out.shape[0], dtype=dtype.name,
        crs=meta.get("crs"), transform=meta.get("transform"), nodata=nd, descriptions=descriptions,
        gcps=meta.get("gcps") if meta.get("transform") is None else None, gcps_crs=meta.get("gcps_crs"),
        compress=compress,
    )
    with writer:
        writer.write(out)
    return path
