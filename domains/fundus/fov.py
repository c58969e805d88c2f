"""The field of view (FOV): the bright retinal disc inside the camera's black surround.

:func:`detect_fov` finds it from intensity alone; :func:`fov_bbox` gives its bounding box, used to
crop away the black margin before resizing.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

__all__ = ["detect_fov", "fov_bbox"]


def detect_fov(
    rgb: np.ndarray,
    *,
    fraction: float = 0.12,
    dark_border: float = 0.1,
    min_area: float = 0.05,
    smooth: int = 5,
) -> np.ndarray:
    """Find the field-of-view mask of a fundus photograph.

    The red channel (the brightest in any fundus image) is median-smoothed and thresholded at
    ``fraction`` of the way from the dark surround (1st percentile) to the retina (90th percentile);
    the largest connected component is kept and its holes (dark vessels, haemorrhages, the macula)
    are filled.

    Args:
        rgb: ``(H, W, 3)`` or ``(H, W)`` float image in [0, 1].
        fraction: threshold position between the surround and retina levels.
        dark_border: if even the darkest 1% of pixels are brighter than this, the image has no black
            surround (a cropped fundus) and the whole image is the field of view.
        min_area: if the detected disc covers less than this fraction of the image, detection is
            deemed to have failed: a warning is issued and the whole image is returned.
        smooth: median filter size (odd) applied before thresholding (suppresses JPEG noise).

    Returns:
        ``(H, W)`` bool mask, True inside the field of view.
    """
    red = rgb[..., 0] if rgb.ndim == 3 else rgb
    h, w = red.shape
    red8 = np.clip(red * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if smooth > 1 and min(h, w) > smooth:
        red8 = cv2.medianBlur(red8, int(smooth) | 1)
    step = max(1, int(np.sqrt(h * w / 250_000)))  # percentiles from a ~250k-pixel subsample
    lo, hi = np.percentile(red8[::step, ::step], [1, 90]).astype(np.float32)
    if lo > dark_border * 255.0 or hi - lo < 8:
        return np.ones((h, w), dtype=bool)
    threshold = lo + max(fraction * (hi - lo), 4.0)
    binary = (red8 > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        warnings.warn("field of view not found; using the whole image", UserWarning, stacklevel=2)
        return np.ones((h, w), dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_area * h * w:
        warnings.warn("field of view not found; using the whole image", UserWarning, stacklevel=2)
        return np.ones((h, w), dtype=bool)
    disc = (labels == largest).astype(np.uint8)
    return _fill_holes(disc)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary uint8 mask: flood the background from a 1-pixel frame."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = np.zeros((h + 4, w + 4), dtype=np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 1)  # everything reachable from outside becomes 1
    reached = flood[2:-2, 2:-2].astype(bool)  # floodFill marks visited pixels in its mask (offset 1)
    return (mask > 0) | ~reached


def fov_bbox(valid: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` (end-exclusive) of the True pixels; the whole image if none."""
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, int(valid.shape[0]), int(valid.shape[1])
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
