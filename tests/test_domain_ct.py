"""Tests of the CT domain plugin on real files written here (NIfTI, DICOM folder / zip / multi-frame)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.ct import CTPlugin, SyntheticCT
from unimae.domains.ct.augment import left_right_swaps
from unimae.domains.ct.preprocess import model_to_hu, window_to_model
from unimae.domains.ct.synthetic import CLASS_HU, LESION_HU, LESION_HU_SPREAD, SEG_CLASS_NAMES
from unimae.domains.examples import new_dicom

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# a phantom defined in world (RAS, mm): soft-tissue ellipsoid in air, a bone marker at right-anterior-superior
BODY_CENTRE = np.array([5.0, -10.0, 20.0])
MARKER = BODY_CENTRE + np.array([7.0, 6.0, 9.0])


def world_phantom(world: np.ndarray) -> np.ndarray:
    """HU at RAS points ``(..., 3)``: air -1000, body 40, marker sphere 1000."""
    d = (world - BODY_CENTRE) / np.array([13.0, 11.0, 18.0])
    hu = np.where((d**2).sum(-1) <= 1.0, 40.0, -1000.0)
    return np.where(((world - MARKER) ** 2).sum(-1) <= 3.5**2, 1000.0, hu).astype(np.float32)


def voxel_world(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def oblique_affine() -> np.ndarray:
    """Permuted, flipped (L, S, P), anisotropic (1.0, 1.25, 3.0 mm) and rotated 12 degrees about z."""
    t = np.radians(12.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    cols = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T * np.array([1.0, 1.25, 3.0])
    aff = np.eye(4)
    aff[:3, :3] = rot @ cols
    aff[:3, 3] = BODY_CENTRE - aff[:3, :3] @ (np.array([34, 36, 14]) - 1) / 2.0
    return aff


def write_oblique_nifti(path: Path, dtype=np.int16) -> tuple[np.ndarray, np.ndarray]:
    aff = oblique_affine()
    hu = world_phantom(voxel_world(aff, (34, 36, 14)))
    img = nib.Nifti1Image(hu.astype(dtype), aff)
    img.set_qform(aff, code=1)
    nib.save(img, str(path))
    return hu, aff


def marker_world_centroid(volume: np.ndarray, affine: np.ndarray, above: float) -> np.ndarray:
    idx = np.argwhere(volume > above).astype(np.float64)
    assert len(idx) > 0
    return (affine[:3, :3] @ idx.mean(0)) + affine[:3, 3]


# -- DICOM writing with pydicom -------------------------------------------------------------------


def dicom_dataset(*, rows: int, cols: int, with_pixels: bool = True, raw: np.ndarray | None = None, **tags):
    from pydicom.uid import CTImageStorage

    ds = new_dicom(CTImageStorage, "CT")
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-778899"
    ds.PatientBirthDate = "19700101"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for k, v in tags.items():
        setattr(ds, k, v)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(raw, dtype=np.uint16).tobytes()
    return ds


def axial_cosines(deg: float = 0.0) -> np.ndarray:
    t = np.radians(deg)
    return np.array([np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t), 0.0])


SERIES_ROWS, SERIES_COLS, SERIES_N = 24, 30, 9
PIXEL_SPACING = (0.7, 0.9)  # (between rows, between columns)
SLICE_STEP = 2.5


def write_series(
    folder: Path, *, iop: np.ndarray | None = None, seed: int = 0, sizes=None, positions=None, number: int = 4
) -> dict:
    """A CT series with shuffled file names. Slice k holds HU 10*k, a marker of 900 HU at (row 3, col 25)
    on slice 0 only. Returns the geometry used."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    iop = axial_cosines() if iop is None else iop
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    origin = np.array([-120.0, -80.0, -300.0])
    perm = np.random.default_rng(seed).permutation(SERIES_N)
    uid = generate_uid()
    ipps = []
    for k in range(SERIES_N):
        r, c = sizes[k] if sizes else (SERIES_ROWS, SERIES_COLS)
        hu = np.full((r, c), 10.0 * k)
        if k == 0:
            hu[3, 25] = 900.0
        ipp = origin + normal * SLICE_STEP * k if positions is None else positions[k]
        ipps.append(ipp)
        ds = dicom_dataset(
            rows=r,
            cols=c,
            raw=hu + 1024,
            ImagePositionPatient=[float(v) for v in ipp],
            ImageOrientationPatient=[float(v) for v in iop],
            PixelSpacing=list(PIXEL_SPACING),
            SliceThickness=3.0,
            SeriesInstanceUID=uid,
            SeriesNumber=number,
            InstanceNumber=int(perm[k]) + 1,
        )
        # file names in shuffled order: sorting by name would scramble the slices
        ds.save_as(folder / f"IM{perm[k]:04d}.dcm", enforce_file_format=True)
    return {"iop": iop, "ipps": ipps}


def zip_folder(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f"series/{f.relative_to(folder)}")
    return path


@pytest.fixture(scope="module")
def plugin() -> CTPlugin:
    return CTPlugin()


# -- protocol -------------------------------------------------------------------------------------


