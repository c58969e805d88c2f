"""Acquisition shifts for ``benchmarks/real_data.py``: copies of held-out images as another camera, scanner or site
might make them (blur, a lower resolution, noise, JPEG, another grey-level curve or colour balance, another field of
view size), so that every arm is scored on them as well as on the images as they are.

Each shift is a fixed, seeded operation on the 8-bit file; the copy is a PNG in the fold's work folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: the held-out images as they are; every other condition is a copy of them as another camera or site might make it
UNSHIFTED = "as is"


def _gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: a**g


def _half_resolution(a: np.ndarray) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    return cv2.resize(cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)


def _blur(a: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(a, (0, 0), 1.2)


def _noise(a: np.ndarray) -> np.ndarray:
    return a + np.random.default_rng(0).normal(0.0, 0.03, a.shape).astype(np.float32)


def _colour(a: np.ndarray) -> np.ndarray:
    return a * np.asarray([1.15, 0.85, 1.1], np.float32) if a.ndim == 3 and a.shape[2] == 3 else a


#: acquisition shifts, each a function of ``[0, 1]`` float intensities (``(H, W)`` or ``(H, W, C)``), or a zoom or a
#: JPEG quality: what another camera, scanner or site changes in an image while the anatomy stays. The held-out
#: images are scored as they are and under the shifts their set names (``RealSet.shifts``), for every arm.
SHIFTS: dict[str, Any] = {
    "FOV 0.6x": ("zoom", 0.6),  # a smaller field of view in pixels: a lower-resolution camera
    "FOV 1.8x": ("zoom", 1.8),
    "colour": ("intensity", _colour),  # another colour balance (RGB gains)
    "blur": ("intensity", _blur),  # a softer lens or focus (Gaussian, sigma 1.2 px)
    "half resolution": ("intensity", _half_resolution),  # detail of a sensor with half the pixels, same size
    "noise": ("intensity", _noise),  # sensor noise, sigma 0.03 of the range
    "JPEG q40": ("jpeg", 40),  # lossy storage, as many archives and web collections keep images
    "gamma 0.7": ("intensity", _gamma(0.7)),  # another grey-level curve (film processing, detector response)
    "gamma 1.4": ("intensity", _gamma(1.4)),
    "brighter": ("intensity", lambda a: a + 0.1),
}  # fmt: skip


def shifted(path: Path, work: Path, condition: str) -> Path:
    """A PNG copy of an 8-bit image file under one of :data:`SHIFTS` (in ``work``; the original is untouched)."""
    import io

    from PIL import Image

    kind, how = SHIFTS[condition]
    im = Image.open(path)
    im = im.convert("L" if im.mode in ("L", "I", "I;16", "F") else "RGB")
    if kind == "zoom":
        im = im.resize((round(im.width * how), round(im.height * how)), Image.BILINEAR)
    elif kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(how))
        im = Image.open(io.BytesIO(buf.getvalue())).convert(im.mode)
    else:
        a = how(np.asarray(im).astype(np.float32) / 255.0)
        im = Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    out = work / f"{path.stem}_{condition.replace(' ', '').replace('.', '')}.png"
    im.save(out)
    return out


def shifted_copies(paths: list[Path], work: Path, conditions: list[str]) -> dict[str, list[Path]]:
    """Each condition's version of ``paths``, made once per fold for every arm: the files themselves for
    :data:`UNSHIFTED`, else their :func:`shifted` copies."""
    return {c: list(paths) if c == UNSHIFTED else [shifted(p, work, c) for p in paths] for c in conditions}
