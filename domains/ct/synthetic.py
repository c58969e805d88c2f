"""A synthetic CT phantom with organ labels and optional lesions, already in model space.

Each volume is a trunk on a RAS grid (axis 0 left->right, 1 posterior->anterior, 2 inferior->superior):
an elliptic body with subcutaneous fat and a muscle wall, a spine, and six organs with distinct HU:
liver (patient right), spleen (left), two kidneys (posterior), two lungs (superior). Hypodense lesions
may sit in the liver and spleen. Organ size and position vary a little per sample. The volume is made
in HU, then windowed exactly as :func:`~unimae.domains.ct.preprocess.preprocess_ct` does.

Sample ``i`` depends only on ``(seed, i)`` through ``np.random.default_rng([seed, i])`` and is made on
demand in ``__getitem__``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from unimae.core.errors import InputError
from unimae.core.tasks import get_task
from unimae.domains.base import Sample, SyntheticSamples, channel_list, sample_index
from unimae.domains.ct.augment import resolve_size
from unimae.domains.ct.preprocess import body_mask, normalization_record, resolve_window, window_to_model

__all__ = ["SyntheticCT", "SEG_CLASS_NAMES", "CLASS_HU", "make_phantom"]

SEG_CLASS_NAMES = ("background", "liver", "spleen", "kidney_left", "kidney_right", "lung_left", "lung_right")

CLASS_HU: dict[str, float] = {
    # mean HU of each labelled organ (portal-venous-like contrast, chosen to be distinct)
    "liver": 70.0,
    "spleen": 110.0,
    "kidney_left": 180.0,
    "kidney_right": 180.0,
    "lung_left": -850.0,
    "lung_right": -850.0,
}
TISSUE_HU: dict[str, float] = {"air": -1000.0, "fat": -100.0, "muscle": 50.0, "soft_tissue": 30.0, "bone": 700.0}
LESION_HU = -5.0
"""Nominal lesion attenuation (HU): hypodense, cyst- or necrotic-metastasis-like, 75 HU below the liver."""
LESION_HU_SPREAD = 15.0
"""Each lesion's own HU is uniform in ``LESION_HU +- LESION_HU_SPREAD`` (-20..+10 HU)."""
LESION_RADIUS = (0.10, 0.18)
"""Lesion radius range as a fraction of the volume half-extent (2-3 voxels at 32^3, 5-9 voxels = 7-13 mm at 96^3)."""
NOISE_HU = 10.0

# organ ellipsoids: (centre x, centre y) relative to the body semi-axes, centre z in [-1, 1],
# radii (x, y relative to body semi-axes; z absolute), paint order = list order
_ORGANS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("liver", (0.45, 0.05, -0.1), (0.42, 0.55, 0.32)),
    ("spleen", (-0.58, -0.2, -0.02), (0.2, 0.3, 0.2)),
    ("kidney_left", (-0.36, -0.55, -0.45), (0.13, 0.2, 0.22)),
    ("kidney_right", (0.36, -0.55, -0.5), (0.13, 0.2, 0.22)),
    ("lung_left", (-0.45, 0.0, 0.58), (0.36, 0.6, 0.45)),
    ("lung_right", (0.45, 0.0, 0.55), (0.38, 0.6, 0.48)),
)


