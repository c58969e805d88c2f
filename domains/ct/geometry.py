"""Voxel-grid geometry for CT volumes: spacing from an affine, grid comparison and resampling.

Conventions used throughout :mod:`unimae.domains.ct`
---------------------------------------------------
* A volume array is ``(C, I, J, K)``: the spatial axes are the voxel index axes ``(i, j, k)`` of
  its 4x4 voxel-to-world ``affine`` (the NIfTI / MONAI convention). World coordinates are RAS+ mm
  (x to the patient's Right, y Anterior, z Superior).
* After :func:`~unimae.domains.ct.preprocess.preprocess_ct` with ``orientation="RAS"`` the axes are
  ``(R, A, S)``: axis 0 runs left->right, axis 1 posterior->anterior, axis 2 inferior->superior, so
  ``image[:, :, :, k]`` is an axial slice.
* ``meta["affine"]`` / ``meta["source_shape"]`` always describe the *source* file; the grid the
  tensor currently lives on is ``meta["grid_affine"]`` with the tensor's spatial shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "spacing_from_affine",
    "grid_corners",
    "same_grid",
    "same_voxels",
    "resample_to_grid",
    "to_ras_for_display",
]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each index axis: the column norms of the 3x3 part of ``affine``."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))  # type: ignore[return-value]


def grid_corners(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates ``(8, 3)`` of the centres of the 8 corner voxels of a grid."""
    shape = [int(s) for s in shape]
    idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    hom = np.c_[idx, np.ones(len(idx))]
    return (np.asarray(affine, dtype=np.float64) @ hom.T).T[:, :3]


def same_voxels(affine_a: np.ndarray, affine_b: np.ndarray, atol: float = 1e-3) -> bool:
    """True if two affines are equal to within ``atol`` (mm)."""
    return bool(np.allclose(np.asarray(affine_a, float), np.asarray(affine_b, float), atol=atol))


def same_grid(
    affine_a: np.ndarray, shape_a: Sequence[int], affine_b: np.ndarray, shape_b: Sequence[int], tol: float = 0.1
) -> bool:
    """True if two grids hold the same voxels, possibly with axes flipped or permuted.

    Compares the sets of corner-voxel centres (to within ``tol`` voxels) and the voxel counts.
    """
    if int(np.prod(shape_a)) != int(np.prod(shape_b)):
        return False
    ca, cb = grid_corners(affine_a, shape_a), grid_corners(affine_b, shape_b)
    voxel = min(min(spacing_from_affine(affine_a)), min(spacing_from_affine(affine_b)))
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1)
    return bool((dist.min(axis=1) <= tol * voxel).all() and (dist.min(axis=0) <= tol * voxel).all())


def resample_to_grid(
    array: torch.Tensor | np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    *,
    mode: str = "nearest",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Resample a ``(C, I, J, K)`` array from one voxel grid onto another (MONAI ``SpatialResample``).

    Args:
        array: ``(C, I, J, K)`` values on the grid ``src_affine``.
        src_affine: 4x4 voxel-to-world matrix of ``array``.
        dst_affine: 4x4 voxel-to-world matrix of the output grid.
        dst_shape: spatial shape ``(I', J', K')`` of the output grid.
        mode: ``"nearest"`` for labels and masks, ``"bilinear"`` (trilinear) for intensities.
        padding_mode: value outside the source grid: ``"zeros"`` or ``"border"``.

    Returns:
        A float tensor ``(C, I', J', K')``. Identical grids are returned unchanged (as float).
    """
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    x = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    x = x.float()
    dst_shape = tuple(int(s) for s in dst_shape)
    if tuple(x.shape[1:]) == dst_shape and same_voxels(src_affine, dst_affine, atol=1e-4):
        return x.clone()
    img = MetaTensor(x, affine=torch.as_tensor(np.asarray(src_affine, dtype=np.float64)))
    out = SpatialResample(mode=mode, padding_mode=padding_mode, align_corners=True, dtype=torch.float64)(
        img, dst_affine=torch.as_tensor(np.asarray(dst_affine, dtype=np.float64)), spatial_size=dst_shape
    )
    return out.as_tensor().float() if isinstance(out, MetaTensor) else torch.as_tensor(out).float()


def to_ras_for_display(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient a spatial ``(I, J, K)`` array to the closest RAS axis order (flips and transposes only)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    target = nio.axcodes2ornt(("R", "A", "S"))
    return nio.apply_orientation(np.asarray(volume), nio.ornt_transform(ornt, target))
