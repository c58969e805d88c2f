"""Read fundus photographs and their mask files into the data contract.

Pillow decodes JPEG, PNG, TIFF, BMP and GIF. Pillow silently truncates 16-bit *colour* PNG/TIFF to
8 bits, so those (detected from the decoder's raw mode before any pixel is decoded) go through
OpenCV's ``imdecode`` instead and keep their full precision.

Quirks handled, each with a one-line :class:`~unimae.core.errors.InputError` where the file is bad:

* empty, truncated or corrupt files; a different format behind a known extension (the content is
  sniffed and named, e.g. "gzip data" or "DICOM");
* the pixel limit (:func:`~unimae.domains.base.check_pixel_limit`) checked from the header before
  decoding, and Pillow's own ``DecompressionBombError``;
* grey (``L``, ``I;16``, ``I``, ``F``) images replicated to 3 channels with a warning; ``RGBA``/``LA``
  drop alpha; palette and CMYK/YCbCr images converted to RGB; 16-bit images scaled by 65535;
  float TIFFs checked for NaN/Inf;
* multi-frame files (GIF/TIFF): the first frame, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unimae.core.errors import InputError, check_finite
from unimae.domains.base import check_pixel_limit
from unimae.domains.sniff import magic_format

__all__ = ["FORMATS_BY_EXTENSION", "open_image", "decode_rgb", "decode_mask", "sniff_format"]

FORMATS_BY_EXTENSION: dict[str, tuple[str, ...]] = {
    ".jpg": ("JPEG", "MPO"),
    ".jpeg": ("JPEG", "MPO"),
    ".png": ("PNG",),
    ".tif": ("TIFF",),
    ".tiff": ("TIFF",),
    ".bmp": ("BMP", "DIB"),
    ".gif": ("GIF",),
    ".ppm": ("PPM",),
    ".pgm": ("PPM",),
}
"""Pillow format names accepted behind each extension (suffixes not listed accept any image format)."""

_EXT_FOR_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "PPM": ".ppm"}

#: how an error names a format of :data:`~unimae.domains.sniff.MAGIC` (else in capitals: PNG, JPEG, DICOM ...)
_FORMAT_NAMES = {"gzip": "gzip data (a .nii.gz?)", "zip": "a zip archive", "pdf": "a PDF document", "nifti": "NIfTI"}


def sniff_format(path: str | Path) -> str:
    """A short description of what a file's first bytes look like (used in error messages)."""
    name, head = magic_format(path)
    if name is not None:
        return _FORMAT_NAMES.get(name, name.upper())
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"


def open_image(path: str | Path) -> Image.Image:
    """Open ``path`` with Pillow and validate it *without* decoding pixels.

    Checks, raising :class:`InputError` with one line naming the file: existence, empty file,
    unidentifiable or mismatched content behind a known extension, and the pixel limit (read from the
    header). The returned image is not yet loaded; multi-frame files are positioned on frame 0.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not an image file", path)
    if path.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", path)
    ext = path.suffix.lower()
    try:
        with warnings.catch_warnings():
            # We apply our own (configurable) pixel limit just below; Pillow's warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise InputError(f"refused to decode a possible decompression bomb: {err}", path) from err
    except UnidentifiedImageError as err:
        found = sniff_format(path)
        expected = FORMATS_BY_EXTENSION.get(ext, ("image",))[0]
        if found in ("PNG", "JPEG", "TIFF", "BMP", "GIF"):
            raise InputError(f"corrupt {found} file: Pillow cannot decode its header", path) from err
        raise InputError(f"not a readable image: expected {expected} content but found {found}", path) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"corrupt or truncated image header ({err})", path) from err
    try:
        accepted = FORMATS_BY_EXTENSION.get(ext)
        if accepted is not None and im.format not in accepted:
            fix = _EXT_FOR_FORMAT.get(str(im.format), "")
            hint = f"; rename it to {path.stem}{fix}" if fix else ""
            raise InputError(f"the extension says {ext} but the content is {im.format}{hint}", path)
        check_pixel_limit((im.height, im.width), path)
        n_frames = int(getattr(im, "n_frames", 1) or 1)
    except InputError:
        im.close()
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        im.close()
        raise InputError(f"corrupt image file ({err})", path) from err
    if n_frames > 1:
        warnings.warn(f"{path.name}: {n_frames} frames; using the first", UserWarning, stacklevel=3)
    return im


def _is_16bit_colour(im: Image.Image) -> bool:
    """True for 16-bit-per-sample RGB(A) files, which Pillow would decode to 8 bits."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) else args
    return isinstance(rawmode, str) and ";16" in rawmode


