"""Windows over a raster grid: tiling a scene for streamed reading, writing and inference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rasterio.windows import Window

from unimae.core.errors import InputError
from unimae.domains.sample import size_pair

__all__ = ["iter_windows", "as_window", "window_tuple"]


def _spans(length: int, tile: int, stride: int, edge: str) -> list[tuple[int, int]]:
    """(start, size) pairs along one axis."""
    if length <= tile:
        return [(0, length)]
    if edge == "clip":
        return [(s, min(tile, length - s)) for s in range(0, length, stride) if s == 0 or s + tile - stride < length]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:  # last tile flush with the edge
        starts.append(length - tile)
    return [(s, tile) for s in starts]


def iter_windows(
    height: int,
    width: int,
    tile: int | Sequence[int] = 512,
    overlap: int | Sequence[int] = 0,
    *,
    edge: str = "shift",
) -> Iterator[Window]:
    """Yield :class:`rasterio.windows.Window` tiles (row-major) that cover a ``height x width`` grid.

    Tiles are ``tile`` pixels (an int, or ``(rows, cols)``), stepping by ``tile - overlap``; tiles never
    extend past the grid. ``edge="shift"`` (for inference) moves the last row/column of tiles back to end
    flush with the edge, so every tile is full size when the grid is at least one tile large;
    ``edge="clip"`` (for statistics) keeps the stride and clips the last tiles, so with ``overlap=0`` the
    tiles partition the grid exactly.
    """
    height, width = int(height), int(width)
    th, tw = size_pair(tile, "tile", minimum=None, pair="a (rows, cols) pair")
    oh, ow = size_pair(overlap, "overlap", minimum=None, pair="a (rows, cols) pair")
    if height <= 0 or width <= 0:
        raise ValueError(f"grid must be non-empty, got {height}x{width}")
    if th <= 0 or tw <= 0:
        raise ValueError(f"tile must be positive, got {tile!r}")
    if not (0 <= oh < th and 0 <= ow < tw):
        raise ValueError(f"overlap must be >= 0 and smaller than the tile, got overlap={overlap!r}, tile={tile!r}")
    if edge not in ("shift", "clip"):
        raise ValueError(f"edge must be 'shift' or 'clip', got {edge!r}")
    for r, h in _spans(height, th, th - oh, edge):
        for c, w in _spans(width, tw, tw - ow, edge):
            yield Window(c, r, w, h)


def as_window(window: Window | Sequence[int], height: int, width: int, path=None) -> Window:
    """A whole-pixel Window from a Window or ``(row_off, col_off, height, width)``; must lie inside the grid."""
    if isinstance(window, Window):
        w = window.round_offsets().round_lengths()
        row, col, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
    else:
        try:
            row, col, h, wd = (int(v) for v in window)
        except (TypeError, ValueError):
            raise InputError(
                f"window must be a rasterio Window or (row_off, col_off, height, width), got {window!r}", path
            ) from None
    if h <= 0 or wd <= 0 or row < 0 or col < 0 or row + h > height or col + wd > width:
        raise InputError(
            f"window (row_off={row}, col_off={col}, height={h}, width={wd}) is not inside the "
            f"{height}x{width} image",
            path,
        )
    return Window(col, row, wd, h)


def window_tuple(window: Window) -> tuple[int, int, int, int]:
    """``(row_off, col_off, height, width)`` of a whole-pixel window."""
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)
