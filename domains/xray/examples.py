"""Chest X-ray example files for the app: synthetic radiographs as grey PNG (8 / 16 bit) or MONOCHROME1 DICOM.

The DICOM carries made-up patient fields (:data:`~unimae.domains.examples.SYNTHETIC_PATIENT`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimae.core.fileio import atomic_path
from unimae.domains.examples import SYNTHETIC_PATIENT, new_dicom

__all__ = ["write_xray_png", "write_xray_dicom", "write_examples"]


def _xray_phantom(seed: int, index: int, size: int | Sequence[int], findings: Sequence[str]) -> np.ndarray:
    from unimae.domains.xray.synthetic import chest_xray

    rng = np.random.default_rng([int(seed), int(index)])
    flags = {name: name in findings for name in ("nodule", "consolidation", "cardiomegaly")}
    return chest_xray(rng, size, **flags).image


def write_xray_png(
    path: str | Path, *, seed: int, index: int, size: int | Sequence[int], findings: Sequence[str] = (), bits: int = 8
) -> Path:
    """A synthetic chest radiograph as a grey PNG (8 or 16 bit), white = dense."""
    from PIL import Image

    img = _xray_phantom(seed, index, size, findings)
    path = Path(path)
    with atomic_path(path) as tmp:
        if bits == 16:
            Image.fromarray((img * 65535.0 + 0.5).astype(np.uint16)).save(tmp, format="PNG")
        else:
            Image.fromarray((img * 255.0 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    return path


def write_xray_dicom(
    path: str | Path, *, seed: int, index: int, size: int | Sequence[int], findings: Sequence[str] = (),
    pixel_spacing: float = 0.5,
) -> Path:  # fmt: skip
    """A synthetic chest radiograph as a MONOCHROME1 DX DICOM (12-bit, inverted grey: air is bright)."""
    from pydicom.uid import generate_uid

    img = _xray_phantom(seed, index, size, findings)
    ds = new_dicom("1.2.840.10008.5.1.4.1.1.1.1", "DX")  # digital X-ray, for presentation
    for key, value in SYNTHETIC_PATIENT.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [float(pixel_spacing), float(pixel_spacing)]
    raw = ((1.0 - img) * 4095.0 + 0.5).astype(np.uint16)  # MONOCHROME1: high values display dark
    ds.PixelData = np.ascontiguousarray(raw).tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return path


def write_examples(dest: Path, *, seed: int, size: int | Sequence[int]) -> list[Path]:
    """The app's X-ray examples: consolidation and normal (PNG), cardiomegaly with a nodule (MONOCHROME1 DICOM),
    nodules (16-bit PNG)."""
    dest.mkdir(parents=True, exist_ok=True)
    return [
        write_xray_png(dest / "chest_consolidation.png", seed=seed, index=0, size=size, findings=("consolidation",)),
        write_xray_png(dest / "chest_normal.png", seed=seed, index=1, size=size),
        write_xray_dicom(dest / "chest_cardiomegaly_mono1.dcm", seed=seed, index=2, size=size,
                         findings=("cardiomegaly", "nodule")),  # fmt: skip
        write_xray_png(dest / "chest_nodules_16bit.png", seed=seed, index=3, size=size, findings=("nodule",), bits=16),
    ]