def test_plugin_attributes(plugin):
    assert isinstance(plugin, DomainPlugin)
    assert (plugin.name, plugin.spatial_dims, plugin.modality) == ("ct", 3, "CT")
    assert plugin.tasks == ("segment", "anomaly")
    assert {".nii", ".nii.gz", ".dcm", ".zip"} <= set(plugin.extensions)
    assert set(plugin.presets) == {"soft_tissue", "lung", "bone", "liver", "brain"}
    expected = {
        "soft_tissue": (40, 400),
        "lung": (-600, 1500),
        "bone": (480, 2500),
        "liver": (90, 150),
        "brain": (40, 80),
    }
    assert {k: tuple(v["window"]) for k, v in plugin.presets.items()} == expected
    assert plugin.seg_class_names == SEG_CLASS_NAMES


def test_accepts(plugin, tmp_path):
    write_series(tmp_path / "series")
    plain = tmp_path / "series" / "IM0000.dcm"
    bare = tmp_path / "no_suffix"
    bare.write_bytes(plain.read_bytes())
    (tmp_path / "empty_dir").mkdir()
    assert plugin.accepts("a.nii.gz") and plugin.accepts("A.NII") and plugin.accepts("s.zip")
    assert plugin.accepts(tmp_path / "series") and plugin.accepts(bare)
    assert not plugin.accepts(tmp_path / "empty_dir") and not plugin.accepts("photo.png")


# -- NIfTI ----------------------------------------------------------------------------------------


def test_read_nifti_hu_affine_spacing(plugin, tmp_path):
    hu, aff = write_oblique_nifti(tmp_path / "ct.nii.gz")
    s = plugin.read(tmp_path / "ct.nii.gz")
    assert s.image.shape == (1, 34, 36, 14) and s.image.dtype == torch.float32
    np.testing.assert_allclose(s.meta["affine"], aff, atol=1e-4)
    np.testing.assert_allclose(s.meta["spacing"], (1.0, 1.25, 3.0), atol=1e-5)
    assert s.meta["source_shape"] == (34, 36, 14)
    assert s.meta["orientation"] == "LSP"
    np.testing.assert_array_equal(s.image[0].numpy(), hu)
    assert s.image.min() == -1000 and s.image.max() == 1000
    assert s.meta["spatial_dims"] == 3 and s.meta["modality"] == "CT" and s.meta["channels"][0]["name"] == "CT"
    assert s.meta["valid"].all()


