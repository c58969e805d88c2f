"""Evaluation metrics of the three tasks: pure functions on tensors / arrays (one namespace, ``M.``).

MONAI computes what it has (``compute_roc_auc`` for every AUROC, ``compute_dice`` and ``compute_iou``
for overlap); the rest is small code here (scikit-learn is not a dependency). Conventions:

* Inputs may be ``torch.Tensor`` or ``numpy`` arrays; outputs are Python floats / ``numpy`` arrays.
* An undefined value (AUROC with one class present, Dice of a class absent from the truth, kappa when
  everything is one grade) is ``NaN`` here; :func:`to_json` turns it into ``null`` and the ``*_metrics``
  summaries add a human-readable ``notes`` entry saying why. Nothing crashes on degenerate data.

Classification (``targets``: ``(N,)`` class indices, or ``(N, K)`` multi-hot for multi-label)
    :func:`confusion_matrix`, :func:`accuracy`, :func:`balanced_accuracy`, :func:`f1_scores`,
    :func:`macro_f1`, :func:`quadratic_weighted_kappa`, :func:`auroc`, :func:`per_class_auroc`,
    :func:`roc_curve`, and the summary :func:`classification_metrics`.
Segmentation (label maps of class indices, computed only inside ``valid``)
    :func:`dice_iou`, :func:`label_confusion`, and the summary :func:`segmentation_metrics`
    (a background class 0 is reported apart from the mean; a real class 0, e.g. land-cover water, is not).
Anomaly
    :func:`auroc` on image scores, :func:`pixel_auroc`, :func:`aupro` / :func:`pro_curve` and the
    streaming :class:`PixelAccumulator` that collects (deterministically subsampled) pixels per case.

AUPRO definition (Bergmann et al., MVTec AD, IJCV 2021)
-------------------------------------------------------
Each connected component of a ground-truth anomaly mask (full connectivity: 8-neighbours in 2D,
26 in 3D, per image, inside ``valid``) is a *region*. At a threshold ``t`` the per-region overlap is
``|{x in region : map(x) >= t}| / |region|``; the PRO is the mean overlap over all regions of all
images, and the false-positive rate is the fraction of normal (mask 0, valid) pixels of all images
with ``map >= t``. The PRO-vs-FPR curve is integrated (trapezoids, exact at every distinct score,
interpolated at the limit) from FPR 0 to ``fpr_limit`` (0.3 by default) and divided by ``fpr_limit``,
so a perfect detector scores 1 and a random one about ``fpr_limit / 2``.

The code lives in :mod:`~unimae.core.metrics_common` (shared helpers, binary AUROC / ROC),
:mod:`~unimae.core.metrics_classify`, :mod:`~unimae.core.metrics_segment` and
:mod:`~unimae.core.metrics_anomaly`; this module gathers them.
"""

from __future__ import annotations

from unimae.core.metrics_anomaly import (
    PixelAccumulator,
    anomaly_metrics,
    aupro,
    aupro_from_curve,
    pixel_auroc,
    pro_curve,
    region_labels,
    stratified_subsample,
)
from unimae.core.metrics_classify import (
    accuracy,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    f1_scores,
    macro_f1,
    per_class_auroc,
    quadratic_weighted_kappa,
)
from unimae.core.metrics_common import auroc, roc_curve, safe_divide, to_json, to_numpy
from unimae.core.metrics_segment import BACKGROUND_NAMES, dice_iou, is_background, label_confusion, segmentation_metrics  # noqa: F401

__all__ = [
    "to_numpy",
    "to_json",
    "safe_divide",
    "confusion_matrix",
    "accuracy",
    "balanced_accuracy",
    "f1_scores",
    "macro_f1",
    "quadratic_weighted_kappa",
    "auroc",
    "per_class_auroc",
    "roc_curve",
    "classification_metrics",
    "dice_iou",
    "label_confusion",
    "is_background",
    "segmentation_metrics",
    "pixel_auroc",
    "stratified_subsample",
    "region_labels",
    "pro_curve",
    "aupro",
    "aupro_from_curve",
    "PixelAccumulator",
    "anomaly_metrics",
]
