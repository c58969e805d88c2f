"""X-ray intensity: display-range images in ``[0, 1]`` to model space and back.

Readers return images in ``[0, 1]`` (0 = black = radiolucent air, 1 = white = dense bone/metal, after
MONOCHROME1 inversion and any DICOM window). :func:`normalize` maps that to model space with a per-channel
mean/std; the exact operation is recorded as a JSON-serialisable ``meta["normalization"]`` dict so that
checkpoints carry the preprocessing contract, and :func:`to_unit` undoes it (augmentation works in
``[0, 1]``, the range albumentations expects for float images).

Named normalisations (``normalize=...``):

============  ==========================  ========================================================
``default``   ``(x - 0.5) / 0.25``        X-ray default: ``[0, 1]`` -> ``[-2, 2]``, zero-centred
``imagenet``  ``(x - 0.449) / 0.226``     grey ImageNet statistics (mean of the RGB mean/std), for
                                          ImageNet / medical_mae weights whose RGB stem was summed
``none``      ``x``                       keep ``[0, 1]`` (mean 0, std 1)
============  ==========================  ========================================================

A ``(mean, std)`` pair of floats is accepted as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimae.core.errors import InputError, look_up

__all__ = ["NORMALIZATIONS", "normalization_spec", "normalize", "to_unit", "apply_clahe"]

NORMALIZATIONS: dict[str, tuple[float, float]] = {
    "default": (0.5, 0.25),
    "imagenet": (0.449, 0.226),
    "none": (0.0, 1.0),
}


def normalization_spec(
    normalize: str | Sequence[float] = "default", channels: int = 1, clahe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``meta["normalization"]`` dict for a named or ``(mean, std)`` normalisation of ``channels`` channels.

    ``{"kind": "meanstd", "name": ..., "mean": [...], "std": [...], "input_range": [0.0, 1.0], "clahe": ...}``
    """
    if isinstance(normalize, str):
        name = look_up(normalize, NORMALIZATIONS, what="x-ray normalization")
        mean, std = NORMALIZATIONS[name]
    else:
        values = [float(v) for v in normalize]
        if len(values) != 2:
            raise InputError(f"normalize must be a name or a (mean, std) pair, got {list(normalize)!r}")
        mean, std = values
        name = "custom"
    if not np.isfinite([mean, std]).all() or std <= 0:
        raise InputError(f"normalize needs a finite mean and a positive std, got mean={mean}, std={std}")
    return {
        "kind": "meanstd",
        "name": name,
        "mean": [float(mean)] * int(channels),
        "std": [float(std)] * int(channels),
        "input_range": [0.0, 1.0],
        "clahe": clahe,
    }


def _stats(spec: dict[str, Any], channels: int, like: torch.Tensor | np.ndarray, channel_axis: int):
    if spec.get("kind") != "meanstd":
        raise InputError(f"unsupported x-ray normalization kind {spec.get('kind')!r}; known: meanstd")
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    if mean.size == 1:
        mean, std = np.repeat(mean, channels), np.repeat(std, channels)
    if mean.size != channels:
        raise InputError(f"normalization has {mean.size} channel statistics but the image has {channels} channels")
    shape = [1] * like.ndim
    shape[channel_axis] = channels
    mean, std = mean.reshape(shape), std.reshape(shape)
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(mean), torch.from_numpy(std)
    return mean, std


def normalize(x: torch.Tensor | np.ndarray, spec: dict[str, Any], channel_axis: int = 0):
    """``[0, 1]`` image -> model space with ``spec`` (from :func:`normalization_spec`). Any array layout."""
    mean, std = _stats(spec, x.shape[channel_axis], x, channel_axis)
    return (x - mean) / std


def to_unit(x: torch.Tensor | np.ndarray, spec: dict[str, Any] | None, channel_axis: int = 0):
    """Model space -> the ``[0, 1]`` display range (inverse of :func:`normalize`; identity if ``spec`` is None)."""
    if spec is None:
        return x
    mean, std = _stats(spec, x.shape[channel_axis], x, channel_axis)
    return x * std + mean


def apply_clahe(x: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a ``[0, 1]`` image ``(C, H, W)``, per channel.

    Computed on 16-bit levels so 12/16-bit radiographs keep their depth. Returns float32 in ``[0, 1]``.
    """
    import cv2

    if clip_limit <= 0 or tiles < 1:
        raise InputError(f"clahe needs clip_limit > 0 and tiles >= 1, got {clip_limit}, {tiles}")
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tiles), int(tiles)))
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(x.shape[0]):
        levels = np.round(np.clip(x[c], 0.0, 1.0) * 65535.0).astype(np.uint16)
        out[c] = op.apply(levels).astype(np.float32) / 65535.0
    return out