def test_nifti_scale_slope_applied(plugin, tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    s = plugin.read(tmp_path / "scaled.nii")
    np.testing.assert_allclose(s.image[0].numpy(), raw * 2.0 - 1024.0)
    # a trailing singleton 4th axis is one volume, not a 4D series
    nib.save(nib.Nifti1Image(raw[..., None], np.eye(4)), str(tmp_path / "single.nii.gz"))
    assert plugin.read(tmp_path / "single.nii.gz").image.shape == (1, 4, 5, 6)


def test_preprocess_reorients_resamples_and_keeps_world_position(plugin, tmp_path):
    write_oblique_nifti(tmp_path / "ct.nii.gz")
    s = plugin.read(tmp_path / "ct.nii.gz")
    q = plugin.preprocess(s, window="soft_tissue", spacing=(1.5, 1.5, 1.5))
    import nibabel as nib_

    assert "".join(nib_.aff2axcodes(q.meta["grid_affine"])) == "RAS"
    np.testing.assert_allclose(q.meta["spacing"], (1.5, 1.5, 1.5), atol=1e-5)
    assert float(q.image.min()) >= -1.0 and float(q.image.max()) <= 1.0
    # source geometry kept for writing back
    np.testing.assert_allclose(q.meta["affine"], s.meta["affine"])
    assert q.meta["source_shape"] == (34, 36, 14)
    # the bone marker (clipped to +1) sits at the same world position
    centroid = marker_world_centroid(q.image[0].numpy(), q.meta["grid_affine"], above=0.99)
    np.testing.assert_allclose(centroid, MARKER, atol=1.5)
    # and in RAS voxel order it is right/anterior/superior of the body centre
    vox = np.argwhere(q.image[0].numpy() > 0.99).mean(0)
    body_vox = np.linalg.solve(q.meta["grid_affine"], np.r_[BODY_CENTRE, 1.0])[:3]
    assert (vox > body_vox).all()
    # soft tissue window: 40 HU -> 0 in model space
    inside = np.linalg.solve(q.meta["grid_affine"], np.r_[BODY_CENTRE - [5, 0, 0], 1.0])[:3].round().astype(int)
    assert abs(float(q.image[0][tuple(inside)])) < 1e-3
    json.dumps(q.meta["normalization"])
    assert q.meta["normalization"] == {
        "kind": "window",
        "center": 40.0,
        "width": 400.0,
        "range": [-1.0, 1.0],
        "preset": "soft_tissue",
    }


def test_preprocess_valid_is_body_region(plugin, tmp_path):
    write_oblique_nifti(tmp_path / "ct.nii.gz")
    q = plugin.preprocess(plugin.read(tmp_path / "ct.nii.gz"))
    valid = q.meta["valid"].numpy()
    assert valid.shape == q.spatial_shape
    centre = np.linalg.solve(q.meta["grid_affine"], np.r_[BODY_CENTRE, 1.0])[:3].round().astype(int)
    assert valid[tuple(centre)] and not valid[0, 0, 0] and not valid[-1, -1, -1]
    body_hu = model_to_hu(q.image[0], 40.0, 400.0).numpy()
    tissue = body_hu > -150
    assert valid[tissue].mean() > 0.99  # the body is valid ...
    assert (body_hu[~valid] <= -159).all()  # ... air outside is not ...
    assert valid.sum() < 2.5 * tissue.sum()  # ... save a margin of 2 voxels around the body
    q_all = plugin.preprocess(plugin.read(tmp_path / "ct.nii.gz"), valid_region="all")
    assert q_all.meta["valid"].all()


@pytest.mark.parametrize(
    "name,hu,expected", [("lung", -600.0, 0.0), ("bone", 1730.0, 1.0), ("liver", 15.0, -1.0), ("brain", 60.0, 0.5)]
)
def test_window_presets(plugin, name, hu, expected):
    c, w = plugin.presets[name]["window"]
    assert float(window_to_model(torch.tensor(hu), c, w)) == pytest.approx(expected)


def test_preprocess_bad_arguments(plugin, tmp_path):
    write_oblique_nifti(tmp_path / "ct.nii.gz")
    s = plugin.read(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="soft_tissue"):
        plugin.preprocess(s, window="sof_tissue")
    with pytest.raises(InputError, match="width"):
        plugin.preprocess(s, window=(40, -5))
    with pytest.raises(InputError, match="orientation"):
        plugin.preprocess(s, orientation="RRS")
    with pytest.raises(InputError, match="already preprocessed"):
        plugin.preprocess(plugin.preprocess(s, spacing=None))


def test_label_map_round_trip_to_source_grid(plugin, tmp_path):
    hu, aff = write_oblique_nifti(tmp_path / "ct.nii.gz")
    s = plugin.read(tmp_path / "ct.nii.gz")
    q = plugin.preprocess(s, spacing=(1.5, 1.5, 1.5))
    labels = torch.zeros(q.spatial_shape, dtype=torch.long)
    labels[q.image[0] > -0.99] = 1  # body
    labels[q.image[0] > 0.99] = 2  # marker
    out = plugin.write(labels, q.meta, tmp_path / "out" / "labels.nii.gz")
    back = nib.load(str(out))
    assert back.shape == (34, 36, 14)
    np.testing.assert_allclose(back.affine, aff, atol=1e-4)
    assert back.get_data_dtype() == np.uint8 and int(back.header["sform_code"]) == 2  # the source's code
    data = np.asarray(back.dataobj)
    truth = np.where(hu > 500, 2, np.where(hu > -500, 1, 0))
    assert (data == truth).mean() > 0.97
    assert (data[truth == 2] == 2).mean() > 0.6  # the small marker survives the 1.5 mm round trip
    # a float heat map goes back with linear interpolation as float32
    heat = (q.image[0] + 1.0) / 2.0
    out2 = plugin.write(heat, q.meta, tmp_path / "heat.nii")
    back2 = nib.load(str(out2))
    assert back2.get_data_dtype() == np.float32 and back2.shape == (34, 36, 14)
    np.testing.assert_allclose(back2.affine, aff, atol=1e-4)
    h = np.asarray(back2.dataobj)
    from scipy.ndimage import binary_erosion

    core = binary_erosion(truth == 1, iterations=2)  # away from the body edge (blurred by 3 mm slices)
    assert core.sum() > 100 and abs(float(np.median(h[core])) - 0.5) < 0.02  # 40 HU -> 0 -> heat 0.5
    assert float(np.median(h[truth == 0])) == 0.0


def test_write_checks_and_is_atomic(plugin, tmp_path, monkeypatch):
    ds = plugin.synthetic(1, size=20)
    s = ds[0]
    target = tmp_path / "m.nii.gz"
    plugin.write(s.mask, s.meta, target)
    back = nib.load(str(target))
    np.testing.assert_allclose(back.affine, s.meta["affine"])
    np.testing.assert_array_equal(np.asarray(back.dataobj), s.mask.numpy())
    before = target.read_bytes()
    with pytest.raises(InputError, match="does not match"):
        plugin.write(torch.zeros(5, 5, 5, dtype=torch.long), s.meta, target)
    with pytest.raises(InputError, match=r"\.nii"):
        plugin.write(s.mask, s.meta, tmp_path / "m.png")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        plugin.write(s.mask * 0, s.meta, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_read_mask(plugin, tmp_path):
    hu, aff = write_oblique_nifti(tmp_path / "ct.nii.gz")
    labels = np.where(hu > 500, 2, np.where(hu > -500, 1, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, aff), str(tmp_path / "seg.nii.gz"))
    s = plugin.read(tmp_path / "ct.nii.gz")
    m = plugin.read_mask(tmp_path / "seg.nii.gz", like=s)
    assert m.dtype == torch.int64 and m.shape == s.spatial_shape
    np.testing.assert_array_equal(m.numpy(), labels)
    # on a preprocessed sample the mask lands on the new grid
    q = plugin.preprocess(s)
    mq = plugin.read_mask(tmp_path / "seg.nii.gz", like=q)
    assert mq.shape == q.spatial_shape
    assert (mq[q.image[0] > 0.99] == 2).float().mean() > 0.6  # a 3.5 mm marker seen through 3 mm slices
    # a mask attached on the source grid is carried through preprocess the same way
    s.mask = m
    carried = plugin.preprocess(s).mask
    assert carried.dtype == torch.int64
    torch.testing.assert_close(carried, mq)
    # the same voxels stored in another axis order are accepted
    flipped = nib.Nifti1Image(
        labels[::-1].copy(), aff @ np.array([[-1, 0, 0, 33], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    )
    nib.save(flipped, str(tmp_path / "seg_flipped.nii.gz"))
    np.testing.assert_array_equal(plugin.read_mask(tmp_path / "seg_flipped.nii.gz", like=s).numpy(), labels)
    # wrong shape, wrong place, non-integer labels
    nib.save(nib.Nifti1Image(labels[:-1], aff), str(tmp_path / "short.nii.gz"))
    with pytest.raises(InputError, match="does not match"):
        plugin.read_mask(tmp_path / "short.nii.gz", like=s)
    moved = aff.copy()
    moved[:3, 3] += 40.0
    nib.save(nib.Nifti1Image(labels, moved), str(tmp_path / "moved.nii.gz"))
    with pytest.raises(InputError, match="affine"):
        plugin.read_mask(tmp_path / "moved.nii.gz", like=s)
    nib.save(nib.Nifti1Image(labels * 0.5, aff), str(tmp_path / "frac.nii.gz"))
    with pytest.raises(InputError, match="non-integer"):
        plugin.read_mask(tmp_path / "frac.nii.gz")


# -- DICOM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tilt", [0.0, 30.0])
def test_read_dicom_folder_sorted_by_position(plugin, tmp_path, tilt):
    geo = write_series(tmp_path / "series", iop=axial_cosines(tilt))
    s = plugin.read(tmp_path / "series")
    assert s.image.shape == (1, SERIES_COLS, SERIES_ROWS, SERIES_N)
    hu = s.image[0].numpy()
    # sorted by position (file names are shuffled): slice k holds HU 10*k (RescaleIntercept -1024 applied)
    np.testing.assert_allclose(hu[0, 0, :], 10.0 * np.arange(SERIES_N))
    assert hu[25, 3, 0] == 900.0  # (column 25, row 3) of the first slice
    np.testing.assert_allclose(s.meta["spacing"], (PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_STEP), atol=1e-6)
    # the affine maps a voxel to the DICOM patient position (LPS -> RAS)
    row, col = geo["iop"][:3], geo["iop"][3:]
    for c, r, k in [(25, 3, 0), (0, 0, 0), (7, 11, 5), (SERIES_COLS - 1, SERIES_ROWS - 1, SERIES_N - 1)]:
        lps = geo["ipps"][k] + c * PIXEL_SPACING[1] * row + r * PIXEL_SPACING[0] * col
        np.testing.assert_allclose(s.meta["affine"] @ [c, r, k, 1.0], LPS_TO_RAS @ np.r_[lps, 1.0], atol=1e-4)
    assert s.meta["slice_thickness"] == 3.0 and s.meta["n_slices"] == SERIES_N
    # no patient fields anywhere in meta
    text = repr(s.meta)
    assert "Doe" not in text and "PID-778899" not in text and "19700101" not in text


def test_read_dicom_zip_matches_folder(plugin, tmp_path):
    write_series(tmp_path / "series")
    z = zip_folder(tmp_path / "series", tmp_path / "series.zip")
    a, b = plugin.read(tmp_path / "series"), plugin.read(z)
    torch.testing.assert_close(a.image, b.image)
    np.testing.assert_allclose(a.meta["affine"], b.meta["affine"])


def test_dicom_round_trip_and_preprocess(plugin, tmp_path):
    write_series(tmp_path / "series", iop=axial_cosines(30.0))
    s = plugin.read(tmp_path / "series")
    q = plugin.preprocess(s, spacing=(1.0, 1.0, 1.0), window=(0.0, 200.0), valid_region="fov")
    assert "".join(nib.aff2axcodes(q.meta["grid_affine"])) == "RAS"
    # the 900 HU marker keeps its world position through reorientation and resampling
    src_world = s.meta["affine"] @ [25, 3, 0, 1.0]
    hu_q = model_to_hu(q.image[0], 0.0, 200.0).numpy()
    peak = np.unravel_index(np.argmax(hu_q), hu_q.shape)
    assert np.linalg.norm((q.meta["grid_affine"] @ [*peak, 1.0])[:3] - src_world[:3]) < 1.5
    labels = (q.image[0] > 0.35).long()  # HU > 35: slices 4 and up -> 1
    out = plugin.write(labels, q.meta, tmp_path / "seg.nii.gz")
    back = nib.load(str(out))
    assert back.shape == (SERIES_COLS, SERIES_ROWS, SERIES_N)
    np.testing.assert_allclose(back.affine, s.meta["affine"], atol=1e-4)
    truth = (s.image[0].numpy() > 35.0).astype(np.uint8)
    inner = np.asarray(back.dataobj)[2:-2, 2:-2, :] == truth[2:-2, 2:-2, :]  # edges: outside the rotated grid
    assert inner.mean() > 0.98


def test_read_dicom_multiframe(plugin, tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence

    n, rows, cols = 4, 6, 8
    raw = np.stack([np.full((rows, cols), 1024 + 100 * k) for k in (2, 0, 3, 1)])  # frames out of order
    z = [5.0, 0.0, 7.5, 2.5]
    ds = dicom_dataset(rows=rows, cols=cols, raw=raw, NumberOfFrames=n, SeriesInstanceUID="1.2.3")
    shared = Dataset()
    po, pm, tr = Dataset(), Dataset(), Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    pm.PixelSpacing, pm.SliceThickness = [0.5, 0.5], 2.5
    tr.RescaleSlope, tr.RescaleIntercept, tr.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = DSequence([po]), DSequence([pm])
    shared.PixelValueTransformationSequence = DSequence([tr])
    ds.SharedFunctionalGroupsSequence = DSequence([shared])
    frames = []
    for k in range(n):
        pp, item = Dataset(), Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, z[k]]
        item.PlanePositionSequence = DSequence([pp])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DSequence(frames)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    s = plugin.read(tmp_path / "enhanced.dcm")
    assert s.image.shape == (1, cols, rows, n)
    np.testing.assert_allclose(s.image[0, 0, 0].numpy(), [0, 100, 200, 300])
    np.testing.assert_allclose(s.meta["spacing"], (0.5, 0.5, 2.5))


# -- bad input ------------------------------------------------------------------------------------


def _bad_nifti(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / ("bad.nii" if kind in ("truncated", "png") else "bad.nii.gz")
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "corrupt":
        p.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    elif kind == "png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 400)
    elif kind == "truncated":
        nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.int16), np.eye(4)), str(p))
        p.write_bytes(p.read_bytes()[:2000])
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.zeros((10, 12, 8, 3), np.int16), np.eye(4)), str(p))
    elif kind == "nan":
        vol = np.zeros((6, 6, 6), np.float32)
        vol[2, 2, 2] = np.nan
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    return p


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "empty"),
        ("corrupt", "corrupt|not a NIfTI"),
        ("png", "not a NIfTI"),
        ("truncated", "truncated"),
        ("4d", "4D NIfTI .*10x12x8x3"),
        ("nan", "NaN"),
    ],
)
def test_bad_nifti(plugin, tmp_path, kind, message):
    p = _bad_nifti(tmp_path, kind)
    with pytest.raises(InputError, match=message) as err:
        plugin.read(p)
    assert "\n" not in str(err.value) and str(err.value).startswith(p.name)


