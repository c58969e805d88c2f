"""A synthetic frontal (PA) chest radiograph with lung, heart and finding masks.

Display convention (MONOCHROME2): 0 = black = air, 1 = white = bone. Radiological convention: the
patient's **right** lung is on the image **left**. The phantom has

- a soft-tissue body silhouette (shoulders to abdomen) on a dark air background;
- two radiolucent (dark) lung fields with faint vascular markings, bounded below by the diaphragm domes
  (the right dome a little higher, as usual) and medially by the mediastinum and the heart;
- the mediastinum / spine band and the heart shadow, shifted to the patient's left; its transverse size is
  set through the cardiothoracic ratio (CTR, normal < 0.5);
- ribs: curved bright bands over the thorax, and the clavicles;
- optional findings: round **nodules** (small, sharp, inside a lung), **consolidation** (a larger,
  confluent patch confined to one lung) and **cardiomegaly** (CTR 0.56-0.66).

:func:`chest_xray` draws one case from a numpy ``Generator`` and returns every mask; the dataset
:class:`SyntheticChestXRay` wraps it with the plugin's data contract. Everything is computed on the fly in
a few milliseconds at 224x224.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from unimae.core.tasks import get_task
from unimae.domains.base import Sample, SyntheticSamples, channel_list, sample_index, size_pair
from unimae.domains.xray.intensity import normalization_spec, normalize

__all__ = ["SyntheticChestXRay", "chest_xray", "ChestPhantom", "FINDINGS", "SEG_CLASSES"]

FINDINGS: tuple[str, ...] = ("nodule", "consolidation", "cardiomegaly")
SEG_CLASSES: tuple[str, ...] = ("background", "lung_right", "lung_left")
FIELD_OF_VIEW_MM = 400.0  # the phantom spans about 40 cm, like a 43 cm detector


@dataclass
class ChestPhantom:
    """One synthetic case. Arrays are ``(H, W)``; ``image`` is float32 in ``[0, 1]``."""

    image: np.ndarray
    lungs: np.ndarray  # int64: 0 background, 1 lung_right (image left), 2 lung_left (image right)
    heart: np.ndarray  # bool
    nodules: np.ndarray  # bool
    consolidation: np.ndarray  # bool
    findings: np.ndarray  # float32 multi-hot over FINDINGS
    cardiothoracic_ratio: float

    @property
    def opacity(self) -> np.ndarray:
        """Focal opacities (nodules and consolidation), bool ``(H, W)``."""
        return self.nodules | self.consolidation


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return size_pair(size, "synthetic x-ray size", minimum=32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about ``[-1, 1]``: a coarse random grid upsampled bilinearly."""
    import cv2

    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def chest_xray(
    rng: np.random.Generator,
    size: int | Sequence[int] = 224,
    *,
    nodule: bool = False,
    consolidation: bool = False,
    cardiomegaly: bool = False,
) -> ChestPhantom:
    """Draw one synthetic chest radiograph with the requested findings.

    Args:
        rng: the only source of randomness.
        size: ``H`` (square) or ``(H, W)``, at least 32.
        nodule, consolidation, cardiomegaly: which findings to draw.
    """
    import cv2

    h, w = _size_hw(size)
    yy, xx = np.meshgrid(
        (np.arange(h, dtype=np.float32) + 0.5) / h, (np.arange(w, dtype=np.float32) + 0.5) / w, indexing="ij"
    )
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731

    # --- geometry ------------------------------------------------------------------------------
    mid = 0.5 + u(-0.015, 0.015)  # spine
    top = u(0.10, 0.15)  # lung apices
    base = u(0.74, 0.80)  # costophrenic level
    dome_h = u(0.06, 0.10)
    lung_half = [u(0.15, 0.17), u(0.145, 0.165)]  # right (image left), left (image right)
    lung_cx = [mid - 0.035 - lung_half[0], mid + 0.035 + lung_half[1]]
    dome_base = [base - 0.02, base]  # the right hemidiaphragm sits higher
    body_half = u(0.42, 0.46)

    # body silhouette: a superellipse torso with a narrower neck above the shoulders
    body = (np.abs((xx - mid) / body_half) ** 3 + np.abs((yy - 0.75) / 0.75) ** 3) < 1.0
    neck = (np.abs(xx - mid) < u(0.09, 0.11)) & (yy < 0.2)
    body |= neck

    # lungs: tall ellipses cut below by the diaphragm domes
    lungs = np.zeros((h, w), dtype=np.int64)
    cage = np.zeros((h, w), dtype=bool)
    below_diaphragm = np.zeros((h, w), dtype=bool)
    lung_shapes = []
    for k in range(2):
        ay = (base - top) * 0.62
        cy = top + ay
        ell = ((xx - lung_cx[k]) / lung_half[k]) ** 2 + ((yy - cy) / ay) ** 2
        dome = dome_base[k] - dome_h * np.clip(1.0 - ((xx - lung_cx[k]) / (lung_half[k] * 1.15)) ** 2, 0.0, 1.0)
        shape = (ell < 1.0) & (yy < dome)
        lung_shapes.append(shape)
        side = (xx < mid) if k == 0 else (xx >= mid)
        below_diaphragm |= side & (yy > dome)
        cage |= (ell < 1.25) & (yy < dome + 0.03)

    # the heart: an ellipse resting on the diaphragm, shifted to the patient's left (image right)
    thoracic = (lung_cx[1] + lung_half[1]) - (lung_cx[0] - lung_half[0])  # internal thoracic diameter
    ctr = u(0.56, 0.66) if cardiomegaly else u(0.38, 0.47)
    heart_half_w = ctr * thoracic / 2.0
    heart_cx = mid + 0.2 * heart_half_w
    heart_cy = base - u(0.13, 0.16)
    heart_half_h = u(0.12, 0.14) * (1.1 if cardiomegaly else 1.0)
    heart = ((xx - heart_cx) / heart_half_w) ** 2 + ((yy - heart_cy) / heart_half_h) ** 2 < 1.0
    mediastinum = (np.abs(xx - mid) < u(0.045, 0.055)) & (yy < heart_cy)

    for k, label in ((0, 1), (1, 2)):
        lungs[lung_shapes[k] & ~heart & ~mediastinum & body] = label
    lung_any = lungs > 0

    # --- intensities ---------------------------------------------------------------------------
    img = np.full((h, w), u(0.02, 0.06), dtype=np.float32)  # air
    soft = u(0.50, 0.58)
    body_f = body.astype(np.float32)
    img += body_f * (soft - img) * (0.85 + 0.15 * np.clip(1.0 - np.abs(xx - mid) / body_half, 0.0, 1.0))
    abdomen = body & below_diaphragm
    img[abdomen] += 0.06
    lung_level = u(0.16, 0.24)
    texture = 0.03 * _smooth_noise(rng, (h, w), 20) + 0.015 * _smooth_noise(rng, (h, w), 48)
    gradient = 0.06 * (yy - top) / (base - top)  # denser (brighter) towards the bases
    lung_img = lung_level + gradient + texture
    img = np.where(lung_any, lung_img, img)
    img = np.where(mediastinum | (heart & body), u(0.66, 0.74), img)
    img = np.where(mediastinum, img + 0.04, img)  # the spine adds density
    trachea = (np.abs(xx - mid) < 0.018) & (yy < top + 0.16) & body
    img = np.where(trachea, img - 0.22, img)  # the air column of the trachea

    # ribs: curved bands, higher at the spine, sloping down laterally
    d = np.abs(xx - mid)
    period = (base - top) / u(8.5, 10.0)
    phase = (yy - top - 0.55 * d * d - 0.12 * d) / period + u(0.0, 1.0)
    ribs = np.clip((np.cos(2.0 * np.pi * phase) - 0.55) / 0.45, 0.0, 1.0) * cage * (yy > top - 0.02)
    img += 0.09 * ribs.astype(np.float32)
    # clavicles: two bright bars from the manubrium outwards
    for sign in (-1.0, 1.0):
        t = (xx - mid) * sign
        clav_y = top + 0.015 - 0.12 * t
        img += 0.10 * ((np.abs(yy - clav_y) < 0.012) & (t > 0.04) & (t < 0.26)).astype(np.float32)

    # --- findings ------------------------------------------------------------------------------
    nodules = np.zeros((h, w), dtype=bool)
    consol = np.zeros((h, w), dtype=bool)
    scale = min(h, w)
    if nodule:
        ys, xs = np.nonzero(lung_any)
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(len(ys)))
            cy, cx = (ys[j] + 0.5) / h, (xs[j] + 0.5) / w
            r = max(u(0.014, 0.03), 2.2 / scale)
            dist2 = ((yy - cy) * h / scale) ** 2 + ((xx - cx) * w / scale) ** 2
            prof = np.clip(1.0 - dist2 / (r * r), 0.0, 1.0)
            img += u(0.22, 0.32) * np.sqrt(prof) * lung_any
            nodules |= (prof > 0) & lung_any
    if consolidation:
        side = int(rng.integers(1, 3))
        ys, xs = np.nonzero(lungs == side)
        lower = ys > np.median(ys)  # usually a lower zone
        j = int(rng.choice(np.nonzero(lower)[0]))
        cy, cx = (ys[j] + 0.5) / h, (xs[j] + 0.5) / w
        patch = np.zeros((h, w), dtype=np.float32)
        for _ in range(int(rng.integers(3, 7))):
            oy, ox = cy + u(-0.05, 0.05), cx + u(-0.04, 0.04)
            ry, rx = u(0.035, 0.075), u(0.03, 0.06)
            blob = 1.0 - ((yy - oy) / ry) ** 2 - ((xx - ox) / rx) ** 2
            patch = np.maximum(patch, np.clip(blob, 0.0, 1.0))
        patch *= lungs == side
        consol = patch > 0.05
        mottled = 0.8 + 0.2 * _smooth_noise(rng, (h, w), 24)
        img += u(0.18, 0.26) * np.clip(patch * 3.0, 0.0, 1.0) * mottled * consol

    # --- detector: slight blur and quantum noise -------------------------------------------------
    sigma = 0.6 * scale / 224.0
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
    img += rng.normal(0.0, 0.008, size=(h, w)).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)

    findings = np.array([nodules.any(), consol.any(), bool(cardiomegaly)], dtype=np.float32)
    return ChestPhantom(img, lungs, heart & body, nodules, consol, findings, float(ctr))


