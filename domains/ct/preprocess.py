"""CT preprocessing: reorient, resample, HU window -> model space, and the body / field-of-view mask.

Model space is the HU window mapped linearly onto ``[-1, 1]``::

    x = clip(hu, center - width / 2, center + width / 2)
    x = (x - center) / (width / 2)

and ``meta["normalization"] = {"kind": "window", "center": c, "width": w, "range": [-1.0, 1.0]}``
records it, so a checkpoint can carry the preprocessing contract.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.domains.base import Sample, check_pixel_limit
from unimae.domains.ct.geometry import resample_to_grid, spacing_from_affine

__all__ = [
    "WINDOWS",
    "VALID_REGIONS",
    "resolve_window",
    "window_to_model",
    "model_to_hu",
    "normalization_record",
    "body_mask",
    "resolve_spacing",
    "preprocess_ct",
]

WINDOWS: dict[str, tuple[float, float]] = {
    # name: (center, width) in HU; radiology writes these as width/level, e.g. soft tissue 400/40
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (480.0, 2500.0),
    "liver": (90.0, 150.0),
    "brain": (40.0, 80.0),
}

VALID_REGIONS = ("body", "fov", "all")
_BODY_HU = -500.0  # tissue threshold for the body outline (lungs are filled in afterwards)


def resolve_window(window: str | Sequence[float] | Mapping[str, float]) -> tuple[float, float, str | None]:
    """``(center, width, preset name or None)`` from a preset name, a ``(center, width)`` pair or a dict."""
    if isinstance(window, str):
        name = look_up(window, WINDOWS, what="CT window preset")
        c, w = WINDOWS[name]
        return c, w, name
    if isinstance(window, Mapping):
        try:
            c, w = float(window["center"]), float(window["width"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"window dict needs numeric 'center' and 'width', got {dict(window)!r}") from err
    else:
        try:
            c, w = (float(v) for v in window)
        except (TypeError, ValueError) as err:
            raise InputError(
                f"window must be a preset name ({', '.join(WINDOWS)}) or a (center, width) pair in HU, got {window!r}"
            ) from err
    if not (np.isfinite(c) and np.isfinite(w)) or w <= 0:
        raise InputError(f"window width must be positive and finite, got center={c}, width={w}")
    return c, w, None


def window_to_model(hu: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """Clip HU to the window and map it linearly onto ``[-1, 1]``."""
    lo, hi = center - width / 2.0, center + width / 2.0
    return (hu.clamp(lo, hi) - center) / (width / 2.0)


def model_to_hu(x: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """Inverse of :func:`window_to_model` (exact inside the window; clipped values stay at its edges)."""
    return x * (width / 2.0) + center


def normalization_record(center: float, width: float, preset: str | None = None) -> dict[str, Any]:
    """The JSON-serialisable ``meta["normalization"]`` entry for a window."""
    rec: dict[str, Any] = {"kind": "window", "center": float(center), "width": float(width), "range": [-1.0, 1.0]}
    if preset is not None:
        rec["preset"] = preset
    return rec


def resolve_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float, float] | None:
    """Target spacing as a 3-tuple of positive mm, or None (keep)."""
    if spacing is None:
        return None
    if isinstance(spacing, (int, float)):
        spacing = (float(spacing),) * 3
    try:
        out = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as err:
        raise InputError(f"spacing must be a number or 3 numbers in mm, got {spacing!r}") from err
    if len(out) != 3 or not all(np.isfinite(s) and s > 0 for s in out):
        raise InputError(f"spacing must be 3 positive numbers in mm, got {spacing!r}")
    return out  # type: ignore[return-value]


def _resolve_orientation(orientation: str | None) -> str | None:
    if orientation is None:
        return None
    code = str(orientation).upper()
    pairs = ({"L", "R"}, {"P", "A"}, {"I", "S"})
    ok = len(code) == 3 and all(sum(c in p for c in code) == 1 for p in pairs)
    if not ok:
        raise InputError(
            f"orientation must be 3 axis codes, one of each L/R, P/A, I/S (e.g. 'RAS'), got {orientation!r}"
        )
    return code


def _superior_axis(affine: np.ndarray) -> int:
    """Index axis whose direction is closest to world S (the axial-slice stacking axis)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cos = np.abs(a[2]) / np.linalg.norm(a, axis=0)
    return int(np.argmax(cos))


def body_mask(hu: np.ndarray, affine: np.ndarray, *, threshold: float = _BODY_HU, margin: int = 2) -> np.ndarray:
    """The patient body (lungs and bowel gas included) of a ``(I, J, K)`` HU volume.

    Voxels above ``threshold`` HU, opened by one voxel to drop noise and the table's thin edges, the
    largest connected component kept, holes filled slice by slice along the axial axis (so lungs and
    airways count as body), then dilated by ``margin`` voxels. Empty if no voxel passes the threshold.
    """
    from scipy import ndimage as ndi

    tissue = hu > threshold
    if not tissue.any():
        return tissue
    opened = ndi.binary_opening(tissue, iterations=1)
    if opened.any():
        tissue = opened
    labels, n = ndi.label(tissue)
    if n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        tissue = labels == int(np.argmax(counts))
    axis = _superior_axis(affine)
    filled = np.moveaxis(tissue, axis, 0).copy()
    for k in range(filled.shape[0]):
        filled[k] = ndi.binary_fill_holes(filled[k])
    body = np.moveaxis(filled, 0, axis)
    if margin > 0:
        body = ndi.binary_dilation(body, iterations=int(margin))
    return body


def _target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round((n - 1) * s / t)) + 1) for n, s, t in zip(shape, spacing, target))