def test_pixel_limit_checked_from_header(plugin, tmp_path, monkeypatch):
    # the voxel data is truncated: only a header check can give the pixel-limit message
    p = _bad_nifti(tmp_path, "truncated")
    write_series(tmp_path / "series")
    monkeypatch.setenv("UNIMAE_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="over the limit"):
        plugin.read(p)
    with pytest.raises(InputError, match="over the limit"):
        plugin.read(tmp_path / "series")


def _bad_dicom(tmp_path: Path, kind: str) -> Path:
    if kind == "no_pixels":
        ds = dicom_dataset(
            rows=4,
            cols=4,
            with_pixels=False,
            ImagePositionPatient=[0, 0, 0],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            PixelSpacing=[1, 1],
        )
        ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
        return tmp_path / "nopix.dcm"
    if kind == "not_image":
        ds = dicom_dataset(rows=4, cols=4, with_pixels=False)
        del ds.Rows, ds.Columns
        ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
        return tmp_path / "report.dcm"
    if kind == "not_dicom":
        (tmp_path / "x.dcm").write_text("this is a text file, not DICOM " * 20)
        return tmp_path / "x.dcm"
    if kind == "empty_dcm":
        (tmp_path / "e.dcm").write_bytes(b"")
        return tmp_path / "e.dcm"
    if kind == "truncated":
        write_series(tmp_path / "s")
        f = tmp_path / "s" / "IM0003.dcm"
        f.write_bytes(f.read_bytes()[:-300])
        return tmp_path / "s"
    if kind == "sizes":
        sizes = [(SERIES_ROWS, SERIES_COLS)] * SERIES_N
        sizes[4] = (SERIES_ROWS - 4, SERIES_COLS)
        write_series(tmp_path / "s", sizes=sizes)
        return tmp_path / "s"
    if kind == "duplicate":
        pos = [np.array([0.0, 0.0, 2.5 * k]) for k in range(SERIES_N)]
        pos[5] = pos[4]
        write_series(tmp_path / "s", positions=pos)
        return tmp_path / "s"
    if kind == "irregular":
        pos = [np.array([0.0, 0.0, 2.5 * k + (2.5 if k >= 5 else 0.0)]) for k in range(SERIES_N)]  # one missing
        write_series(tmp_path / "s", positions=pos)
        return tmp_path / "s"
    if kind == "empty_folder":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "notes.txt").write_text("no images here")
        return tmp_path / "d"
    if kind == "zip_no_dicom":
        with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:
            zf.writestr("readme.txt", "hello")
        return tmp_path / "docs.zip"
    if kind == "not_zip":
        (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04 but not really a zip archive" * 3)
        return tmp_path / "fake.zip"
    if kind == "two_series":
        write_series(tmp_path / "s" / "a", number=4)
        write_series(tmp_path / "s" / "b", number=5, iop=axial_cosines(30.0))
        return tmp_path / "s"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("no_pixels", "no pixel data"),
        ("not_image", "no pixel data"),
        ("not_dicom", "not a DICOM"),
        ("empty_dcm", "empty"),
        ("truncated", "IM0003.dcm.*(truncated|corrupt)"),
        ("sizes", "inconsistent sizes"),
        ("duplicate", "share a position"),
        ("irregular", "irregular .*2.5 to 5 mm"),
        ("empty_folder", "no DICOM files in the folder"),
        ("zip_no_dicom", "no DICOM files in the archive"),
        ("not_zip", "not a valid zip"),
        ("two_series", "2 DICOM series"),
    ],
)
def test_bad_dicom(plugin, tmp_path, kind, message):
    p = _bad_dicom(tmp_path, kind)
    with pytest.raises(InputError, match=message) as err:
        plugin.read(p)
    assert "\n" not in str(err.value) and str(err.value).startswith(p.name)
    assert "Doe" not in str(err.value)