class SyntheticChestXRay(SyntheticSamples):
    """``n`` synthetic chest radiographs in model space; sample ``i`` depends only on ``(seed, i)``.

    Args:
        n: number of samples.
        seed: dataset seed; sample ``i`` uses ``np.random.default_rng([seed, i])``.
        size: ``H`` or ``(H, W)`` in pixels (the phantom always spans ~40 cm, so spacing = 400 / size mm).
        task: ``"classify"`` -> ``label`` float32 multi-hot over :attr:`class_names`;
            ``"segment"`` -> ``mask`` int64 over :attr:`seg_class_names`;
            ``"anomaly"`` -> ``mask`` = focal opacity mask (nodules + consolidation), ``label`` = 0/1.
        lesion_prob: chance that a case is abnormal. An abnormal case gets each finding with probability
            1/2 and at least one; for ``task="anomaly"`` at least one *opacity* (so ``label == mask.any()``;
            cardiomegaly may accompany it). ``0.0`` gives normal-only data for anomaly training.
        normalize: model-space normalisation (see :mod:`unimae.domains.xray.intensity`).

    Each item is a :class:`~unimae.domains.base.Sample` with image ``(1, H, W)`` float32.
    """

    all_band_names: ClassVar[tuple[str, ...]] = ("grey",)
    rgb_bands: ClassVar[tuple[str, ...]] = ("grey",)
    class_names: ClassVar[tuple[str, ...]] = FINDINGS
    seg_class_names: ClassVar[tuple[str, ...]] = SEG_CLASSES
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")

    def __init__(
        self,
        n: int = 256,
        *,
        size: int | Sequence[int] = 224,
        normalize: str | Sequence[float] = "default",
        **common: Any,
    ) -> None:
        super().__init__(n, **common)  # seed, task, lesion_prob
        self.size = _size_hw(size)
        self.normalization = normalization_spec(normalize, channels=1)

    @property
    def mask_names(self) -> tuple[str, ...]:
        """Names of the mask values for this task."""
        return SEG_CLASSES if get_task(self.task).pixel_labels else ("normal", "opacity")

    def draw(self, index: int) -> ChestPhantom:
        """The raw phantom (all masks, ``[0, 1]`` image) behind sample ``index``."""
        index = sample_index(index, self.n)
        rng = np.random.default_rng([self.seed, index])
        found = {name: False for name in FINDINGS}
        if rng.random() < self.lesion_prob:
            draw = rng.random(3) < 0.5
            if get_task(self.task).trains_on_normal and not (draw[0] or draw[1]):
                draw[int(rng.integers(2))] = True
            elif not draw.any():
                draw[int(rng.integers(3))] = True
            found = dict(zip(FINDINGS, map(bool, draw)))
        return chest_xray(rng, self.size, **found)

    def __getitem__(self, index: int) -> Sample:
        case = self.draw(int(index))
        image = torch.from_numpy(normalize(case.image[None], self.normalization).astype(np.float32))
        h, w = self.size
        meta: dict[str, Any] = {
            "spatial_dims": 2,
            "channels": channel_list(self.all_band_names),
            "spacing": (FIELD_OF_VIEW_MM / h, FIELD_OF_VIEW_MM / w),
            "spacing_unit": "mm",
            "affine": None,
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.from_numpy(np.ones((h, w), dtype=bool)),
            "modality": "CR",
            "path": None,
            "source_shape": (h, w),
            "photometric": "MONOCHROME2",
            "view_position": "PA",
            "normalization": self.normalization,
            "synthetic": True,
            "findings": [n for n, v in zip(FINDINGS, case.findings) if v],
            "cardiothoracic_ratio": case.cardiothoracic_ratio,
        }
        task = get_task(self.task)
        if not task.image_labels:
            meta["mask_classes"] = list(self.mask_names)
        label = mask = None
        if task.image_labels:
            label = torch.from_numpy(case.findings.copy())
        elif task.pixel_labels:
            mask = torch.from_numpy(case.lungs)
        else:
            mask = torch.from_numpy(case.opacity.astype(np.int64))
            label = torch.tensor(int(case.opacity.any()), dtype=torch.int64)
        return Sample(image=image, meta=meta, label=label, mask=mask)

    def plot(
        self,
        sample: Sample,
        prediction: torch.Tensor | None = None,
        *,
        alpha: float = 0.5,
        title: str | None = None,
    ):
        """A matplotlib Figure of ``sample`` with ``prediction`` (or its mask) overlaid, with a legend."""
        from unimae.domains.xray.plotting import plot_sample

        return plot_sample(
            sample, prediction, class_names=self.mask_names, finding_names=FINDINGS, alpha=alpha, title=title
        )
