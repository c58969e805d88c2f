"""Synthetic colour fundus photographs with vessel masks, lesion masks and an ordinal DR-like grade.

Each image shows the retinal disc (black outside the circular field of view, an orange-red fundus
with vignetting, choroidal texture and a darker macula), a bright optic disc, a branching vessel
tree growing out of it (four arcades of a vein and an artery, 1–6 px wide at 224², thinner with each
bifurcation) and, optionally, lesions: bright yellow hard exudates, pale fluffy cotton-wool spots, dark red
dot/blot haemorrhages and microaneurysms. The grade is the lesion count's grade
(:func:`grade_for_count`, :data:`GRADE_LESION_COUNTS`) and, as in the ICDR scale, the lesions get more
varied and larger with it (:data:`GRADE_LESION_MIX`): grade 1 shows only a few microaneurysms, grade 2
adds dot/blot haemorrhages and hard exudates, grade 3 has many lesions with large blot haemorrhages and
cotton-wool spots. Lesion radii scale with the image and have pixel floors, so every lesion stays at
least 2-3 px across (and grade-3 blots 5 px or more) at 64-96 px, where a small ViT can still see them.

Drawing is vectorised numpy plus OpenCV polylines/circles (a few ms at 224²). Sample ``i`` depends
only on ``(seed, i)`` through ``numpy.random.default_rng([seed, i])`` and is drawn when indexed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from unimae.core.tasks import get_task
from unimae.domains.base import Sample, SyntheticSamples, channel_list, sample_index
from unimae.domains.fundus.augment import as_hw
from unimae.domains.fundus.preprocess import CHANNEL_NAMES, NOMINAL_WAVELENGTHS, preprocess_fundus

__all__ = [
    "SyntheticFundus",
    "FundusScene",
    "render_fundus",
    "grade_for_count",
    "GRADE_LESION_COUNTS",
    "GRADE_LESION_MIX",
    "LESION_KINDS",
]

GRADE_LESION_COUNTS: tuple[tuple[int, int], ...] = ((0, 0), (1, 3), (4, 8), (9, 16))
"""Lesion-count range (inclusive) of each grade: grade0 none, grade1 1–3, grade2 4–8, grade3 > 8."""

LESION_KINDS = ("exudate", "haemorrhage", "microaneurysm", "cotton_wool")

GRADE_LESION_MIX: dict[int, dict[str, float]] = {
    1: {"microaneurysm": 1.0},  # mild NPDR: microaneurysms only
    2: {"microaneurysm": 0.35, "haemorrhage": 0.4, "exudate": 0.25},  # moderate: + dot/blot haemorrhages, exudates
    3: {"microaneurysm": 0.1, "haemorrhage": 0.4, "exudate": 0.3, "cotton_wool": 0.2},  # severe: many, large
}
"""Lesion-kind probabilities by grade; lesions drawn with grade 0 (an explicit ``n_lesions``) use grade 2's."""

# radius ranges in pixels at the 224 px reference (scaled with the image) and a floor in pixels, by (kind, grade)
_RADIUS: dict[str, tuple[float, float, float]] = {
    "microaneurysm": (1.0, 1.8, 1.0),
    "exudate": (2.0, 4.5, 1.2),
    "haemorrhage": (3.0, 6.0, 1.6),
    "cotton_wool": (7.0, 11.0, 2.5),
}
_BLOT = (8.0, 13.0, 2.6)  # grade-3 blot haemorrhages
_EXUDATE_RGB = (0.98, 0.88, 0.42)
_HAEMORRHAGE_RGB = (0.32, 0.06, 0.04)
_MICROANEURYSM_RGB = (0.36, 0.07, 0.05)
_COTTON_WOOL_RGB = (0.95, 0.92, 0.82)
_COLOUR = {
    "exudate": _EXUDATE_RGB,
    "haemorrhage": _HAEMORRHAGE_RGB,
    "microaneurysm": _MICROANEURYSM_RGB,
    "cotton_wool": _COTTON_WOOL_RGB,
}
_SHIFT = 2  # sub-pixel bits for OpenCV drawing


