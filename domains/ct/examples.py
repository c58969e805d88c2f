"""CT example files for the app: a phantom as an LPS NIfTI or a zipped DICOM series (HU, rescale -1024).

Written from the synthetic phantom (a function of ``(seed, index)`` only), atomically; the DICOM series
carries made-up patient fields (:data:`~unimae.domains.examples.SYNTHETIC_PATIENT`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimae.core.fileio import atomic_path
from unimae.domains.examples import SYNTHETIC_PATIENT, new_dicom

__all__ = ["ct_phantom_hu", "write_ct_nifti", "write_ct_dicom_zip", "write_examples"]


def ct_phantom_hu(seed: int, index: int, size: Sequence[int], lesion_prob: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU ``(I, J, K)`` float32 on a RAS grid plus the organ labels and the lesion mask (see ``make_phantom``)."""
    from unimae.domains.ct.synthetic import make_phantom

    rng = np.random.default_rng([int(seed), int(index)])
    hu, organs, lesions, _ = make_phantom(rng, tuple(int(s) for s in size), float(lesion_prob))
    return hu, organs, lesions


def _lps_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """An LPS-stored grid (as DICOM-derived NIfTIs are): axis 0 -> patient left, 1 -> posterior, 2 -> superior."""
    sx, sy, sz = (float(s) for s in spacing)
    aff = np.diag([-sx, -sy, sz, 1.0])
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    aff[:3, 3] = -aff[:3, :3] @ centre
    return aff


def write_ct_nifti(
    path: str | Path, *, seed: int, index: int, size: Sequence[int], spacing: Sequence[float], lesion_prob: float = 1.0
) -> Path:
    """A phantom CT as NIfTI (int16 HU) stored in LPS order with the given voxel ``spacing`` (mm).

    The phantom is drawn on a RAS grid and flipped to LPS together with its affine, so the anatomy
    sits where it should in world coordinates (liver on the patient's right).
    """
    import nibabel as nib

    hu, _, _ = ct_phantom_hu(seed, index, size, lesion_prob)
    data = np.ascontiguousarray(hu[::-1, ::-1, :]).round().astype(np.int16)
    img = nib.Nifti1Image(data, _lps_affine(data.shape, spacing))
    img.header.set_xyzt_units("mm")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_ct_dicom_zip(
    path: str | Path, *, seed: int, index: int, size: Sequence[int], spacing: Sequence[float], lesion_prob: float = 1.0
) -> Path:
    """A phantom CT as a zipped axial DICOM series (one file per slice, HU = stored - 1024)."""
    from pydicom.uid import CTImageStorage, generate_uid

    hu, _, _ = ct_phantom_hu(seed, index, size, lesion_prob)
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = hu.shape
    # DICOM rows run anterior -> posterior (+y LPS), columns right -> left (+x LPS): pixel[r, c] = hu[nx-1-c, ny-1-r]
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    origin = np.array([(nx - 1) / 2.0 * sx, (ny - 1) / 2.0 * sy, -(nz - 1) / 2.0 * sz])  # LPS of pixel (0, 0), slice 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k in range(nz):
            ds = new_dicom(CTImageStorage, "CT")
            for key, value in SYNTHETIC_PATIENT.items():
                setattr(ds, key, value)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.SeriesDescription = "UniMAE synthetic phantom"
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # columns -> left, rows -> posterior
            pos = origin + np.array([0.0, 0.0, k * sz])
            ds.ImagePositionPatient = [float(-pos[0]), float(-pos[1]), float(pos[2])]
            ds.PixelSpacing = [sy, sx]
            ds.SliceThickness = sz
            ds.Rows, ds.Columns = ny, nx
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.WindowCenter, ds.WindowWidth = 40, 400
            sl = hu[::-1, ::-1, k].T  # rows: anterior -> posterior, columns: right -> left
            raw = np.clip(np.round(sl) + 1024, 0, 4095).astype(np.uint16)
            ds.PixelData = np.ascontiguousarray(raw).tobytes()
            one = io.BytesIO()
            ds.save_as(one, enforce_file_format=True)
            zf.writestr(f"series/IM{k + 1:04d}.dcm", one.getvalue())
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def write_examples(dest: Path, *, seed: int, size: Sequence[int], spacing: Sequence[float]) -> list[Path]:
    """The app's CT examples: a phantom with lesions (NIfTI), one as a zipped DICOM series, a normal one."""
    dest.mkdir(parents=True, exist_ok=True)
    return [
        write_ct_nifti(dest / "phantom_lesions.nii.gz", seed=seed, index=0, size=size, spacing=spacing),
        write_ct_dicom_zip(dest / "phantom_series_dicom.zip", seed=seed, index=1, size=size, spacing=spacing),
        write_ct_nifti(dest / "phantom_normal.nii.gz", seed=seed, index=2, size=size, spacing=spacing, lesion_prob=0.0),
    ]