def test_pick_one_of_two_series(plugin, tmp_path):
    p = _bad_dicom(tmp_path, "two_series")
    with pytest.raises(InputError, match="series 4 .9 slices., series 5"):
        plugin.read(p)
    with pytest.raises(InputError, match="no DICOM series number 9; found series 4, 5"):
        plugin.read(p, dicom_series=9)
    s4, s5 = plugin.read(p, dicom_series=4), plugin.read(p, dicom_series=5)
    assert s4.meta["series_number"] == 4 and s5.meta["series_number"] == 5
    assert "".join(nib.aff2axcodes(s4.meta["affine"])) == "LPS"
    assert not np.allclose(s4.meta["affine"], s5.meta["affine"])  # series 5 is rotated 30 degrees
    assert plugin.load(p, dicom_series=5, spacing=None).meta["series_number"] == 5


# -- synthetic ------------------------------------------------------------------------------------


def test_synthetic_labels_match_images(plugin):
    ds = plugin.synthetic(3, seed=5, size=48, task="segment", lesion_prob=0.0)
    assert isinstance(ds, SyntheticCT) and len(ds) == 3
    for s in ds:
        assert s.image.shape == (1, 48, 48, 48) and s.mask.dtype == torch.int64
        hu = model_to_hu(s.image[0], 40.0, 400.0)
        for name in ("liver", "spleen", "kidney_left", "kidney_right"):
            m = s.mask == SEG_CLASS_NAMES.index(name)
            assert int(m.sum()) > 20, name
            assert abs(float(hu[m].median()) - CLASS_HU[name]) < 8.0, name
            assert float(hu[m].std()) < 20.0, name
        for name in ("lung_left", "lung_right"):  # below the soft-tissue window: clipped to -1
            m = s.mask == SEG_CLASS_NAMES.index(name)
            assert int(m.sum()) > 20 and float(s.image[0][m].max()) <= -0.99

        # anatomy on a RAS grid: liver on the patient's right (+x), spleen left, kidneys posterior, lungs superior
        def centroid(name, s=s):
            return np.argwhere((s.mask == SEG_CLASS_NAMES.index(name)).numpy()).mean(0)

        assert centroid("liver")[0] > 24 > centroid("spleen")[0]
        assert centroid("kidney_right")[0] > 24 > centroid("kidney_left")[0]
        assert centroid("kidney_left")[1] < centroid("liver")[1]
        assert centroid("lung_left")[2] > centroid("kidney_left")[2]
    # lungs are distinct from soft tissue in HU: visible in the lung window
    lung = plugin.synthetic(1, seed=5, size=48, window="lung")[0]
    m = lung.mask == SEG_CLASS_NAMES.index("lung_left")
    assert abs(float(model_to_hu(lung.image[0][m], -600.0, 1500.0).median()) - CLASS_HU["lung_left"]) < 10.0