def grade_for_count(n_lesions: int) -> int:
    """The grade index for a lesion count (see :data:`GRADE_LESION_COUNTS`)."""
    for grade, (lo, hi) in enumerate(GRADE_LESION_COUNTS):
        if lo <= n_lesions <= hi:
            return grade
    return len(GRADE_LESION_COUNTS) - 1


@dataclass
class FundusScene:
    """One rendered fundus and its ground truth (all arrays ``(H, W)`` unless stated)."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    fov: np.ndarray  # bool
    vessels: np.ndarray  # bool, inside the FOV
    lesions: np.ndarray  # bool, inside the FOV
    grade: int
    disc: tuple[float, float, float]  # optic disc (cy, cx, radius)
    fov_circle: tuple[float, float, float]  # (cy, cx, radius)
    lesion_list: list[dict[str, Any]] = field(default_factory=list)  # kind, center (y, x), radius


def _pts(points: list[tuple[float, float]]) -> np.ndarray:
    """(x, y) float points -> OpenCV fixed-point int32 array."""
    return np.round(np.asarray(points, dtype=np.float64) * (1 << _SHIFT)).astype(np.int32)


def _grow_tree(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    width: float,
    length: float,
    bend: float,
    step: float,
    min_width: float,
    circle: tuple[float, float, float],
) -> list[tuple[list[tuple[float, float]], float]]:
    """Branches ``(points [(x, y)...], width)`` of one vessel tree grown from ``start``.

    Each branch walks ``length`` pixels with a steady ``bend`` (radians per step) plus a little
    wiggle, stops at the field-of-view ``circle`` ``(cy, cx, R)``, and bifurcates at its end into a
    thinner trunk (x0.7) and a side branch (x0.55) leaving at 25–75°.
    """
    cy, cx, radius = circle
    branches = []
    stack = [(start, angle, width, length, bend, 0)]
    while stack:
        (x, y), theta, w, L, k, depth = stack.pop()
        n = max(2, int(L / step))
        points = [(x, y)]
        for _ in range(n):
            theta += k + rng.normal(0.0, 0.06)
            x += step * np.cos(theta)
            y += step * np.sin(theta)
            points.append((x, y))
            if (x - cx) ** 2 + (y - cy) ** 2 > radius * radius:
                break
        branches.append((points, w))
        if len(points) <= n or depth >= 4 or w * 0.55 < min_width:
            continue  # left the field of view, or too fine to split again
        side = rng.choice((-1.0, 1.0))
        stack.append(((x, y), theta - side * rng.uniform(0.05, 0.3), w * 0.7, L * 0.8, k * 0.8, depth + 1))
        stack.append(((x, y), theta + side * rng.uniform(0.45, 1.3), w * 0.55, L * 0.6, rng.normal(0, 0.02), depth + 1))
    return branches


def _spread(ys: np.ndarray, xs: np.ndarray, n: int, min_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` candidate points that are at least ``min_dist`` apart (lesions never overlap)."""
    keep: list[int] = []
    for i in range(len(ys)):
        if len(keep) == n:
            break
        if all((ys[i] - ys[j]) ** 2 + (xs[i] - xs[j]) ** 2 >= min_dist**2 for j in keep):
            keep.append(i)
    return ys[keep], xs[keep]