def _ellipsoid(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray], centre: Sequence[float], radii: Sequence[float]
) -> np.ndarray:
    ux, uy, uz = axes
    return (
        ((ux - centre[0]) / radii[0]) ** 2 + ((uy - centre[1]) / radii[1]) ** 2 + ((uz - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def make_phantom(
    rng: np.random.Generator, size: tuple[int, int, int], lesion_prob: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: ``(hu, organs, lesions, body)``, each ``size`` = ``(I, J, K)`` on a RAS grid.

    ``hu`` float32 HU; ``organs`` int64 indices into :data:`SEG_CLASS_NAMES`; ``lesions`` bool;
    ``body`` bool (the body outline, lungs included).
    """
    nx, ny, nz = size
    ux = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[:, None, None]
    uy = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
    uz = np.linspace(-1.0, 1.0, nz, dtype=np.float32)[None, None, :]
    ax, ay = 0.86 * rng.uniform(0.9, 1.04), 0.64 * rng.uniform(0.88, 1.04)
    cy = rng.uniform(-0.04, 0.04)

    # body cross-section: same at every z
    r2 = (ux / ax) ** 2 + ((uy - cy) / ay) ** 2  # (nx, ny, 1)
    body2d = r2 <= 1.0
    hu = np.full((nx, ny, 1), TISSUE_HU["air"], dtype=np.float32)
    fat_in = rng.uniform(0.82, 0.88) ** 2
    hu = np.where(body2d, TISSUE_HU["fat"], hu)
    hu = np.where(r2 <= fat_in, TISSUE_HU["muscle"], hu)
    hu = np.where(r2 <= fat_in * 0.86, TISSUE_HU["soft_tissue"], hu)
    hu = np.broadcast_to(hu, size).copy()
    body = np.broadcast_to(body2d, size).copy()
    organs = np.zeros(size, dtype=np.int64)

    # body-relative coordinates for organ placement
    rel = ((ux / ax), ((uy - cy) / ay), uz)
    masks: dict[str, np.ndarray] = {}
    for name, (ox, oy, oz), (rx, ry, rz) in _ORGANS:
        centre = (ox + rng.normal(0, 0.03), oy + rng.normal(0, 0.03), oz + rng.normal(0, 0.04))
        radii = tuple(r * rng.uniform(0.87, 1.13) for r in (rx, ry, rz))
        m = _ellipsoid(rel, centre, radii) & body
        masks[name] = m
        organs[m] = SEG_CLASS_NAMES.index(name)
        hu[m] = CLASS_HU[name]

    # lesions: hypodense spheres inside the liver / spleen, sized with the volume so they stay a few voxels wide,
    # centred so that most of each sphere lies inside its host organ
    lesions = np.zeros(size, dtype=bool)
    if rng.random() < lesion_prob:
        for _ in range(int(rng.integers(1, 4))):
            host = "liver" if rng.random() < 0.7 else "spleen"
            host_mask = organs == SEG_CLASS_NAMES.index(host)
            if not host_mask.any():
                continue
            pts = np.argwhere(host_mask)
            radius = rng.uniform(*LESION_RADIUS)
            lesion_hu = LESION_HU + rng.uniform(-LESION_HU_SPREAD, LESION_HU_SPREAD)
            best, best_inside = None, -1.0
            for _try in range(6):
                centre_idx = pts[int(rng.integers(len(pts)))]
                centre = [float(a.ravel()[c]) for a, c in zip((ux, uy, uz), centre_idx)]
                sphere = _ellipsoid((ux, uy, uz), centre, (radius, radius * nx / ny, radius * nx / nz))
                inside = float((sphere & host_mask).sum()) / max(1, int(sphere.sum()))
                if inside > best_inside:
                    best, best_inside = sphere, inside
                if inside >= 0.8:
                    break
            blob = best & host_mask & ~lesions
            hu[blob] = lesion_hu
            lesions |= blob

    # spine: a bone cylinder behind the kidneys, drawn over everything but lungs
    sx, sy, sr = rng.normal(0, 0.02), -0.6 + rng.normal(0, 0.02), 0.12 * rng.uniform(0.9, 1.1)
    spine2d = ((rel[0] - sx) ** 2 + ((rel[1] - sy) * ay / ax) ** 2) <= sr**2
    spine = np.broadcast_to(spine2d, size) & body & (organs == 0)
    hu[spine] = TISSUE_HU["bone"]

    hu += rng.standard_normal(size, dtype=np.float32) * np.float32(NOISE_HU)
    return hu, organs, lesions, body


class SyntheticCT(SyntheticSamples):
    """``n`` synthetic CT volumes in model space (TorchGeo-style dataset).

    Args:
        n: number of samples.
        seed: sample ``i`` is a function of ``(seed, i)`` only.
        size: spatial size ``(I, J, K)`` (int for a cube), at least 16 per axis.
        task: ``"segment"``: ``mask`` = organ labels (:attr:`seg_class_names`); ``"anomaly"``:
            ``mask`` = lesion mask (0/1) and ``label`` = 1 if the volume has a lesion, else 0.
        lesion_prob: chance that a volume has lesions (``0.0`` for normal-only anomaly training).
        window: HU window (preset name or ``(center, width)``), as in ``preprocess``.
        spacing: voxel size in mm (isotropic).

    Each item is a :class:`Sample` with ``image`` ``(1, I, J, K)`` float32 in ``[-1, 1]`` and the full
    CT data contract in ``meta`` (RAS ``affine`` centred on the volume, ``valid`` = body outline).
    """

    all_band_names: ClassVar[tuple[str, ...]] = ("CT",)
    rgb_bands: ClassVar[tuple[str, ...]] = ("CT",)
    seg_class_names: ClassVar[tuple[str, ...]] = SEG_CLASS_NAMES
    class_hu: ClassVar[Mapping[str, float]] = CLASS_HU
    tissue_hu: ClassVar[Mapping[str, float]] = TISSUE_HU
    lesion_hu: ClassVar[float] = LESION_HU
    tasks: ClassVar[tuple[str, ...]] = ("segment", "anomaly")

    def __init__(
        self,
        n: int,
        *,
        size: int | Sequence[int] = 96,
        window: str | Sequence[float] = "soft_tissue",
        spacing: float = 1.5,
        **common: Any,
    ) -> None:
        super().__init__(n, **common)  # seed, task, lesion_prob
        self.size = resolve_size(size, "size", minimum=16)
        self.center, self.width, self.preset = resolve_window(window)
        if not float(spacing) > 0:
            raise InputError(f"spacing must be positive, got {spacing}")
        self.spacing = float(spacing)

    @property
    def affine(self) -> np.ndarray:
        """RAS voxel-to-world matrix, isotropic ``spacing``, world origin at the volume centre."""
        aff = np.diag([self.spacing] * 3 + [1.0])
        aff[:3, 3] = [-(s - 1) / 2.0 * self.spacing for s in self.size]
        return aff

    def __getitem__(self, index: int) -> Sample:
        i = sample_index(index, self.n)
        rng = np.random.default_rng([self.seed, i])
        hu, organs, lesions, body = make_phantom(rng, self.size, self.lesion_prob)
        image = window_to_model(torch.from_numpy(hu)[None], self.center, self.width)
        affine = self.affine
        # the valid region real scans get in preprocess (the body outline found from HU, dilated a little),
        # not the phantom's exact outline: a model trained on the one and run on the other is unconstrained
        # in the margin between them (it painted organs into the air around the body)
        valid = body_mask(hu, affine)
        if not valid.any():
            valid = body
        meta: dict[str, Any] = {
            "spatial_dims": 3,
            "channels": channel_list(["CT"]),
            "spacing": (self.spacing,) * 3,
            "affine": affine,
            "grid_affine": affine.copy(),
            "source_shape": self.size,
            "orientation": "RAS",
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.from_numpy(valid),
            "modality": "CT",
            "path": None,
            "window": {"center": self.center, "width": self.width, "preset": self.preset},
            "normalization": normalization_record(self.center, self.width, self.preset),
            "seg_class_names": list(SEG_CLASS_NAMES) if get_task(self.task).pixel_labels else ["normal", "lesion"],
            "synthetic": {"seed": self.seed, "index": i, "task": self.task},
        }
        if get_task(self.task).pixel_labels:
            return Sample(image=image, meta=meta, mask=torch.from_numpy(organs))
        has = bool(lesions.any())
        return Sample(
            image=image,
            meta=meta,
            mask=torch.from_numpy(lesions.astype(np.int64)),
            label=torch.tensor(int(has), dtype=torch.long),
        )

    def plot(self, sample: Sample, prediction: torch.Tensor | None = None, *, title: str | None = None):
        """Axial, coronal and sagittal middle slices with the mask or ``prediction`` overlaid."""
        from unimae.domains.ct.plot import plot_ct

        return plot_ct(sample, prediction, title=title)
