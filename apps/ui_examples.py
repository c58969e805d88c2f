"""Example files for the app, written from the project's synthetic generators in real file formats.

Each writer turns one synthetic sample (a function of ``(seed, index)`` only) back into what a user would
upload: a CT phantom as an oblique-free LPS NIfTI or a zipped DICOM series (HU, rescale intercept
-1024), a fundus photograph as PNG / JPEG, a chest radiograph as PNG or a MONOCHROME1 DICOM, a
land-cover scene as a 13-band Sentinel-2 GeoTIFF (uint16 reflectance x 10000, UTM CRS, nodata 0 in a
corner). Every write is atomic. The DICOM examples carry made-up patient fields (``SYNTHETIC^PHANTOM``)
so that one can check the app never shows them.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimae.core.fileio import atomic_path

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

SYNTHETIC_PATIENT = {"PatientName": "SYNTHETIC^PHANTOM", "PatientID": "UNIMAE-DEMO-0001", "PatientBirthDate": "19000101"}


# ------------------------------------------------------------------------------------------------
# CT
# ------------------------------------------------------------------------------------------------
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
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu, _, _ = ct_phantom_hu(seed, index, size, lesion_prob)
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = hu.shape
    # DICOM rows run anterior -> posterior (+y LPS), columns right -> left (+x LPS): pixel[r, c] = hu[nx-1-c, ny-1-r]
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    origin = np.array([(nx - 1) / 2.0 * sx, (ny - 1) / 2.0 * sy, -(nz - 1) / 2.0 * sz])  # LPS of pixel (0, 0), slice 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k in range(nz):
            fm = FileMetaDataset()
            fm.MediaStorageSOPClassUID = CTImageStorage
            fm.MediaStorageSOPInstanceUID = generate_uid()
            fm.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = fm
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
            ds.Modality = "CT"
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


# ------------------------------------------------------------------------------------------------
# fundus
# ------------------------------------------------------------------------------------------------
def write_fundus_image(
    path: str | Path, *, seed: int, index: int, size: int | Sequence[int], lesion_prob: float, quality: int = 92
) -> Path:
    """A synthetic fundus photograph as 8-bit RGB PNG or JPEG (by the suffix of ``path``)."""
    from PIL import Image

    from unimae.domains.fundus.synthetic import SyntheticFundus

    scene = SyntheticFundus(int(index) + 1, seed=seed, size=size, lesion_prob=lesion_prob).scene(int(index))
    rgb = (np.clip(scene.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return path


# ------------------------------------------------------------------------------------------------
# chest X-ray
# ------------------------------------------------------------------------------------------------
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
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = _xray_phantom(seed, index, size, findings)
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray, for presentation
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
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


# ------------------------------------------------------------------------------------------------
# multispectral
# ------------------------------------------------------------------------------------------------
def write_scene_geotiff(
    path: str | Path, *, seed: int, index: int, size: int | Sequence[int], task: str = "segment",
    lesion_prob: float | None = None, nodata_corner: int = 0,
) -> Path:  # fmt: skip
    """A synthetic Sentinel-2 L1C scene as a 13-band uint16 GeoTIFF (reflectance x 10000) with its CRS.

    ``nodata_corner`` pixels square in the top-left corner are set to the nodata value 0 (as at a
    swath edge), so the app shows them transparent.
    """
    import rasterio
    from rasterio.transform import Affine

    from unimae.domains.multispectral.synthetic import SyntheticScenes

    ds = SyntheticScenes(int(index) + 1, seed=seed, size=size, task=task, lesion_prob=lesion_prob)
    scene = ds[int(index)]
    norm = scene.meta["normalization"]
    refl = scene.image.numpy() * np.asarray(norm["std"])[:, None, None] + np.asarray(norm["mean"])[:, None, None]
    data = np.clip(np.round(refl * 10000.0), 1, 65535).astype(np.uint16)
    if nodata_corner > 0:
        n = int(nodata_corner)
        yy, xx = np.mgrid[: data.shape[1], : data.shape[2]]
        data[:, (yy + xx) < n] = 0  # a triangular swath edge
    a, b, c, d, e, f = scene.meta["transform"]
    names = [ch["name"] for ch in scene.meta["channels"]]
    path = Path(path)
    with atomic_path(path) as tmp:
        with rasterio.open(
            tmp, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype="uint16",
            crs=scene.meta["crs_name"], transform=Affine(a, b, c, d, e, f), nodata=0, compress="deflate",
        ) as out:  # fmt: skip
            out.write(data)
            for i, name in enumerate(names, start=1):
                out.set_band_description(i, name)
    return path
