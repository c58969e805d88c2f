"""Recognise a file's real format from its first bytes, so a wrong extension gets a clear message."""

from __future__ import annotations

from pathlib import Path

from unimae.domains.sniff import check_file as _check_file

__all__ = ["sniff_format", "check_file"]

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"BM", "bmp"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"PK\x03\x04", "zip"),
    (128, b"DICM", "dicom"),
)


def check_file(path: str | Path) -> Path:
    """Raise :class:`InputError` unless ``path`` is an existing, non-empty regular file (one image file)."""
    return _check_file(path, not_file="is not a file (give one image file)")


def sniff_format(path: str | Path) -> str:
    """The format found in the first bytes of ``path``.

    One of ``"png"``, ``"jpeg"``, ``"dicom"``, ``"gif"``, ``"tiff"``, ``"bmp"``, ``"gzip"``, ``"zip"``,
    ``"text"`` or ``"unknown"``.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head and all(b in b"\t\n\r" or 32 <= b < 127 for b in head):
        return "text"
    return "unknown"
