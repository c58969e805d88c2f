"""Example files for the app: each domain writes its own (``domains/<name>/examples.py``).

The app asks every registered plugin for its examples (:meth:`~unimae.domains.base.DomainPlugin.write_examples`,
sized by the plugin's ``demo_examples``); this module keeps the earlier import path of the built-in writers.
"""

from __future__ import annotations

from unimae.domains.ct.examples import ct_phantom_hu, write_ct_dicom_zip, write_ct_nifti
from unimae.domains.examples import SYNTHETIC_PATIENT
from unimae.domains.fundus.examples import write_fundus_image
from unimae.domains.multispectral.examples import write_scene_geotiff
from unimae.domains.xray.examples import write_xray_dicom, write_xray_png

__all__ = [
    "SYNTHETIC_PATIENT",
    "write_ct_nifti",
    "write_ct_dicom_zip",
    "write_fundus_image",
    "write_xray_png",
    "write_xray_dicom",
    "write_scene_geotiff",
    "ct_phantom_hu",
]
