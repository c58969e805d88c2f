"""A model's result for one input, on the input's source grid, and its JSON report.

:class:`Prediction` is what the predict layer (:mod:`unimae.apps.predictor`) returns and what the
rendering and writing side (:mod:`unimae.apps.predict_render`), ``unimae predict`` and the app consume.
Reports carry the input's geometry (whitelisted ``meta`` keys) and never patient fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.checkpoint_io import to_jsonable
from unimae.core.tasks import get_task
from unimae.domains.base import Sample
from unimae.domains.display import valid_np as _valid_np

__all__ = ["Prediction", "safe_meta", "clean_meta", "class_fractions"]

_PATIENT = re.compile(r"patient|birth|accession|physician|operator|institution|study_?id|other_?ids|ethnic|address", re.I)
_REPORT_KEYS = (
    "spatial_dims", "channels", "spacing", "spacing_unit", "spacing_units", "affine", "crs_name", "crs",
    "transform", "nodata", "modality", "source_shape", "orientation", "source_format", "units", "dtype",
    "band_preset", "photometric", "source_dtype", "fov_source",
)  # fmt: skip


@dataclass
class Prediction:
    """A model's result for one input, on the input's *source* grid.

    Attributes:
        task, domain, class_names: from the checkpoint.
        meta: the source geometry (``read``'s meta: affine / CRS / transform / nodata / spacing /
            ``source_shape``, ``valid`` on the source grid); never patient fields.
        source: the input as read (source grid), for displays; None for streamed scenes.
        probabilities: classify: ``{class: probability}`` (softmax, or sigmoid if ``multi_label``).
        predicted: classify: the arg-max class, or every class over ``threshold`` (multi-label).
        label_map: segment: ``(*source_shape)`` integer class indices (0 outside ``valid``).
        heatmap: anomaly: ``(*source_shape)`` float32 reconstruction error (0 outside ``valid``).
        score: anomaly: the image score.
        threshold: anomaly: the pixel threshold used; classify (multi-label): the decision threshold.
        image_threshold: anomaly: the image threshold ``score`` is compared with (None if uncalibrated).
        anomaly_mask: anomaly: ``heatmap > threshold`` inside ``valid`` (None without a threshold).
        is_anomalous: anomaly: ``score > image_threshold`` (None without an image threshold).
        class_fractions: segment: fraction of the valid area per class.
        preprocess: the ``plugin.preprocess`` options the model's contract applied (e.g. the CT window).
        tta: the test-time augmentation the output was averaged over (:mod:`unimae.core.tta`).
        checkpoint: the checkpoint's JSON path.
        seconds: wall time of the prediction.
    """

    task: str
    domain: str
    class_names: list[str]
    meta: dict[str, Any]
    source: Sample | None = None
    multi_label: bool = False
    probabilities: dict[str, float] | None = None
    predicted: list[str] | None = None
    label_map: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    score: float | None = None
    threshold: float | None = None
    image_threshold: float | None = None
    anomaly_mask: np.ndarray | None = None
    is_anomalous: bool | None = None
    class_fractions: dict[str, float] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    tta: str = "none"
    checkpoint: str | None = None
    seconds: float = 0.0

    def with_threshold(self, threshold: float | None) -> Prediction:
        """The same anomaly result with another pixel threshold: a new mask, the same heat map (no re-run)."""
        if self.heatmap is None:  # only anomaly predictions carry a heat map
            raise ValueError("with_threshold applies to anomaly predictions")
        return dc_replace(self, threshold=None if threshold is None else float(threshold),
                          anomaly_mask=_threshold_mask(self.heatmap, self.meta, threshold))  # fmt: skip

    @property
    def anomalous_fraction(self) -> float | None:
        """The share of valid pixels above the pixel threshold (None without a mask)."""
        return _mask_fraction(self.anomaly_mask, self.meta)

    def report(self, outputs: Mapping[str, Path] | None = None) -> dict[str, Any]:
        """A JSON-serialisable report: task, classes, scores, threshold and the input's geometry."""
        rep: dict[str, Any] = {
            "file": _file_name(self.meta.get("path")),
            "checkpoint": self.checkpoint,
            "task": self.task,
            "domain": self.domain,
            "class_names": list(self.class_names),
            "preprocess": _jsonable(self.preprocess),
            "tta": self.tta,
            "input": safe_meta(self.meta),
        }
        rep.update(get_task(self.task).report(self))
        if outputs:
            rep["outputs"] = {k: Path(v).name for k, v in outputs.items()}
        rep["seconds"] = round(float(self.seconds), 4)
        return rep


def _file_name(path: Any) -> str | None:
    return None if path is None else Path(str(path)).name


def _threshold_mask(heat: np.ndarray, meta: Mapping[str, Any], threshold: float | None) -> np.ndarray | None:
    if threshold is None:
        return None
    return (heat > float(threshold)) & _valid_np(meta, heat.shape)


def _mask_fraction(mask: np.ndarray | None, meta: Mapping[str, Any]) -> float | None:
    if mask is None:
        return None
    valid = _valid_np(meta, mask.shape)
    n = int(valid.sum())
    return float((mask & valid).sum()) / n if n else 0.0


def _jsonable(value: Any) -> Any:
    """``value`` as strict JSON (see :func:`~unimae.core.checkpoint_io.to_jsonable`): NaN -> None, inf -> "inf"."""
    return to_jsonable(value, finite=True)


def safe_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The geometry of ``meta`` for reports: whitelisted keys, JSON types, no patient fields, no masks."""
    out: dict[str, Any] = {"file": _file_name(meta.get("path"))}
    for key in _REPORT_KEYS:
        if key in meta and meta[key] is not None and not _PATIENT.search(key):
            out[key] = _jsonable(meta[key])
    return out


def clean_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``meta`` without patient-like keys (defensive: plugins never put them there)."""
    return {k: v for k, v in meta.items() if not _PATIENT.search(str(k))}


def class_fractions(labels: np.ndarray, meta: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    valid = _valid_np(meta, labels.shape)
    n = int(valid.sum())
    counts = np.bincount(labels[valid].astype(np.int64).ravel(), minlength=len(names))[: len(names)]
    return {name: (float(counts[i]) / n if n else 0.0) for i, name in enumerate(names)}
