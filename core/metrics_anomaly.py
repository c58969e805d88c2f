"""Anomaly metrics: pixel AUROC, AUPRO / PRO curve and the streaming :class:`PixelAccumulator`.

Image-level AUROC is :func:`~unimae.core.metrics_common.auroc`. The AUPRO definition is in
:mod:`unimae.core.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from unimae.core.metrics_common import ArrayLike, auroc, binary_targets, safe_divide, to_json, to_numpy

__all__ = ["stratified_subsample", "pixel_auroc", "region_labels", "pro_curve", "aupro", "aupro_from_curve",
           "PixelAccumulator", "anomaly_metrics"]


def stratified_subsample(labels: np.ndarray, max_pixels: int, seed: int | Sequence[int]) -> np.ndarray | None:
    """Sorted indices of a seeded subset of at most ``max_pixels`` elements of binary ``labels``.

    Up to half come from each class (the rest from the other when one is smaller); None when
    ``labels`` already fits (keep everything).
    """
    if labels.size <= max_pixels:
        return None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(labels == 0)
    half = max_pixels // 2
    n_pos = min(pos.size, max(half, max_pixels - neg.size))
    n_neg = min(neg.size, max_pixels - n_pos)
    pick = [rng.choice(pos, n_pos, replace=False) if n_pos < pos.size else pos,
            rng.choice(neg, n_neg, replace=False) if n_neg < neg.size else neg]  # fmt: skip
    return np.sort(np.concatenate(pick))


def pixel_auroc(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    max_pixels: int | None = 1_000_000,
    seed: int = 0,
) -> float:
    """Pixel-level AUROC of flat ``scores`` for ``targets`` (0/1), with a deterministic cap on the pixel count.

    Above ``max_pixels`` it keeps a seeded random subset, up to half from each class: the AUROC does
    not depend on class prevalence, so this estimates the full value without bias.
    """
    s = to_numpy(scores).reshape(-1)
    t = binary_targets(targets)
    if max_pixels is not None:
        idx = stratified_subsample(t, int(max_pixels), seed)
        if idx is not None:
            s, t = s[idx], t[idx]
    return auroc(s, t)


def region_labels(mask: ArrayLike, valid: ArrayLike | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a binary anomaly mask (full connectivity) inside ``valid``: ``(labels, n)``."""
    from scipy import ndimage

    m = to_numpy(mask) > 0
    if valid is not None:
        m &= to_numpy(valid).astype(bool)
    structure = ndimage.generate_binary_structure(m.ndim, m.ndim)
    labels, n = ndimage.label(m, structure=structure)
    return labels.astype(np.int64), int(n)


