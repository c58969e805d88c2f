"""CT domain: NIfTI and DICOM series in HU, RAS resampling, HU windows, phantoms, NIfTI output.

Public API: :class:`CTPlugin` (the registered ``"ct"`` domain), :class:`SyntheticCT` (the phantom
dataset), :class:`CTAugment` (seeded MONAI crops/flips) and :data:`WINDOWS` (HU window presets).
"""

from unimae.domains.ct.augment import CTAugment
from unimae.domains.ct.plugin import CTPlugin
from unimae.domains.ct.preprocess import WINDOWS
from unimae.domains.ct.synthetic import SyntheticCT

__all__ = ["CTPlugin", "SyntheticCT", "CTAugment", "WINDOWS"]
