"""Recognise a file's real format from its first bytes, so a wrong extension gets a clear message."""

from __future__ import annotations

from pathlib import Path

from unimae.domains.sniff import check_file as _check_file
from unimae.domains.sniff import magic_format

__all__ = ["sniff_format", "format_hint", "check_file"]

#: the formats told apart (those of :data:`~unimae.domains.sniff.MAGIC`, less PDF and NIfTI)
_FORMATS = ("png", "jpeg", "gif", "tiff", "bmp", "gzip", "zip", "dicom")

#: what a file of a format found by :func:`sniff_format` is, for the error that it is not the format expected
_HINTS = {
    "png": "it is a PNG image; name it .png",
    "jpeg": "it is a JPEG image; name it .jpg",
    "dicom": "it is a DICOM file; name it .dcm",
    "text": "it is a text file",
    "zip": "it is a zip archive",
    "gzip": "it is a gzip archive",
}


def format_hint(fmt: str, otherwise: str) -> str:
    """What a file :func:`sniff_format` found to be ``fmt`` is (``otherwise`` for a format without a hint)."""
    return _HINTS.get(fmt, otherwise)


def check_file(path: str | Path) -> Path:
    """Raise :class:`InputError` unless ``path`` is an existing, non-empty regular file (one image file)."""
    return _check_file(path, not_file="is not a file (give one image file)")


def sniff_format(path: str | Path) -> str:
    """The format found in the first bytes of ``path``.

    One of ``"png"``, ``"jpeg"``, ``"dicom"``, ``"gif"``, ``"tiff"``, ``"bmp"``, ``"gzip"``, ``"zip"``,
    ``"text"`` or ``"unknown"``.
    """
    name, head = magic_format(path)
    if name in _FORMATS:
        return name
    if head and all(b in b"\t\n\r" or 32 <= b < 127 for b in head):
        return "text"
    return "unknown"