def render_fundus(
    rng: np.random.Generator,
    size: int | Sequence[int] = 224,
    *,
    n_lesions: int = 0,
    grade: int | None = None,
) -> FundusScene:
    """Render one synthetic fundus photograph.

    Args:
        rng: the random generator (all randomness comes from it).
        size: output size, int or ``(height, width)``.
        n_lesions: number of lesions to draw.
        grade: the severity whose lesion mix and sizes to draw (:data:`GRADE_LESION_MIX`); ``None`` =
            the grade of ``n_lesions``. The returned grade is always ``grade_for_count`` of the lesions
            actually drawn.

    Returns:
        A :class:`FundusScene` with the RGB image in [0, 1] and its masks.
    """
    h, w = as_hw(size, "size")
    s = min(h, w)
    unit = s / 224.0  # pixel scale relative to the 224² reference
    cy = h / 2 + rng.uniform(-0.02, 0.02) * s
    cx = w / 2 + rng.uniform(-0.02, 0.02) * s
    R = s * rng.uniform(0.44, 0.48)
    dy = (np.arange(h, dtype=np.float32) - cy)[:, None]
    dx = (np.arange(w, dtype=np.float32) - cx)[None, :]
    r2 = dy * dy + dx * dx
    fov = r2 <= R * R

    # Fundus background: orange-red, vignetted, with low-frequency choroidal texture.
    base = np.array([rng.uniform(0.72, 0.86), rng.uniform(0.30, 0.40), rng.uniform(0.10, 0.17)], np.float32)
    texture = cv2.resize(rng.standard_normal((6, 6), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    shade = np.clip(1.0 - 0.45 * r2 / (R * R), 0.35, 1.0) * (1.0 + 0.05 * texture)
    rgb = shade[..., None] * base

    # Optic disc on the nasal side, macula (darker) on the temporal side.
    side = rng.choice((-1.0, 1.0))
    disc_r = R * rng.uniform(0.12, 0.15)
    disc_y = cy + rng.uniform(-0.08, 0.08) * R
    disc_x = cx + side * rng.uniform(0.30, 0.38) * R
    mac_y, mac_x = cy + rng.uniform(-0.05, 0.05) * R, cx - side * rng.uniform(0.02, 0.08) * R
    mac_d2 = (dy + cy - mac_y) ** 2 + (dx + cx - mac_x) ** 2
    rgb *= (1.0 - 0.3 * np.exp(-mac_d2 / (2 * (0.12 * R) ** 2)))[..., None]
    disc_d2 = (dy + cy - disc_y) ** 2 + (dx + cx - disc_x) ** 2
    disc_w = np.exp(-((disc_d2 / disc_r**2) ** 2))[..., None]  # flat-topped
    cup_w = np.exp(-disc_d2 / (2 * (0.4 * disc_r) ** 2))[..., None]
    disc_rgb = np.array([1.0, rng.uniform(0.78, 0.9), rng.uniform(0.5, 0.65)], np.float32)
    rgb = rgb * (1 - disc_w) + disc_rgb * disc_w
    rgb = rgb + 0.1 * cup_w

    # Vessel tree: four arcades (superior/inferior temporal, superior/inferior nasal), each a vein
    # (wider, darker) and an artery (narrower, lighter), bifurcating away from the disc.
    vessel_u8 = np.zeros((h, w), np.uint8)
    dark_u8 = np.zeros((h, w), np.uint8)
    temporal = 0.0 if side < 0 else np.pi  # direction from the disc towards the macula
    step = max(2.0, 5.0 * unit)
    for up in (-1.0, 1.0):  # superior (-1, image up) and inferior (+1) arcades
        for nasal in (False, True):
            direction = temporal + (np.pi if nasal else 0.0)
            sign = side * up if nasal else -side * up  # leave the disc upwards or downwards
            spread = rng.uniform(0.9, 1.3) if nasal else rng.uniform(0.7, 1.0)
            theta0 = direction + sign * spread
            bend = -sign * (0.015 if nasal else 0.035)  # arch back towards the horizontal (around the macula)
            length = R * (0.45 if not nasal else 0.35)
            for vein in (True, False):
                width = (6.0 if vein else 4.2) * unit * (1.0 if not nasal else 0.7)
                contrast = 0.7 if vein else 0.55
                start = (disc_x + rng.normal(0, 0.2) * disc_r, disc_y + rng.normal(0, 0.2) * disc_r)
                theta = theta0 + rng.normal(0, 0.12) + (0.1 if vein else -0.1)
                for points, bw in _grow_tree(rng, start, theta, width, length, bend, step, max(1.0, unit), (cy, cx, R)):
                    thick = max(1, int(round(bw)))
                    pts = _pts(points)
                    cv2.polylines(vessel_u8, [pts], False, 255, thickness=thick, lineType=cv2.LINE_8, shift=_SHIFT)
                    # anti-aliased edges for wide vessels; 1-px capillaries drawn solid so they keep contrast
                    line = cv2.LINE_AA if thick > 1 else cv2.LINE_8
                    cv2.polylines(
                        dark_u8, [pts], False, int(255 * contrast), thickness=thick, lineType=line, shift=_SHIFT
                    )
    dark = dark_u8.astype(np.float32) / 255.0
    absorb = np.array([0.4, 0.85, 0.8], np.float32)  # vessels are dark red: green and blue absorbed most
    rgb = rgb * (1.0 - dark[..., None] * absorb)
    vessels = (vessel_u8 > 0) & fov

    # Lesions, outside the optic disc and well inside the field of view.
    lesion_u8 = np.zeros((h, w), np.uint8)
    lesion_list: list[dict[str, Any]] = []
    if n_lesions > 0:
        cand = 12 * n_lesions + 32
        rad = R * 0.82 * np.sqrt(rng.uniform(0, 1, cand))
        ang = rng.uniform(0, 2 * np.pi, cand)
        ys, xs = cy + rad * np.sin(ang), cx + rad * np.cos(ang)
        ok = (ys - disc_y) ** 2 + (xs - disc_x) ** 2 > (1.8 * disc_r) ** 2
        severity = grade_for_count(n_lesions) if grade is None else int(grade)
        mix = GRADE_LESION_MIX.get(severity, GRADE_LESION_MIX[2])
        names = list(mix)
        ys, xs = _spread(ys[ok], xs[ok], n_lesions, max(14.0 * unit, 7.0))
        kinds = rng.choice(len(names), size=len(ys), p=[mix[k] for k in names])
        for y, x, k in zip(ys, xs, kinds):
            kind = names[int(k)]
            centre = (int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT))))
            lo, hi, floor = _BLOT if (kind == "haemorrhage" and severity >= 3) else _RADIUS[kind]
            radius = max(rng.uniform(lo, hi) * unit, floor)
            axes = (int(round(radius * (1 << _SHIFT))), int(round(radius * rng.uniform(0.6, 1.0) * (1 << _SHIFT))))
            angle = float(rng.uniform(0, 180))
            colour = _COLOUR[kind]
            if kind == "cotton_wool":  # pale, fluffy: feathered edges over the background
                blob = np.zeros((h, w), np.float32)
                cv2.ellipse(blob, centre, axes, angle, 0, 360, 1.0, -1, cv2.LINE_8, _SHIFT)
                alpha = np.clip(1.3 * cv2.GaussianBlur(blob, (0, 0), max(0.6, 0.35 * radius)), 0.0, 0.9)[..., None]
                rgb = rgb * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha
            else:
                cv2.ellipse(rgb, centre, axes, angle, 0, 360, colour, -1, cv2.LINE_8, _SHIFT)
            cv2.ellipse(lesion_u8, centre, axes, angle, 0, 360, 255, -1, cv2.LINE_8, _SHIFT)
            lesion_list.append({"kind": kind, "center": (float(y), float(x)), "radius": float(radius)})
    lesions = (lesion_u8 > 0) & fov

    # Camera: slight blur and noise, black outside the field of view with a one-pixel soft edge.
    rgb = cv2.GaussianBlur(rgb, (3, 3), 0.5)
    rgb += 0.01 * rng.standard_normal(rgb.shape, dtype=np.float32)
    edge = np.clip(R - np.sqrt(r2) + 0.5, 0.0, 1.0)
    rgb = np.clip(rgb * edge[..., None], 0.0, 1.0).astype(np.float32)
    grade = grade_for_count(len(lesion_list))
    return FundusScene(rgb, fov, vessels, lesions, grade, (disc_y, disc_x, disc_r), (cy, cx, R), lesion_list)