def preprocess_ct(
    sample: Sample,
    *,
    window: str | Sequence[float] | Mapping[str, float] = "soft_tissue",
    spacing: float | Sequence[float] | None = (1.5, 1.5, 1.5),
    orientation: str | None = "RAS",
    valid_region: str = "body",
) -> Sample:
    """Reorient, resample and window a CT sample (HU, source grid) into model space.

    Args:
        sample: a sample from :func:`read` with ``image`` ``(1, I, J, K)`` in HU (more channels are
            processed alike) and ``meta["grid_affine"]`` (or ``meta["affine"]``).
        window: preset name (``soft_tissue``, ``lung``, ``bone``, ``liver``, ``brain``), a
            ``(center, width)`` pair in HU, or ``{"center": c, "width": w}``.
        spacing: target voxel size in mm (number or 3-tuple, in the output axis order); None keeps it.
        orientation: axis codes of the output grid (MONAI ``Orientation``, e.g. ``"RAS"``); None keeps
            the source order. An oblique source keeps its rotation (the closest axis codes are used).
        valid_region: ``"body"`` (default): the body outline from :func:`body_mask`, within the field
            of view, so air around the patient is masked out; ``"fov"``: only the reconstruction field
            of view (padding and values below -1500 HU are invalid); ``"all"``: everything valid.

    Returns:
        A new sample: ``image`` ``(C, I', J', K')`` float32 in ``[-1, 1]``; ``mask`` (if any) resampled
        with nearest neighbour; ``meta`` updated: ``spacing``, ``grid_affine`` (the new grid),
        ``orientation``, ``valid``, ``window``, ``normalization`` and ``preprocess`` (the arguments).
        ``meta["affine"]`` and ``meta["source_shape"]`` still describe the source file, which is what
        :meth:`CTPlugin.write` needs to go back to it.
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    meta = dict(sample.meta)
    if "normalization" in meta:
        raise InputError(f"sample is already preprocessed ({meta['normalization']}); pass a sample from read()")
    center, width, preset = resolve_window(window)
    target = resolve_spacing(spacing)
    axcodes = _resolve_orientation(orientation)
    valid_region = look_up(valid_region, VALID_REGIONS, what="valid_region")
    affine = np.asarray(meta.get("grid_affine", meta.get("affine")), dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError("sample meta has no 4x4 'affine'; read CT volumes with CTPlugin.read")

    image = sample.image.float()
    valid = sample.valid.float()[None]
    mask = None if sample.mask is None else sample.mask.reshape(sample.spatial_shape)[None].float()

    def as_meta(x: torch.Tensor) -> MetaTensor:
        return MetaTensor(x, affine=torch.as_tensor(affine))

    img_m, val_m = as_meta(image), as_meta(valid)
    msk_m = None if mask is None else as_meta(mask)
    if axcodes is not None:
        orient = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))
        img_m, val_m = orient(img_m), orient(val_m)
        msk_m = None if msk_m is None else orient(msk_m)
    if target is not None:
        cur = spacing_from_affine(img_m.affine.numpy())
        check_pixel_limit(_target_shape(img_m.shape[1:], cur, target), meta.get("path"))
        img_m = Spacing(pixdim=target, mode="bilinear", padding_mode="border", dtype=torch.float32)(img_m)
        val_m = Spacing(pixdim=target, mode="nearest", padding_mode="zeros", dtype=torch.float32)(val_m)
        if msk_m is not None:
            msk_m = Spacing(pixdim=target, mode="nearest", padding_mode="zeros", dtype=torch.float32)(msk_m)
    new_affine = img_m.affine.numpy().astype(np.float64)
    hu = img_m.as_tensor().float()
    fov = val_m.as_tensor()[0] > 0.5
    if valid_region == "all":
        valid_out = torch.ones_like(fov)
    elif valid_region == "fov":
        valid_out = fov
    else:
        body = torch.from_numpy(body_mask(hu[0].numpy(), new_affine)) & fov
        if not bool(body.any()):
            warnings.warn("no body found above -500 HU; using the field of view as valid", stacklevel=2)
            body = fov
        valid_out = body

    meta.update(
        spacing=spacing_from_affine(new_affine),
        grid_affine=new_affine,
        orientation=axcodes or meta.get("orientation"),
        valid=valid_out,
        window={"center": center, "width": width, "preset": preset},
        normalization=normalization_record(center, width, preset),
        preprocess={
            "window": [center, width],
            "spacing": None if target is None else list(target),
            "orientation": axcodes,
            "valid_region": valid_region,
        },
    )
    out_mask = None if msk_m is None else msk_m.as_tensor()[0].round().long()
    return sample.replace(image=window_to_model(hu, center, width).contiguous(), meta=meta, mask=out_mask)


def source_grid_of(meta: Mapping[str, Any]) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(affine, shape)`` of the source grid recorded in ``meta``."""
    affine = meta.get("affine")
    shape = meta.get("source_shape")
    if affine is None or shape is None:
        raise InputError("meta has no source 'affine' and 'source_shape'; cannot go back to the source grid")
    return np.asarray(affine, dtype=np.float64), tuple(int(s) for s in shape)


def to_source_grid(array: torch.Tensor | np.ndarray, meta: Mapping[str, Any], *, mode: str) -> torch.Tensor:
    """Resample a ``(C, ...)`` array on the current grid of ``meta`` back onto its source grid."""
    src_affine, src_shape = source_grid_of(meta)
    grid_affine = np.asarray(meta.get("grid_affine", src_affine), dtype=np.float64)
    return resample_to_grid(array, grid_affine, src_affine, src_shape, mode=mode, padding_mode="zeros")