def test_synthetic_meta_contract(plugin):
    s = plugin.synthetic(1, size=(32, 24, 20))[0]
    m = s.meta
    for key in ("spatial_dims", "channels", "spacing", "affine", "valid", "modality", "path", "source_shape"):
        assert key in m
    assert m["spatial_dims"] == 3 and m["path"] is None and m["modality"] == "CT"
    assert m["spacing"] == (1.5, 1.5, 1.5) and m["source_shape"] == (32, 24, 20)
    assert m["valid"].shape == (32, 24, 20) and m["valid"].dtype == torch.bool
    assert 0.2 < float(m["valid"].float().mean()) < 0.8
    assert not m["valid"][0, 0, 0] and m["valid"][16, 12, 10]
    np.testing.assert_allclose(m["affine"] @ [15.5, 11.5, 9.5, 1.0], [0, 0, 0, 1])  # centred world origin
    json.dumps(m["normalization"])
    assert -1.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0


def test_synthetic_deterministic(plugin):
    a = plugin.synthetic(6, seed=3, size=24)
    b = SyntheticCT(2, seed=3, size=24)
    c = plugin.synthetic(6, seed=4, size=24)
    torch.testing.assert_close(a[1].image, b[1].image)
    torch.testing.assert_close(a[1].mask, b[1].mask)
    torch.testing.assert_close(a[1].image, a[1].image)
    assert not torch.equal(a[0].image, a[1].image)
    assert not torch.equal(a[1].image, c[1].image)
    torch.testing.assert_close(a[-1].image, a[5].image)
    with pytest.raises(IndexError):
        a[6]


