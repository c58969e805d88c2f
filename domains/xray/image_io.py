"""PNG / JPEG radiographs (Pillow): 8 and 16 bits, grey, RGB, RGBA and palette all become one grey channel.

Quirks handled:

- 8-bit grey (``L``): divided by 255.
- 16-bit grey (``I;16``/``I;16B``/``I``): radiographs often keep 10-14 significant bits in a 16-bit PNG.
  The PNG ``sBIT`` chunk (significant bits) is honoured when present (Pillow ignores it, so it is parsed
  here); otherwise the image's own min..max is stretched to ``[0, 1]`` (the PadChest convention). Pass
  ``bits=`` to force a fixed range ``[0, 2**bits - 1]``.
- RGB / RGBA / palette / grey+alpha: ITU-R 601 luminance ``0.299 R + 0.587 G + 0.114 B`` (what Pillow's
  ``convert("L")`` uses, computed in float so a grey image stored as RGB reads exactly as the grey one);
  alpha is dropped, not composited (NIH ChestX-ray14 ships some images as opaque RGBA).
- EXIF orientation (JPEGs from phones or PACS exports) is applied, as every viewer does.
- The pixel limit is checked from the header before decoding; Pillow's decompression-bomb error becomes
  an :class:`InputError`; a truncated or corrupt file is an :class:`InputError`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.errors import InputError
from unimae.domains.base import check_pixel_limit
from unimae.domains.xray.sniff import check_file, format_hint, sniff_format

__all__ = ["read_image", "read_label_image", "png_significant_bits", "luminance"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_IMAGE_FORMATS = ("png", "jpeg", "gif", "bmp", "tiff")
_MODE_DTYPE = {"1": "bool", "I;16": "uint16", "I": "int32", "F": "float32"}  # stored dtype; others uint8


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of an ``(H, W, 3)`` array, as float64 in the input's units."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def png_significant_bits(path: str | Path) -> int | None:
    """The grey significant-bit count from a PNG's ``sBIT`` chunk, or None when absent (or not a PNG)."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):
                return None  # sBIT must precede the image data
            data = f.read(length)
            f.seek(4, 1)  # CRC
            if kind == b"sBIT" and data:
                return int(data[0])  # grey (and grey+alpha): first byte is the grey depth


def _open(path: Path, what: str):
    """Open with Pillow (lazy: header only), mapping every failure to a one-line :class:`InputError`."""
    from PIL import Image, UnidentifiedImageError

    fmt = sniff_format(path)
    if fmt not in _IMAGE_FORMATS:
        raise InputError(f"not a PNG/JPEG {what} ({format_hint(fmt, 'unrecognised content')})", path)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise InputError(f"image dimensions are over Pillow's decompression-bomb limit ({err})", path) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"corrupt {fmt.upper()} {what} ({err})", path) from err
    try:
        check_pixel_limit((im.height, im.width), path)
    except InputError:
        im.close()
        raise
    return im


def _load(im, path: Path, what: str) -> None:
    try:
        im.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error ... on bad data
        raise InputError(f"truncated or corrupt {(im.format or 'image')} {what} ({err})", path) from err


def read_image(path: str | Path, *, bits: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a PNG/JPEG radiograph as a float32 ``(H, W)`` array in ``[0, 1]`` plus reader metadata.

    Args:
        path: the image file.
        bits: significant bits of a 16-bit grey PNG (range ``[0, 2**bits - 1]``); None reads the ``sBIT``
            chunk and, when absent, stretches the image's min..max. Ignored for 8-bit and colour images.

    Returns:
        ``(image, info)`` with ``info`` holding ``format``, ``source_mode``, ``bit_depth``,
        ``intensity_scale`` (how stored values became ``[0, 1]``) and ``exif_transposed``.
    """
    from PIL import ImageOps

    path = check_file(path)
    im = _open(path, "image")
    with im:
        fmt, mode = im.format, im.mode
        _load(im, path, "image")
        orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
        exif_moved = orientation in (2, 3, 4, 5, 6, 7, 8)
        src = ImageOps.exif_transpose(im) if exif_moved else im
        dtype = _MODE_DTYPE.get(src.mode[:4], "uint8")
        image, scale, depth = _to_grey(src, path, bits)
    if not np.isfinite(image).all():
        raise InputError("image contains NaN or Inf values", path)
    info = {
        "format": fmt,
        "source_mode": mode,
        "bit_depth": depth,
        "dtype": dtype,
        "intensity_scale": scale,
        "exif_transposed": bool(exif_moved),
    }
    return image.astype(np.float32), info


def _to_grey(im, path: Path, bits: int | None) -> tuple[np.ndarray, dict[str, Any], int]:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float64), {"kind": "binary"}, 1
    if mode in ("L", "LA", "La"):
        arr = np.asarray(im if mode == "L" else im.getchannel(0), dtype=np.float64)
        return arr / 255.0, {"kind": "dtype", "max": 255}, 8
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return luminance(np.asarray(im)) / 255.0, {"kind": "dtype", "max": 255, "luminance": "ITU-R 601"}, 8
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return (
            luminance(np.asarray(im.convert("RGB"))) / 255.0,
            {"kind": "dtype", "max": 255, "luminance": "ITU-R 601"},
            8,
        )
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if bits is None:
            bits = png_significant_bits(path)
            source = "sBIT"
        else:
            source = "argument"
        if bits is not None:
            if not 1 <= int(bits) <= 16:
                raise InputError(f"bits must be between 1 and 16, got {bits}", path)
            top = float(2 ** int(bits) - 1)
            if arr.max() > top:
                raise InputError(f"values up to {arr.max():.0f} do not fit in {bits} significant bits", path)
            return arr / top, {"kind": "bits", "bits": int(bits), "max": top, "source": source}, 16
        lo, hi = float(arr.min()), float(arr.max())
        out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return out, {"kind": "minmax", "min": lo, "max": hi}, 16
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise InputError("image contains NaN or Inf values", path)
        lo, hi = float(arr.min()), float(arr.max())
        return ((arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)), {"kind": "minmax", "min": lo, "max": hi}, 32
    raise InputError(f"unsupported image mode {mode!r}", path)


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a mask/label PNG (or GIF/JPEG) as int64 ``(H, W)`` class indices.

    - a 0/255 (or 0/65535) binary mask becomes 0/1;
    - small integer label maps (0, 1, 2 ...) and palette images keep their indices;
    - an RGB(A) mask whose channels are equal is read as grey; a coloured mask is an error.
    """
    path = check_file(path)
    im = _open(path, "mask")
    with im:
        _load(im, path, "mask")
        mode = im.mode
        if mode == "P":
            arr = np.asarray(im)  # palette indices are the labels
        elif mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im)
        elif mode in ("LA", "PA"):
            arr = np.asarray(im.getchannel(0))
        elif mode in ("RGB", "RGBA", "RGBX"):
            rgb = np.asarray(im)[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
                raise InputError("colour mask: give a grey or palette label image (one class index per pixel)", path)
            arr = rgb[..., 0]
        else:
            raise InputError(f"unsupported mask mode {mode!r}", path)
    arr = np.asarray(arr).astype(np.int64)
    if arr.min() < 0:
        raise InputError("mask has negative labels", path)
    values = np.unique(arr)
    top = int(values.max())
    if len(values) <= 2 and top in (255, 65535):
        arr = (arr == top).astype(np.int64)  # a binary 0/255 mask
    return arr