def pro_curve(scores: ArrayLike, regions: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-region-overlap curve ``(fpr, pro, thresholds)`` of flat pixel arrays.

    Args:
        scores: ``(P,)`` anomaly scores of the pixels to evaluate (valid pixels of all images).
        regions: ``(P,)`` int: 0 for a normal pixel, ``r > 0`` for a pixel of anomaly region ``r``
            (region ids unique across images, e.g. from :class:`PixelAccumulator`).

    One point per distinct score (pixels with ``score >= threshold`` are called anomalous), from
    (0, 0); region sizes are counted in ``regions`` itself. NaN axes when there is no normal pixel or
    no region.
    """
    s = to_numpy(scores).reshape(-1).astype(np.float64)
    r = to_numpy(regions).reshape(-1).astype(np.int64)
    if s.shape != r.shape:
        raise ValueError(f"{s.size} scores for {r.size} region labels")
    ids, inverse, sizes = np.unique(r, return_inverse=True, return_counts=True)
    n_regions = int((ids > 0).sum())
    n_normal = int(sizes[ids == 0].sum())
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1] if s.size else np.zeros(0, dtype=np.int64)
    normal = (r == 0)[order]
    fpr = np.cumsum(normal)[last] / n_normal if n_normal else np.full(last.size, np.nan)
    if n_regions:
        weight = np.where(ids > 0, 1.0 / (sizes * n_regions), 0.0)[inverse][order]
        pro = np.cumsum(weight)[last]
    else:
        pro = np.full(last.size, np.nan)
    return np.r_[0.0, fpr], np.r_[0.0, pro], np.r_[np.inf, s_sorted[last]]


def _integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under a monotone curve ``y(x)`` from ``x = 0`` to ``limit`` (interpolated at the limit)."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit:
        i = int(np.argmax(x > limit))
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(
    maps: ArrayLike | Sequence[ArrayLike],
    masks: ArrayLike | Sequence[ArrayLike],
    valid: ArrayLike | Sequence[ArrayLike] | None = None,
    *,
    fpr_limit: float = 0.3,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (see the module docstring).

    ``maps``/``masks``/``valid`` are one image each, or sequences of per-image arrays (shapes may
    differ between images). NaN when there is no anomaly region or no normal pixel.
    """
    acc = PixelAccumulator(max_pixels_per_case=None)
    if isinstance(maps, (list, tuple)):
        valids = [None] * len(maps) if valid is None else list(valid)  # type: ignore[arg-type]
        for m, g, v in zip(maps, masks, valids):  # type: ignore[arg-type]
            acc.add(m, g, v)
    else:
        acc.add(maps, masks, valid)
    return acc.aupro(fpr_limit=fpr_limit)


def aupro_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under a PRO curve (from :func:`pro_curve`) up to ``fpr_limit``."""
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if fpr.size < 2 or not np.isfinite(fpr).all() or not np.isfinite(pro).all():
        return float("nan")
    return _integrate_to(fpr, pro, float(fpr_limit)) / float(fpr_limit)


class PixelAccumulator:
    """Collect pixel scores and anomaly regions case by case, for pixel AUROC and AUPRO.

    Each :meth:`add` labels the case's anomaly regions (connected components inside ``valid``),
    gives them ids unique across cases and keeps the valid pixels' scores. Memory is bounded by
    ``max_pixels_per_case``: above it, a seeded random subset of the case's normal pixels and of its
    anomalous pixels (each up to half the budget) is kept. Overlaps and rates are then estimated from
    the kept pixels; below the cap everything is exact.

    Args:
        max_pixels_per_case: pixel budget per case (None keeps every valid pixel).
        seed: seeds the subsampling (case ``i`` uses ``[seed, i]``).
    """

    def __init__(self, max_pixels_per_case: int | None = 2_000_000, seed: int = 0) -> None:
        self.max_pixels_per_case = None if max_pixels_per_case is None else int(max_pixels_per_case)
        self.seed = int(seed)
        self._scores: list[np.ndarray] = []
        self._regions: list[np.ndarray] = []
        self.num_regions = 0
        self.num_cases = 0

    def add(self, amap: ArrayLike, mask: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Add one case: anomaly map, binary ground-truth mask, optional valid map (same spatial shape)."""
        a = to_numpy(amap).astype(np.float32)
        m = to_numpy(mask)
        if a.shape != m.shape:
            raise ValueError(f"anomaly map {a.shape} and mask {m.shape} differ in shape")
        v = np.ones(a.shape, dtype=bool) if valid is None else to_numpy(valid).astype(bool)
        if v.shape != a.shape:
            raise ValueError(f"valid {v.shape} and anomaly map {a.shape} differ in shape")
        labels, n = region_labels(m, v)
        regions = np.where(labels > 0, labels + self.num_regions, 0)[v]
        scores = a[v]
        if not np.isfinite(scores).all():
            raise ValueError("anomaly map contains NaN or Inf inside the valid region")
        if self.max_pixels_per_case is not None:
            idx = stratified_subsample((regions > 0).astype(np.int8), self.max_pixels_per_case,
                                        seed=[self.seed, self.num_cases])  # fmt: skip
            if idx is not None:
                scores, regions = scores[idx], regions[idx]
        self._scores.append(scores)
        self._regions.append(regions)
        self.num_regions += n
        self.num_cases += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All kept ``(scores, regions)`` as flat arrays."""
        if not self._scores:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.concatenate(self._scores), np.concatenate(self._regions)

    @property
    def num_pixels(self) -> int:
        return int(sum(s.size for s in self._scores))

    def pixel_auroc(self, max_pixels: int | None = 1_000_000, seed: int | None = None) -> float:
        s, r = self.arrays()
        return pixel_auroc(s, (r > 0).astype(np.int64), max_pixels=max_pixels, seed=self.seed if seed is None else seed)

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return pro_curve(*self.arrays())

    def aupro(self, fpr_limit: float = 0.3) -> float:
        fpr, pro, _ = self.pro_curve()
        return aupro_from_curve(fpr, pro, fpr_limit)


def anomaly_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    pixels: PixelAccumulator | None = None,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """Image- and pixel-level anomaly metrics as a JSON-ready dict.

    Args:
        scores: ``(N,)`` image anomaly scores.
        labels: ``(N,)`` 0 normal / 1 anomalous.
        pixels: a :class:`PixelAccumulator` of the cases with ground-truth masks (None: no pixel metrics).
        threshold: the image-score threshold in use (anomalous when ``score > threshold``, as
            ``unimae predict``); adds sensitivity, specificity and accuracy at it.
        fpr_limit: FPR integration limit of AUPRO.

    Returns ``image_auroc``, ``num_samples``, ``num_anomalous``, optionally ``image_threshold`` with
    ``sensitivity``/``specificity``/``accuracy``, and with ``pixels``: ``pixel_auroc``, ``aupro``,
    ``aupro_fpr_limit``, ``num_regions``, ``pixels_scored``; ``notes`` explains nulls.
    """
    s = to_numpy(scores).reshape(-1).astype(np.float64)
    t = binary_targets(labels)
    notes: list[str] = []
    out: dict[str, Any] = {"num_samples": int(t.size), "num_anomalous": int(t.sum()), "image_auroc": auroc(s, t)}
    if not math.isfinite(out["image_auroc"]):
        notes.append("image AUROC is undefined (null): the data are all normal or all anomalous")
    if threshold is not None:
        pred = s > float(threshold)
        tp, fn = int((pred & (t == 1)).sum()), int((~pred & (t == 1)).sum())
        tn, fp = int((~pred & (t == 0)).sum()), int((pred & (t == 0)).sum())
        out.update(
            image_threshold=float(threshold),
            sensitivity=float(safe_divide(tp, tp + fn)),
            specificity=float(safe_divide(tn, tn + fp)),
            accuracy=float(safe_divide(tp + tn, t.size)),
        )
    if pixels is not None:
        out.update(
            pixel_auroc=pixels.pixel_auroc(),
            aupro=pixels.aupro(fpr_limit),
            aupro_fpr_limit=float(fpr_limit),
            num_regions=pixels.num_regions,
            pixels_scored=pixels.num_pixels,
        )
        if pixels.num_regions == 0:
            notes.append("pixel AUROC and AUPRO are undefined (null): no ground-truth anomaly region")
        elif not math.isfinite(out["pixel_auroc"]):
            notes.append("pixel AUROC is undefined (null): no normal pixel")
    out["notes"] = notes
    return to_json(out)