def test_synthetic_anomaly(plugin):
    ds = plugin.synthetic(6, seed=1, size=40, task="anomaly", lesion_prob=1.0)
    seg = plugin.synthetic(6, seed=1, size=40, task="segment", lesion_prob=1.0)
    n_pos = 0
    for s, organs in zip(ds, seg):
        assert s.mask.dtype == torch.int64 and set(s.mask.unique().tolist()) <= {0, 1}
        assert int(s.label) == int(s.mask.sum() > 0)
        if int(s.label):
            n_pos += 1
            lesion = s.mask.bool()
            hu = model_to_hu(s.image[0], 40.0, 400.0)
            # hypodense: each lesion within LESION_HU +- LESION_HU_SPREAD (noise 10 HU), far below the liver
            assert abs(float(hu[lesion].median()) - LESION_HU) < LESION_HU_SPREAD + 5.0
            assert float(hu[lesion].median()) < CLASS_HU["liver"] - 45.0
            assert int(lesion.sum()) >= 19  # a sphere >= 2 voxels in radius at 40^3: visible
            hosts = organs.mask[lesion].unique().tolist()
            assert set(hosts) <= {SEG_CLASS_NAMES.index("liver"), SEG_CLASS_NAMES.index("spleen")}
    assert n_pos >= 5
    normal = plugin.synthetic(4, seed=1, size=40, task="anomaly", lesion_prob=0.0)
    assert all(int(s.label) == 0 and int(s.mask.sum()) == 0 for s in normal)
    with pytest.raises(InputError, match="task"):
        plugin.synthetic(1, task="classify")


# -- augmentation ---------------------------------------------------------------------------------


def _hu_agrees_with_labels(s: Sample) -> None:
    hu = model_to_hu(s.image[0], 40.0, 400.0)
    for name in ("liver", "spleen"):
        m = s.mask == SEG_CLASS_NAMES.index(name)
        if int(m.sum()) > 5:
            assert abs(float(hu[m].median()) - CLASS_HU[name]) < 8.0