def _load(im: Image.Image, path: Path) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as err:
        raise InputError(f"refused to decode a possible decompression bomb: {err}", path) from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise InputError(f"truncated or corrupt image data ({err})", path) from err


def _imdecode_16bit(path: Path) -> np.ndarray:
    """Decode a 16-bit colour PNG/TIFF with OpenCV, returning (H, W, 3) uint16 RGB."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError("truncated or corrupt 16-bit image data", path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., 2::-1] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, -1))


def decode_rgb(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode an image file to RGB ``(H, W, 3)`` float32 in [0, 1].

    Returns the array and a dict of facts about the source: ``source_mode`` (Pillow mode),
    ``source_format``, ``source_dtype``, ``source_max`` (the divisor used: 255, 65535 or 1) and
    ``grey``/``alpha_dropped`` flags.
    """
    path = Path(path)
    im = open_image(path)
    info: dict = {"source_format": im.format, "source_mode": im.mode, "grey": False, "alpha_dropped": False}
    try:
        if _is_16bit_colour(im):
            info["alpha_dropped"] = im.mode == "RGBA"
            im.close()
            arr = _imdecode_16bit(path)
            info.update(source_dtype="uint16", source_max=65535.0)
            return arr.astype(np.float32) / 65535.0, info
        _load(im, path)
        mode = im.mode
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
            mode = im.mode
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
            mode = "RGB"
        if mode == "1":
            im = im.convert("L")
            mode = "L"
        if mode in ("RGBA", "RGBa", "LA", "La"):
            info["alpha_dropped"] = True
            im = im.convert("RGB" if mode.startswith("RGB") else "L")
            mode = im.mode
        arr = np.asarray(im)
    finally:
        im.close()
    if mode in ("RGB", "L"):
        info.update(source_dtype="uint8", source_max=255.0)
        out = arr.astype(np.float32) / 255.0
    elif mode.startswith("I;16") or mode == "I":
        info.update(source_dtype="uint16", source_max=65535.0)
        out = arr.astype(np.float32) / 65535.0
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(f"32-bit integer image with values {arr.min()}..{arr.max()} outside 0..65535", path)
    elif mode == "F":
        out = arr.astype(np.float32)
        check_finite(out, "image", path)
        top = float(out.max()) if out.size else 1.0
        divisor = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
        info.update(source_dtype="float32", source_max=divisor)
        out = out / divisor
    else:
        raise InputError(f"unsupported image mode {mode!r}", path)
    if out.ndim == 2:
        warnings.warn(f"{path.name}: grey image; replicated to 3 channels (R = G = B)", UserWarning, stacklevel=2)
        info["grey"] = True
        out = np.repeat(out[..., None], 3, axis=-1)
    check_finite(out, "image", path)
    return np.clip(out, 0.0, 1.0), info


def decode_mask(path: str | Path) -> np.ndarray:
    """Decode a mask / label file to an integer ``(H, W)`` array of class indices.

    * values below 64 are class indices, kept as they are (0/1 masks, small label maps);
    * otherwise a two-level mask (0/255, e.g. DRIVE's GIFs) becomes 0/1, and anything else
      (anti-aliased or JPEG-compressed masks) is thresholded at half its maximum;
    * colour (RGB) masks: any non-black pixel is foreground, whatever its hue;
    * palette images: a grey palette (a grey mask saved as GIF) is read as its grey levels, a colour
      palette (a VOC-style class map) as its palette indices.
    """
    path = Path(path)
    im = open_image(path)
    try:
        _load(im, path)
        if im.mode == "P":
            arr = _palette_values(im)
        elif im.mode in ("PA", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1"):
            arr = np.asarray(im.convert("RGB")).max(axis=-1)
        else:
            arr = np.asarray(im)
    finally:
        im.close()
    if arr.ndim != 2:
        raise InputError(f"mask must be a single-channel image, got shape {arr.shape}", path)
    if np.issubdtype(arr.dtype, np.floating):
        check_finite(arr, "mask", path)
        return (arr > 0.5 * float(arr.max() or 1.0)).astype(np.int64)
    arr = arr.astype(np.int64)
    values = np.unique(arr)
    if values.min() < 0:
        raise InputError("mask has negative values", path)
    if values.max() < 64:
        return arr  # 0/1 or a small label map of class indices
    if len(values) <= 2 and values.min() == 0:
        return (arr > 0).astype(np.int64)  # 0/255 binary mask
    return (arr > values.max() / 2).astype(np.int64)


def _palette_values(im: Image.Image) -> np.ndarray:
    """Grey levels for a grey palette, palette indices for a colour palette."""
    idx = np.asarray(im)
    palette = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(idx)
    if used.size and used.max() < len(palette):
        colours = palette[used]
        if (colours == colours[:, :1]).all():
            return palette[idx, 0]
    return idx
