"""Fundus domain: colour retinal photographs (JPEG, PNG, TIFF, BMP).

Modules: ``reader`` (decoding and validation), ``fov`` (field of view), ``preprocess`` (CLAHE, green
emphasis, ImageNet mean/std), ``augment`` (seeded albumentations transform), ``synthetic`` (vessel
trees and lesions), ``writer`` (PNG label/heat maps and overlays on the source grid), ``plot``,
``datasets`` (DRIVE layout) and ``plugin`` (:class:`FundusPlugin`).
"""

from unimae.domains.fundus.augment import FundusTransform
from unimae.domains.fundus.datasets import DRIVE
from unimae.domains.fundus.fov import detect_fov, fov_bbox
from unimae.domains.fundus.plugin import FundusPlugin
from unimae.domains.fundus.preprocess import IMAGENET_MEAN, IMAGENET_STD, apply_clahe, denormalize, preprocess_fundus
from unimae.domains.fundus.synthetic import GRADE_LESION_COUNTS, SyntheticFundus, grade_for_count, render_fundus
from unimae.domains.fundus.writer import overlay_png, to_source_grid, write_prediction

__all__ = [
    "FundusPlugin",
    "FundusTransform",
    "SyntheticFundus",
    "DRIVE",
    "detect_fov",
    "fov_bbox",
    "preprocess_fundus",
    "apply_clahe",
    "denormalize",
    "render_fundus",
    "grade_for_count",
    "GRADE_LESION_COUNTS",
    "write_prediction",
    "overlay_png",
    "to_source_grid",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
