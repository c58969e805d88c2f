"""Chest X-ray domain: DICOM / PNG / JPEG radiographs, lung segmentation, findings, anomaly maps.

Modules: :mod:`.dicom_io` and :mod:`.image_io` (readers), :mod:`.intensity` (model-space normalisation),
:mod:`.augment` (seeded albumentations), :mod:`.synthetic` (thorax phantom), :mod:`.output` (PNG writers and
overlays), :mod:`.plotting`, and :mod:`.plugin` (:class:`XRayPlugin`).
"""

from unimae.domains.xray.augment import XRayAugment
from unimae.domains.xray.dicom_io import read_dicom
from unimae.domains.xray.image_io import read_image, read_label_image
from unimae.domains.xray.output import overlay_png, to_source_grid, write_png
from unimae.domains.xray.plotting import plot_sample
from unimae.domains.xray.plugin import XRayPlugin
from unimae.domains.xray.synthetic import SyntheticChestXRay, chest_xray

__all__ = [
    "XRayPlugin",
    "XRayAugment",
    "SyntheticChestXRay",
    "chest_xray",
    "read_dicom",
    "read_image",
    "read_label_image",
    "write_png",
    "overlay_png",
    "to_source_grid",
    "plot_sample",
]