class SyntheticFundus(SyntheticSamples):
    """A deterministic dataset of synthetic fundus samples already in model space.

    Sample ``i`` depends only on ``(seed, i)``; it is rendered when indexed (nothing is precomputed).

    Args:
        n: number of samples.
        seed: dataset seed.
        size: image size, int or ``(height, width)``.
        task: ``"segment"`` (mask = vessels), ``"anomaly"`` (mask = lesions, label 0/1) or
            ``"classify"`` (label = grade index).
        lesion_prob: chance that a sample has lesions; ``None`` = 0.75, which makes the four grades
            equally likely. ``0.0`` gives healthy-only data (anomaly training).
        clahe, green, normalize: preprocessing, as in
            :func:`~unimae.domains.fundus.preprocess.preprocess_fundus`.

    ``meta["synthetic"]`` records the seed, index, grade, the optic disc, the FOV circle and each
    lesion (kind, centre, radius).
    """

    all_band_names: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    rgb_bands: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    class_names: ClassVar[tuple[str, ...]] = ("grade0", "grade1", "grade2", "grade3")
    seg_class_names: ClassVar[tuple[str, ...]] = ("background", "vessel")
    anomaly_class_names: ClassVar[tuple[str, ...]] = ("background", "lesion")
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    default_lesion_prob: ClassVar[float] = 0.75

    def __init__(
        self,
        n: int,
        *,
        size: int | Sequence[int] | None = 224,
        clahe: bool = False,
        green: float | bool = False,
        normalize: str = "imagenet",
        **common: Any,
    ) -> None:
        super().__init__(n, **common)  # seed, task, lesion_prob
        self.size = as_hw(224 if size is None else size, "size")
        self.preprocess_kw = {"clahe": bool(clahe), "green": green, "normalize": normalize}

    def scene(self, index: int) -> FundusScene:
        """The raw rendering (RGB in [0, 1] and ground truth) of sample ``index``."""
        index = self._index(index)
        rng = np.random.default_rng([self.seed, index])
        n_lesions = 0
        if rng.random() < self.lesion_prob:
            grade = int(rng.integers(1, len(GRADE_LESION_COUNTS)))
            lo, hi = GRADE_LESION_COUNTS[grade]
            n_lesions = int(rng.integers(lo, hi + 1))
        return render_fundus(rng, self.size, n_lesions=n_lesions)

    def _index(self, index: int) -> int:
        return sample_index(index, self.n)

    def __getitem__(self, index: int) -> Sample:
        index = self._index(index)
        scene = self.scene(index)
        meta = {
            "spatial_dims": 2,
            "channels": channel_list(CHANNEL_NAMES, NOMINAL_WAVELENGTHS),
            "spacing": (1.0, 1.0),
            "affine": None,
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.from_numpy(scene.fov),
            "modality": "fundus",
            "path": None,
            "source_shape": tuple(self.size),
            "normalization": {"kind": "scale", "divisor": 1.0, "input_range": [0.0, 1.0]},
            "fov_source": "synthetic",
            "task": self.task,
            "synthetic": {
                "seed": self.seed,
                "index": index,
                "grade": scene.grade,
                "n_lesions": len(scene.lesion_list),
                "lesions": scene.lesion_list,
                "disc": scene.disc,
                "fov_circle": scene.fov_circle,
            },
        }
        image = torch.from_numpy(np.ascontiguousarray(scene.rgb.transpose(2, 0, 1)))
        sample = preprocess_fundus(Sample(image=image, meta=meta), **self.preprocess_kw)
        task = get_task(self.task)
        if task.pixel_labels:
            return sample.replace(mask=torch.from_numpy(scene.vessels.astype(np.int64)))
        if task.trains_on_normal:
            label = torch.tensor(int(scene.lesions.any()), dtype=torch.long)
            return sample.replace(mask=torch.from_numpy(scene.lesions.astype(np.int64)), label=label)
        return sample.replace(label=torch.tensor(scene.grade, dtype=torch.long))

    def plot(self, sample: Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """A matplotlib Figure of ``sample`` (see :func:`~unimae.domains.fundus.plot.plot_fundus`)."""
        from unimae.domains.fundus.plot import plot_fundus

        names = self.anomaly_class_names if get_task(self.task).trains_on_normal else self.seg_class_names
        kwargs.setdefault("mask_names", names)
        kwargs.setdefault("class_names", self.class_names)
        return plot_fundus(sample, prediction, **kwargs)