def test_augment_shape_determinism_and_alignment(plugin):
    s = plugin.synthetic(1, seed=2, size=40, lesion_prob=0.0)[0]
    t = plugin.augment(train=True, input_size=(32, 24, 16))
    a, b = t(s, 7), t(s, 7)
    assert a.image.shape == (1, 32, 24, 16) and a.mask.shape == (32, 24, 16) and a.meta["valid"].shape == (32, 24, 16)
    torch.testing.assert_close(a.image, b.image)
    torch.testing.assert_close(a.mask, b.mask)
    assert torch.equal(a.meta["valid"], b.meta["valid"])
    outs = [t(s, seed).image for seed in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    for seed in range(4):
        _hu_agrees_with_labels(t(s, seed))  # mask and valid follow the image
    # eval: a centre crop, independent of the seed
    e = plugin.augment(train=False, input_size=24)
    torch.testing.assert_close(e(s, 0).image, e(s, 99).image)
    torch.testing.assert_close(e(s, 0).image, s.image[:, 8:32, 8:32, 8:32])
    np.testing.assert_allclose(e(s, 0).meta["grid_affine"] @ [0, 0, 0, 1.0], s.meta["affine"] @ [8, 8, 8, 1.0])


def test_augment_that_changes_nothing_skips_the_pipeline_and_returns_what_it_would(plugin, monkeypatch):
    """A volume of input_size with no flips (the anomaly demo's training volumes; evaluation at input_size) takes
    the shortcut, and gets exactly what the MONAI pad / crop / flip pipeline returns for it."""
    from unimae.domains.ct.augment import CTAugment

    s = plugin.synthetic(1, seed=3, size=24, task="anomaly", lesion_prob=1.0)[0]
    s.meta["valid"][:2] = False
    cases = [CTAugment(train=True, input_size=24, flip_prob=0.0), CTAugment(train=True, input_size=24, flip_axes=()),
             CTAugment(train=False, input_size=24)]
    for t in cases:
        assert t._is_identity(s)
        fast = t(s, 5)
        with monkeypatch.context() as m:
            m.setattr(CTAugment, "_is_identity", lambda self, sample: False)
            slow = t(s, 5)
        assert torch.equal(fast.image, slow.image) and fast.image.dtype == slow.image.dtype
        assert torch.equal(fast.mask, slow.mask) and fast.mask.dtype == slow.mask.dtype == torch.long
        assert torch.equal(fast.meta["valid"], slow.meta["valid"]) and not bool(fast.meta["valid"][:2].any())
        np.testing.assert_array_equal(fast.meta["grid_affine"], slow.meta["grid_affine"])
        fast.image.zero_()  # the shortcut hands out new tensors, as the pipeline does
        assert float(s.image.abs().sum()) > 0
    # a flip that may happen, or another size, goes through the pipeline
    assert not CTAugment(train=True, input_size=24)._is_identity(s)
    assert not CTAugment(train=False, input_size=20)._is_identity(s)


def test_augment_pads_small_volumes_as_invalid(plugin):
    s = plugin.synthetic(1, seed=2, size=(20, 16, 16))[0]
    s.meta["valid"] = torch.ones(s.spatial_shape, dtype=torch.bool)
    out = plugin.augment(train=True, input_size=24)(s, 3)
    assert out.image.shape == (1, 24, 24, 24)
    valid = out.meta["valid"]
    assert int(valid.sum()) == 20 * 16 * 16
    assert not valid[0, 0, 0] and not valid[:, :4].any()
    assert float(out.image[0][~valid].max()) == pytest.approx(float(s.image.min()))
    assert int(out.mask[~valid].max()) == 0


def test_augment_multichannel_and_side_swap(plugin):
    s = plugin.synthetic(1, seed=4, size=32, lesion_prob=0.0)[0]
    two = s.replace(image=torch.cat([s.image, -s.image]))
    out = plugin.augment(train=True, input_size=32, flip_axes=(0,), flip_prob=1.0)(two, 1)
    assert out.image.shape == (2, 32, 32, 32)
    torch.testing.assert_close(out.image[1], -out.image[0])
    torch.testing.assert_close(out.image[0], torch.flip(s.image[0], dims=[0]))  # mirrored left-right
    # labels follow the mirror and left/right organs swap names: the grid is still RAS
    np.testing.assert_allclose(out.meta["grid_affine"], s.meta["affine"])
    assert left_right_swaps(SEG_CLASS_NAMES) == {3: 4, 4: 3, 5: 6, 6: 5}
    x = {n: np.argwhere((out.mask == SEG_CLASS_NAMES.index(n)).numpy())[:, 0].mean() for n in SEG_CLASS_NAMES[1:]}
    assert x["kidney_right"] > x["kidney_left"] and x["lung_right"] > x["lung_left"]
    assert x["liver"] < 16  # mirrored anatomy
    _hu_agrees_with_labels(out)


def test_train_dataset_collates(plugin):
    view = plugin.train_dataset(None, input_size=24, num_samples=2, seed=0)
    batch = torch.utils.data.default_collate([view[0], view[1]])
    assert batch["image"].shape == (2, 1, 24, 24, 24) and batch["mask"].shape == (2, 24, 24, 24)
    assert batch["valid"].dtype == torch.bool


def test_load_reads_and_preprocesses(plugin, tmp_path):
    write_oblique_nifti(tmp_path / "ct.nii.gz")
    q = plugin.load(tmp_path / "ct.nii.gz", window="bone", spacing=2.0)
    assert q.meta["normalization"]["preset"] == "bone"
    np.testing.assert_allclose(q.meta["spacing"], (2.0, 2.0, 2.0), atol=1e-5)


# -- plotting -------------------------------------------------------------------------------------


def test_plot(plugin):
    s = plugin.synthetic(1, size=32)[0]
    fig = plugin.plot(s)
    assert len(fig.axes) == 3 and [a.get_title() for a in fig.axes] == ["axial", "coronal", "sagittal"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "liver" in legend and "background" not in legend
    heat = plugin.plot(s, prediction=torch.rand(1, 32, 32, 32))
    assert len(heat.axes) == 4  # three views and a colour bar


# -- real samples (opt-in) ------------------------------------------------------------------------


@pytest.mark.samples
def test_sample_nifti(plugin):
    path = SAMPLES / "ct" / "example_ct.nii.gz"
    if not path.exists():
        pytest.skip("../shared/samples not present")
    s = plugin.read(path)
    assert s.spatial_shape == (122, 101, 112)
    np.testing.assert_allclose(s.meta["spacing"], (3.0, 3.0, 3.0))
    hu = s.image[0].numpy()
    assert -1100 < np.percentile(hu, 1) < -900 and abs(float(hu[0, 0, 0]) + 1000) < 150  # air
    q = plugin.preprocess(s, spacing=3.0)
    assert 0.2 < float(q.meta["valid"].float().mean()) < 0.95


@pytest.mark.samples
def test_sample_dicom_series(plugin):
    path = SAMPLES / "ct" / "example_ct_dicom"
    if not path.exists():
        pytest.skip("../shared/samples not present")
    s = plugin.read(path)
    assert s.spatial_shape == (512, 512, 20) and s.meta["n_slices"] == 20
    # 3 mm thick slices, placed every 2 mm (ImagePositionPatient steps by 2 mm: overlapping slices)
    assert s.meta["slice_thickness"] == 3.0
    np.testing.assert_allclose(s.meta["spacing"], (0.9765625, 0.9765625, 2.0), atol=1e-6)
    hu = s.image[0].numpy()
    assert float(hu.min()) == -1024.0 and abs(float(np.percentile(hu, 1)) + 1000) < 50
    assert "".join(nib.aff2axcodes(s.meta["affine"])) == "LPS"
