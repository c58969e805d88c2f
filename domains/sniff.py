"""Cheap looks at a file's format, shared by the plugins' ``sniff`` methods and the dataset layouts.

These answer questions about *formats* (is this a DICOM file, what modality does its header say, how
many bands and which CRS does this TIFF have, is this picture grey), never about domains: each plugin's
:meth:`~unimae.domains.base.DomainPlugin.sniff` turns the answers into its own score. Headers only,
never pixel data (pictures are decoded at reduced scale); patient fields are never read.

Results are cached per file (path, size and modification time), so several plugins asking about the same
file cost one read. Unreadable files raise :class:`~unimae.core.errors.InputError` with a one-line reason.
"""

from __future__ import annotations

import functools
import warnings
import zipfile
from pathlib import Path

import numpy as np

from unimae.core.errors import InputError
from unimae.domains.sample import check_pixel_limit

__all__ = [
    "check_file",
    "MULTI_SUFFIXES",
    "NAMED_FORMATS",
    "suffix",
    "hidden",
    "MAGIC",
    "magic_format",
    "has_dicom_magic",
    "looks_dicom",
    "is_dicom_dir",
    "holds_dicom_series",
    "dicom_modality",
    "zip_has_dicom",
    "tiff_info",
    "picture_is_grey",
]

MULTI_SUFFIXES = (".nii.gz", ".tar.gz")
#: suffixes whose format the name tells: a DICOM preamble is looked for only in files named otherwise
NAMED_FORMATS = (".nii", ".nii.gz", ".dcm", ".dicom", ".zip", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".ppm")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
#: file signatures ``(offset, bytes, format)``: the first that a file's first bytes hold names its format
MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"BM", "bmp"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"%PDF", "pdf"),
    (128, b"DICM", "dicom"),
    (344, b"n+1\x00", "nifti"),
)


def suffix(path: str | Path) -> str:
    """The lower-case suffix, double for ``.nii.gz`` / ``.tar.gz``."""
    low = Path(path).name.lower()
    for ext in MULTI_SUFFIXES:
        if low.endswith(ext):
            return ext
    return Path(low).suffix


def hidden(p: Path) -> bool:
    """Hidden or system entries (``.DS_Store``, ``.ipynb_checkpoints``, ``__MACOSX``)."""
    return p.name.startswith(".") or p.name.startswith("__")


def check_file(path: str | Path, *, not_file: str = "is not a file") -> Path:
    """``path`` as a :class:`Path`; :class:`InputError` when it is missing, not a regular file (``not_file``
    says so) or empty."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", path)
    if not p.is_file():
        raise InputError(not_file, path)
    if p.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", path)
    return p


def magic_format(path: str | Path) -> tuple[str | None, bytes]:
    """The format that a signature of :data:`MAGIC` in the first bytes of ``path`` names (None: no signature
    matches), and those bytes (512 at the most), for the caller's own look at content without one."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    for offset, magic, name in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name, head
    return None, head


def has_dicom_magic(path: str | Path) -> bool:
    """The file carries DICOM's ``DICM`` preamble marker (at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def looks_dicom(path: str | Path) -> bool:
    """A DICOM file by its name (``.dcm``, ``.dicom``) or, when the name tells no other format, its preamble."""
    ext = suffix(path)
    return ext in (".dcm", ".dicom") or (ext not in NAMED_FORMATS and has_dicom_magic(path))


def is_dicom_dir(folder: Path, probe: int = 4) -> bool:
    """True if ``folder`` directly holds DICOM files (``.dcm`` names or the ``DICM`` magic on a few files)."""
    if not folder.is_dir():
        return False
    probed = 0
    for p in sorted(folder.iterdir()):
        if hidden(p) or not p.is_file():
            continue
        if p.suffix.lower() in (".dcm", ".dicom"):
            return True
        if probed < probe:
            probed += 1
            if has_dicom_magic(p):
                return True
    return False


def holds_dicom_series(folder: Path) -> bool:
    """``folder`` is a DICOM series, or holds one directly below it."""
    return is_dicom_dir(folder) or any(is_dicom_dir(s) for s in sorted(folder.iterdir()) if s.is_dir() and not hidden(s))


def _key(path: str | Path) -> tuple[str, int, int]:
    st = Path(path).stat()
    return str(Path(path)), int(st.st_size), int(st.st_mtime_ns)


def dicom_modality(path: str | Path) -> str:
    """The Modality of a DICOM file from its header only (upper case; ``""`` when absent)."""
    return _dicom_modality(*_key(path))


@functools.lru_cache(maxsize=64)
def _dicom_modality(path: str, size: int, mtime: int) -> str:  # noqa: ARG001 - size and mtime key the cache
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "NumberOfFrames"])
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"not a readable DICOM file ({type(err).__name__})", path) from err
    return str(getattr(ds, "Modality", "") or "").upper()


def zip_has_dicom(path: str | Path) -> bool:
    """A zip archive holding DICOM files (by name, or the preamble of its first few members)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]
            if any(n.lower().endswith((".dcm", ".dicom")) for n in names):
                return True
            for n in names[:4]:
                with zf.open(n) as f:
                    head = f.read(132)
                if len(head) == 132 and head[128:132] == b"DICM":
                    return True
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(f"not a readable zip file ({type(err).__name__})", path) from err
    return False


def tiff_info(path: str | Path) -> tuple[int, bool]:
    """``(band count, has a CRS)`` of a TIFF, from its header."""
    return _tiff_info(*_key(path))


@functools.lru_cache(maxsize=64)
def _tiff_info(path: str, size: int, mtime: int) -> tuple[int, bool]:  # noqa: ARG001
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                return int(src.count), src.crs is not None
    except (RasterioError, OSError) as err:
        raise InputError("not a readable TIFF file", path) from err


def picture_is_grey(path: str | Path) -> bool:
    """A picture (PNG, JPEG, BMP ...) whose pixels are grey: a grey mode, or channels (nearly) equal on a
    downsampled copy (a radiograph saved as RGB)."""
    return _picture_is_grey(*_key(path))


@functools.lru_cache(maxsize=64)
def _picture_is_grey(path_s: str, size: int, mtime: int) -> bool:  # noqa: ARG001
    from PIL import Image, UnidentifiedImageError

    path = Path(path_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode in _GREY_MODES:
                    return True
                check_pixel_limit((im.height, im.width), path)
                im.draft("RGB", (128, 128))  # JPEG: decode at reduced scale; no-op elsewhere
                small = im.convert("RGB")
                small.thumbnail((128, 128))
                arr = np.asarray(small, dtype=np.int16)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"not a readable {path.suffix.lower().lstrip('.').upper()} image", path) from err
    spread = arr.max(axis=-1) - arr.min(axis=-1)  # channel disagreement per pixel
    return float(spread.mean()) < 3.0 and float(np.percentile(spread, 99)) < 16.0
