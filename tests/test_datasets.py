"""Local dataset layouts, domain guessing and ``describe`` (``unimae info``).

Layout tests use small fake plugins defined here (a PNG reader and a DICOM-series "volume" lister), so
they do not depend on the real domain plugins; tests that use the real plugins skip when those cannot
be imported.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path
from unimae.domains.base import DomainPlugin, Sample, TrainingView, channel_list
from unimae.domains.examples import new_dicom
from unimae.domains.datasets import (
    LocalDataset,
    describe,
    format_description,
    guess_domain_name,
    local_dataset,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


# ------------------------------------------------------------------------------------------------
# fake plugins
# ------------------------------------------------------------------------------------------------
class FakePNG(DomainPlugin):
    """Reads grey PNGs with PIL: (1, H, W) in [0, 1]; preprocess subsamples and normalises."""

    name = "fakepng"
    spatial_dims = 2
    modality = "fake"
    extensions = (".png",)
    tasks = ("classify", "segment")
    class_names = ("a", "b")
    seg_class_names = ("background", "fg")

    def read(self, path, *, scale: float = 1.0) -> Sample:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0 * float(scale)
        except OSError as err:
            raise InputError("not a readable PNG", path) from err
        h, w = arr.shape
        meta = {
            "spatial_dims": 2,
            "channels": channel_list(["grey"]),
            "spacing": (1.0, 1.0),
            "affine": None,
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.ones((h, w), dtype=torch.bool),
            "modality": "fake",
            "path": str(path),
            "source_shape": (h, w),
        }
        return Sample(torch.from_numpy(arr)[None], meta)

    def read_mask(self, path, *, like: Sample | None = None) -> torch.Tensor:
        with Image.open(path) as im:
            m = torch.from_numpy((np.asarray(im.convert("L")) > 127).astype(np.int64))
        if like is not None and tuple(m.shape) != like.spatial_shape:
            raise InputError(f"mask is {tuple(m.shape)} but the image is {like.spatial_shape}", path)
        return m

    def preprocess(self, sample: Sample, *, downsample: int = 1) -> Sample:
        k = int(downsample)
        meta = dict(sample.meta)
        meta["valid"] = sample.valid[::k, ::k]
        meta["normalization"] = {"kind": "meanstd", "mean": [0.5], "std": [0.25]}
        mask = None if sample.mask is None else sample.mask[::k, ::k]
        return sample.replace(image=(sample.image[:, ::k, ::k] - 0.5) / 0.25, meta=meta, mask=mask)

    def augment(self, *, train: bool, input_size=224):
        def transform(sample: Sample, seed: int) -> Sample:
            if not train:
                return sample
            rng = np.random.default_rng(seed)
            if rng.random() < 0.5:
                mask = None if sample.mask is None else sample.mask.flip(-1)
                meta = dict(sample.meta, valid=sample.valid.flip(-1))
                return sample.replace(image=sample.image.flip(-1), mask=mask, meta=meta)
            return sample

        return transform

    def synthetic(self, n, *, seed=0, size=None, task="segment", lesion_prob=None) -> Dataset:
        plugin = self

        class _Syn(Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                rng = np.random.default_rng([seed, i])
                s = int(size or 16)
                img = rng.random((1, s, s), dtype=np.float32)
                return Sample(torch.from_numpy(img), {"spatial_dims": 2, "modality": plugin.modality, "path": None})

        return _Syn()

    def write(self, array, meta, path, *, kind: str = "label") -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG")
        return path

    def plot(self, sample: Sample, prediction=None, *, title: str | None = None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.imshow(sample.image[0].numpy(), cmap="gray")
        overlay = prediction if prediction is not None else sample.mask
        if overlay is not None:
            ax.imshow(np.asarray(overlay), alpha=0.4)
        if title:
            ax.set_title(title)
        return fig


class FakeMultiLabel(FakePNG):
    name = "fakemulti"
    multi_label = True


class FakeVolume(FakePNG):
    """A 3D plugin whose images are DICOM series folders (only listing is exercised)."""

    name = "fakevol"
    spatial_dims = 3
    extensions = (".dcm", ".nii", ".nii.gz", ".zip")


# ------------------------------------------------------------------------------------------------
# file writers
# ------------------------------------------------------------------------------------------------
def png(path: Path, value: int | np.ndarray = 128, size: tuple[int, int] = (8, 12), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size, value, dtype=np.uint8) if np.isscalar(value) else np.asarray(value, dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "L":
        img = img.convert(mode)
    img.save(path)
    return path


def dicom(path: Path, modality: str = "CT", z: float = 0.0, patient: str = "Doe^Jane", size: int = 8) -> Path:
    from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    sop = CTImageStorage if modality == "CT" else ComputedRadiographyImageStorage
    ds = new_dicom(sop, modality)
    ds.PatientName = patient
    ds.PatientID = "SECRET-ID-42"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.7, 0.7]
    if modality == "CT":
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.5
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    ds.PixelData = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * 10).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_series(folder: Path, n: int = 3, ext: str = ".dcm") -> Path:
    for k in range(n):
        dicom(folder / f"IM{k:04d}{ext}", z=2.5 * k)
    return folder


def geotiff(path: Path, count: int = 13, crs: str | None = "EPSG:32633", size: int = 8) -> Path:
    import rasterio
    from rasterio.transform import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(count * size * size, dtype=np.uint16).reshape(count, size, size) % 5000) + 100
    kw = dict(driver="GTiff", height=size, width=size, count=count, dtype="uint16", nodata=0)
    if crs is not None:
        kw.update(crs=crs, transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **kw) as dst:
            dst.write(data)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------
# folder per class
# ------------------------------------------------------------------------------------------------
def test_class_folders(tmp_path):
    png(tmp_path / "normal" / "n1.png", 0)
    png(tmp_path / "normal" / "n2.png", 51)
    png(tmp_path / "pneumonia" / "p1.png", 204)
    png(tmp_path / "pneumonia" / "sub" / "p2.png", 255)  # one level deeper is still the class
    (tmp_path / "pneumonia" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    png(tmp_path / ".hidden" / "x.png")

    ds = local_dataset(FakePNG(), tmp_path)
    assert isinstance(ds, LocalDataset)
    assert ds.layout == "class_folders"
    assert ds.class_names == ("normal", "pneumonia")
    assert len(ds) == 4
    assert [f.name for f in ds.files] == ["n1.png", "n2.png", "p1.png", "p2.png"]
    assert ds.labels == [0, 0, 1, 1]
    s = ds[2]
    assert s.label.dtype == torch.long and s.label.ndim == 0 and int(s.label) == 1
    # read + preprocess happened: 204/255 normalised by (x - 0.5) / 0.25
    assert torch.allclose(s.image, torch.full((1, 8, 12), (204 / 255 - 0.5) / 0.25))
    assert s.meta["normalization"]["kind"] == "meanstd"
    assert ds[-1].meta["path"].endswith("p2.png")
    with pytest.raises(IndexError):
        ds[4]


def test_class_folders_are_single_label_unless_asked(tmp_path):
    png(tmp_path / "effusion" / "a.png")
    png(tmp_path / "nodule" / "b.png")
    # a folder per class is one class per image, even for a plugin whose synthetic findings are multi-label
    ds = local_dataset(FakeMultiLabel(), tmp_path)
    assert not ds.multi_label and ds.labels == [0, 1]
    assert ds[1].label.dtype == torch.long and int(ds[1].label) == 1
    assert any("single-label" in n for n in ds.notes)
    # multi_label=True (data.multi_label=true) asks for multi-hot findings
    multi = local_dataset(FakeMultiLabel(), tmp_path, multi_label=True)
    lab = multi[1].label
    assert multi.multi_label and lab.dtype == torch.float32 and lab.tolist() == [0.0, 1.0]


def test_class_folders_dicom_series_are_images_not_classes(tmp_path):
    data = tmp_path / "data"
    dicom_series(data / "normal" / "patient1")
    dicom_series(data / "normal" / "patient2", ext="")  # extension-less files: found by the DICM magic
    dicom_series(data / "tumour" / "patient3")
    ds = local_dataset(FakeVolume(), data)
    assert ds.layout == "class_folders"
    assert ds.class_names == ("normal", "tumour")
    assert [f.name for f in ds.files] == ["patient1", "patient2", "patient3"]
    assert ds.labels == [0, 0, 1]

    # a plain folder of series: one image per series folder
    plain = tmp_path / "plain"
    dicom_series(plain / "s1")
    dicom_series(plain / "s2")
    ds2 = local_dataset(FakeVolume(), plain)
    assert ds2.layout == "folder" and [f.name for f in ds2.files] == ["s1", "s2"]
    # the source itself a series: a dataset of one volume
    ds3 = local_dataset(FakeVolume(), plain / "s1")
    assert ds3.files == [plain / "s1"]
    # for a 2D plugin reading .dcm, a folder of DICOM files is a class of single images
    class FakeDcm2D(FakePNG):
        name = "fakedcm"
        extensions = (".dcm",)

    ds4 = local_dataset(FakeDcm2D(), data / "normal")
    # patient1's three .dcm files; patient2's extension-less files are not accepted by this plugin
    assert ds4.layout == "folder" and len(ds4) == 3
    assert all(f.suffix == ".dcm" and f.parent.name == "patient1" for f in ds4.files)


# ------------------------------------------------------------------------------------------------
# images/ + masks/
# ------------------------------------------------------------------------------------------------
def _pattern(seed: int, shape=(8, 12)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) > 0.5, 255, 0).astype(np.uint8)


def test_segmentation_pairs_by_stem_with_suffixes(tmp_path):
    pats = {name: _pattern(i) for i, name in enumerate(["a", "b", "c", "d"])}
    png(tmp_path / "images" / "a.png", pats["a"])
    png(tmp_path / "images" / "b.png", pats["b"])
    png(tmp_path / "images" / "c_training.png", pats["c"])
    png(tmp_path / "images" / "d.png", pats["d"])
    png(tmp_path / "masks" / "a_mask.png", pats["a"])
    png(tmp_path / "masks" / "b.png", pats["b"])
    png(tmp_path / "masks" / "c_manual1.png", pats["c"])
    png(tmp_path / "masks" / "d_seg.png", pats["d"])
    png(tmp_path / "masks" / "orphan_mask.png", 0)  # a mask with no image is ignored

    ds = local_dataset(FakePNG(), tmp_path, downsample=2)
    assert ds.layout == "segmentation"
    assert [m.name for m in ds.masks] == ["a_mask.png", "b.png", "c_manual1.png", "d_seg.png"]
    assert ds.labels is None and ds.has_masks
    for i, name in enumerate("abcd"):
        s = ds[i]
        # the mask was read in source geometry and carried through preprocess (subsampled by 2)
        assert s.mask.shape == s.image.shape[1:] == (4, 6)
        expected = torch.from_numpy((pats[name][::2, ::2] > 127).astype(np.int64))
        assert torch.equal(s.mask, expected)
        assert torch.equal(s.mask.bool(), s.image[0] > 0)


def test_segmentation_drive_layout_and_mask_dir(tmp_path):
    root = tmp_path / "training"
    for k in (21, 22):
        png(root / "images" / f"{k}_training.png", _pattern(k))
        png(root / "1st_manual" / f"{k}_manual1.png", _pattern(k))
        png(root / "mask" / f"{k}_training_mask.png", 255)  # DRIVE's field-of-view masks
    ds = local_dataset(FakePNG(), root)
    assert [m.parent.name for m in ds.masks] == ["1st_manual", "1st_manual"]
    assert [m.name for m in ds.masks] == ["21_manual1.png", "22_manual1.png"]
    ds_fov = local_dataset(FakePNG(), root, mask_dir="mask")
    assert [m.name for m in ds_fov.masks] == ["21_training_mask.png", "22_training_mask.png"]
    assert int(ds_fov[0].mask.sum()) == 8 * 12
    with pytest.raises(InputError, match="mask folder 'nope' not found"):
        local_dataset(FakePNG(), root, mask_dir="nope")


def test_segmentation_missing_masks_are_listed(tmp_path):
    for name in ["a", "b", "c", "d", "e"]:
        png(tmp_path / "images" / f"{name}.png")
    png(tmp_path / "masks" / "a_mask.png")
    with pytest.raises(InputError) as err:
        local_dataset(FakePNG(), tmp_path)
    msg = one_line(err)
    assert "4 of 5 images" in msg and "b.png, c.png, d.png and 1 more" in msg and "masks/" in msg


def test_segmentation_mask_shape_mismatch_is_reported_at_read(tmp_path):
    png(tmp_path / "images" / "a.png", size=(8, 12))
    png(tmp_path / "masks" / "a.png", size=(6, 6))
    ds = local_dataset(FakePNG(), tmp_path)
    with pytest.raises(InputError, match="mask is"):
        ds[0]


# ------------------------------------------------------------------------------------------------
# CSV manifests
# ------------------------------------------------------------------------------------------------
def _csv_tree(tmp_path: Path) -> Path:
    for k in range(6):
        png(tmp_path / "imgs" / f"i{k}.png", _pattern(k))
        png(tmp_path / "segs" / f"i{k}.png", _pattern(k))
    rows = [
        ["../imgs/i0.png", "cat", "../segs/i0.png", "train"],
        ["../imgs/i1.png", "dog", "../segs/i1.png", "train"],
        ["../imgs/i2.png", "cat", "../segs/i2.png", "training"],
        ["../imgs/i3.png", "bird", "../segs/i3.png", "val"],
        ["../imgs/i4.png", "dog", "../segs/i4.png", "validation"],
        [str(tmp_path / "imgs" / "i5.png"), "cat", "../segs/i5.png", "test"],  # absolute paths work too
    ]
    return write_csv(tmp_path / "lists" / "manifest.csv", ["image", "label", "mask", "split"], rows)


def test_csv_split_label_mask_relative_paths(tmp_path, monkeypatch):
    csv_path = _csv_tree(tmp_path)
    monkeypatch.chdir(tmp_path / "imgs")  # paths resolve against the CSV's folder, not the cwd
    train = local_dataset(FakePNG(), csv_path, split="train")
    val = local_dataset(FakePNG(), csv_path, split="val")
    test = local_dataset(FakePNG(), csv_path, split="test")
    assert train.layout == "csv" and train.split_source == "column"
    assert [f.name for f in train.files] == ["i0.png", "i1.png", "i2.png"]
    assert [f.name for f in val.files] == ["i3.png", "i4.png"]
    assert [f.name for f in test.files] == ["i5.png"]
    # class names come from all rows, so every split agrees (bird only appears in val)
    assert train.class_names == val.class_names == ("bird", "cat", "dog")
    assert train.labels == [1, 2, 1] and val.labels == [0, 2]
    s = val[0]
    assert int(s.label) == 0 and torch.equal(s.mask, torch.from_numpy((_pattern(3) > 127).astype(np.int64)))
    # "valid" is an alias of val
    assert local_dataset(FakePNG(), csv_path, split="valid").files == val.files


def test_csv_integer_labels_with_class_name_column_and_path_alias(tmp_path):
    for k in range(3):
        png(tmp_path / "x" / f"{k}.png")
    csv_path = write_csv(
        tmp_path / "m.csv",
        ["path", "label", "class_name", "patient_id"],
        [["x/0.png", "1", "Pneumonia", "p1"], ["x/1.png", "0", "No_findings", "p2"], ["x/2.png", "1", "Pneumonia", "p3"]],
    )
    ds = local_dataset(FakePNG(), csv_path)
    assert ds.class_names == ("No_findings", "Pneumonia")
    assert ds.labels == [1, 0, 1]
    assert "p1" not in str(ds[0].meta)
    # integers without names give "0", "1" ...; a fixed class list maps names and indices
    csv2 = write_csv(tmp_path / "n.csv", ["image", "label"], [["x/0.png", "2"], ["x/1.png", "0"]])
    assert local_dataset(FakePNG(), csv2).class_names == ("0", "1", "2")
    fixed = local_dataset(FakePNG(), csv2, class_names=["a", "b", "c"])
    assert fixed.labels == [2, 0] and fixed.class_names == ("a", "b", "c")


def test_csv_multi_label(tmp_path):
    for k in range(3):
        png(tmp_path / f"{k}.png")
    csv_path = write_csv(
        tmp_path / "m.csv",
        ["image", "label"],
        [["0.png", "effusion|nodule"], ["1.png", "nodule"], ["2.png", ""]],
    )
    ds = local_dataset(FakePNG(), csv_path)  # a '|' anywhere makes it multi-label, even for this plugin
    assert ds.multi_label and ds.class_names == ("effusion", "nodule")
    assert ds[0].label.tolist() == [1.0, 1.0]
    assert ds[1].label.tolist() == [0.0, 1.0]
    assert ds[2].label.tolist() == [0.0, 0.0]  # an empty cell means no findings
    assert ds[0].label.dtype == torch.float32
    # one name per row is single-label, whatever the plugin; data.multi_label=true makes it multi-hot
    csv2 = write_csv(tmp_path / "s.csv", ["image", "label"], [["0.png", "nodule"], ["1.png", "effusion"]])
    assert not local_dataset(FakeMultiLabel(), csv2).multi_label
    ds2 = local_dataset(FakeMultiLabel(), csv2, multi_label=True)
    assert ds2.multi_label and ds2[0].label.tolist() == [0.0, 1.0]
    with pytest.raises(InputError, match=r"m.csv: line 2: several labels \('\|'\) but data.multi_label=false"):
        local_dataset(FakePNG(), csv_path, multi_label=False)
    # single-label plugin and single names: long indices
    ds3 = local_dataset(FakePNG(), csv2)
    assert not ds3.multi_label and ds3[0].label.dtype == torch.long


@pytest.mark.parametrize(
    "header, rows, split, message",
    [
        (["picture", "label"], [["a.png", "x"]], "train", r"no 'image' column \(columns: picture, label"),
        (["image", "label"], [["a.png", "x"], ["missing.png", "x"]], "train", r"line 3: image file 'missing.png' not found"),
        (["image", "label"], [["a.png", "x"], ["notes.txt", "x"]], "train", r"line 3: 'notes.txt' is not a file the fakepng domain reads \(accepted: .png\)"),
        (["image", "label", "split"], [["a.png", "x", "train"], ["a.png", "x", "holdout"]], "train", r"line 3: unknown split 'holdout'"),
        (["image", "label", "split"], [["a.png", "x", "train"]], "val", r"no rows with split 'val' \(splits present: train\)"),
        (["image", "label"], [["a.png", "cat"], ["a.png", ""]], "train", r"line 3: empty label"),
        (["image", "label"], [["a.png", "-1"]], "train", r"line 2: negative label"),
        (["image", "mask"], [["a.png", "a.png"], ["a.png", "nomask.png"]], "train", r"line 3: mask file 'nomask.png' not found"),
        (["image", "mask"], [["a.png", ""]], "train", r"line 2: empty mask path"),
        (["image"], [["  "]], "train", r"line 2: empty image path"),
        (["image", "label", "class_name"], [["a.png", "0", "cat"], ["a.png", "0", "dog"]], "train", r"line 3: label 0 is called 'dog' here but 'cat' earlier"),
    ],
)
def test_csv_errors_name_the_csv_the_line_and_the_problem(tmp_path, header, rows, split, message):
    png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    csv_path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(InputError, match=message) as err:
        local_dataset(FakePNG(), csv_path, split=split)
    msg = one_line(err)
    assert msg.startswith("bad.csv: ")


def test_csv_unknown_class_and_out_of_range_with_fixed_classes(tmp_path):
    png(tmp_path / "a.png")
    c1 = write_csv(tmp_path / "c1.csv", ["image", "label"], [["a.png", "cat"], ["a.png", "dgo"]])
    with pytest.raises(InputError, match=r"c1.csv: line 3: unknown class 'dgo'; known: cat, dog. Did you mean 'dog'"):
        local_dataset(FakePNG(), c1, class_names=["cat", "dog"])
    c2 = write_csv(tmp_path / "c2.csv", ["image", "label"], [["a.png", "5"]])
    with pytest.raises(InputError, match=r"line 2: label 5 is out of range for 2 classes"):
        local_dataset(FakePNG(), c2, class_names=["cat", "dog"])


def test_csv_empty_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.csv: manifest is empty"):
        local_dataset(FakePNG(), empty)
    header = write_csv(tmp_path / "h.csv", ["image", "label"], [])
    with pytest.raises(InputError, match="h.csv: manifest has a header but no rows"):
        local_dataset(FakePNG(), header)


def test_folder_with_manifest_csv_uses_it(tmp_path):
    png(tmp_path / "images" / "a.png")
    png(tmp_path / "images" / "b.png")
    write_csv(tmp_path / "manifest.csv", ["path", "label"], [["images/a.png", "x"], ["images/b.png", "y"]])
    ds = local_dataset(FakePNG(), tmp_path)
    assert ds.layout == "csv" and ds.class_names == ("x", "y") and ds.labels == [0, 1]


# ------------------------------------------------------------------------------------------------
# plain folder, splits, errors
# ------------------------------------------------------------------------------------------------
def test_plain_folder_recurses_one_level(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "sub" / "b.png")
    png(tmp_path / "sub" / "deeper" / "c.png")  # two levels down: not listed
    (tmp_path / "readme.md").write_text("x")
    ds = local_dataset(FakePNG(), tmp_path)
    assert ds.layout == "folder" and ds.labels is None and ds.masks is None
    assert [f.name for f in ds.files] == ["a.png", "b.png"]
    assert ds[0].label is None and ds[0].mask is None
    # an images/ folder alone is an unlabelled folder, not a class called "images"
    other = tmp_path / "other"
    png(other / "images" / "x.png")
    png(other / "images" / "y.png")
    ds2 = local_dataset(FakePNG(), other)
    assert ds2.layout == "folder" and len(ds2) == 2


def test_no_accepted_files_names_folder_and_extensions(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError) as err:
        local_dataset(FakePNG(), tmp_path)
    msg = one_line(err)
    assert msg.startswith(f"{tmp_path.name}: no fakepng images found (accepted: .png)")


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="dataset source not found"):
        local_dataset(FakePNG(), tmp_path / "nope")
    png(tmp_path / "a.png")
    with pytest.raises(InputError, match="must be a folder or a .csv manifest"):
        local_dataset(FakePNG(), tmp_path / "a.png")
    with pytest.raises(InputError, match="unknown split 'dev2'"):
        local_dataset(FakePNG(), tmp_path, split="dev2")
    with pytest.raises(InputError, match="val_fraction"):
        local_dataset(FakePNG(), tmp_path, val_fraction=1.5)


def test_source_without_split_info_is_taken_whole_or_held_out(tmp_path):
    for k in range(20):
        png(tmp_path / f"{k:02d}.png")
    whole_train = local_dataset(FakePNG(), tmp_path, split="train")
    whole_val = local_dataset(FakePNG(), tmp_path, split="val")
    assert len(whole_train) == len(whole_val) == 20 and whole_val.split_source is None

    train = local_dataset(FakePNG(), tmp_path, split="train", val_fraction=0.2)
    val = local_dataset(FakePNG(), tmp_path, split="val", val_fraction=0.2)
    assert len(val) == 4 and len(train) == 16 and val.split_source == "holdout"
    assert set(train.files).isdisjoint(val.files)
    assert set(train.files) | set(val.files) == set(whole_train.files)
    again = local_dataset(FakePNG(), tmp_path, split="val", val_fraction=0.2)
    assert again.files == val.files  # deterministic
    # a tiny dataset still gets one file on each side
    tiny = tmp_path / "tiny"
    png(tiny / "a.png")
    png(tiny / "b.png")
    assert len(local_dataset(FakePNG(), tiny, split="val", val_fraction=0.01)) == 1
    assert len(local_dataset(FakePNG(), tiny, split="train", val_fraction=0.01)) == 1


def test_split_folders_share_class_indices(tmp_path):
    png(tmp_path / "train" / "cat" / "a.png")
    png(tmp_path / "train" / "dog" / "b.png")
    png(tmp_path / "train" / "eel" / "c.png")
    png(tmp_path / "val" / "eel" / "d.png")  # val has only one class
    png(tmp_path / "val" / "cat" / "e.png")
    train = local_dataset(FakePNG(), tmp_path, split="train")
    val = local_dataset(FakePNG(), tmp_path, split="validation")
    assert train.split_source == val.split_source == "folders"
    assert train.class_names == val.class_names == ("cat", "dog", "eel")
    assert [f.name for f in val.files] == ["e.png", "d.png"] and val.labels == [0, 2]
    with pytest.raises(InputError, match=r"no test split folder \(found train, val\)"):
        local_dataset(FakePNG(), tmp_path, split="test")
    # segmentation inside split folders
    seg = tmp_path / "seg"
    png(seg / "training" / "images" / "a.png")
    png(seg / "training" / "masks" / "a_mask.png")
    png(seg / "test" / "images" / "b.png")
    png(seg / "test" / "masks" / "b_mask.png")
    assert local_dataset(FakePNG(), seg, split="test").masks[0].name == "b_mask.png"


def test_fixed_class_names_reject_unknown_class_folder(tmp_path):
    png(tmp_path / "cat" / "a.png")
    png(tmp_path / "dog" / "b.png")
    ds = local_dataset(FakePNG(), tmp_path, class_names=["dog", "cat", "cow"])
    assert ds.labels == [1, 0] and ds.num_classes == 3
    with pytest.raises(InputError, match=r"class folder 'dog' is not one of the classes"):
        local_dataset(FakePNG(), tmp_path, class_names=["cat", "cow"])


def test_task_requirements(tmp_path):
    png(tmp_path / "a.png")
    with pytest.raises(InputError, match="classification needs labels"):
        local_dataset(FakePNG(), tmp_path, task="classify")
    with pytest.raises(InputError, match="segmentation needs masks"):
        local_dataset(FakePNG(), tmp_path, task="segment")
    assert len(local_dataset(FakePNG(), tmp_path, task="anomaly")) == 1


def test_read_kwargs_reach_the_plugin(tmp_path):
    png(tmp_path / "a.png", 255)
    ds = local_dataset(FakePNG(), tmp_path, scale=0.5, downsample=2, unrelated_key=3)
    s = ds[0]
    assert s.image.shape == (1, 4, 6)
    assert torch.allclose(s.image, torch.zeros_like(s.image))  # 255/255 * 0.5 -> (0.5 - 0.5) / 0.25


def test_train_dataset_and_dataloader(tmp_path):
    for k in range(4):
        png(tmp_path / "images" / f"{k}.png", _pattern(k))
        png(tmp_path / "masks" / f"{k}_mask.png", _pattern(k))
    plugin = FakePNG()
    view = plugin.train_dataset(tmp_path, split="train", input_size=8, seed=3)
    assert isinstance(view, TrainingView) and isinstance(view.samples, LocalDataset)
    batch = next(iter(DataLoader(view, batch_size=4)))
    assert batch["image"].shape == (4, 1, 8, 12)
    assert batch["mask"].shape == (4, 8, 12) and batch["mask"].dtype == torch.long
    assert torch.equal(batch["mask"].bool(), batch["image"][:, 0] > 0)  # masks still aligned after augmentation
    assert batch["valid"].all()


def test_plot_delegates_to_plugin(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    png(tmp_path / "images" / "a.png", _pattern(1))
    png(tmp_path / "masks" / "a.png", _pattern(1))
    ds = local_dataset(FakePNG(), tmp_path)
    fig = ds.plot(0, title="hello")
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "hello"
    assert len(fig.axes[0].images) == 2  # image + mask overlay
    plt.close(fig)
    assert "layout='segmentation'" in repr(ds) and "n=1" in repr(ds)


# ------------------------------------------------------------------------------------------------
# guess_domain_name
# ------------------------------------------------------------------------------------------------
def _nifti(path: Path) -> Path:
    import nibabel as nib

    affine = np.diag([-0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), dtype=np.int16), affine), str(path))
    return path


def _fundus_like(path: Path, size: int = 64) -> Path:
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    rgb[disc] = (190, 90, 40)
    Image.fromarray(rgb).save(path)
    return path


def test_guess_domain_medical(tmp_path, capsys):
    assert guess_domain_name(_nifti(tmp_path / "vol.nii.gz")) == "ct"
    assert guess_domain_name(_nifti(tmp_path / "vol.nii")) == "ct"
    assert guess_domain_name(dicom(tmp_path / "ct.dcm", "CT")) == "ct"
    assert guess_domain_name(dicom(tmp_path / "cr.dcm", "CR")) == "xray"
    assert guess_domain_name(dicom(tmp_path / "noext", "CR")) == "xray"  # found by the DICM magic
    series = dicom_series(tmp_path / "series", ext="")
    assert guess_domain_name(series) == "ct"
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"scan/{f.name}")
    assert guess_domain_name(tmp_path / "series.zip") == "ct"
    out = capsys.readouterr()
    assert "Doe" not in out.out + out.err and "SECRET" not in out.out + out.err


def test_guess_domain_images(tmp_path):
    assert guess_domain_name(geotiff(tmp_path / "s2.tif", 13)) == "multispectral"
    assert guess_domain_name(geotiff(tmp_path / "rgb_geo.tiff", 3)) == "multispectral"  # a CRS
    assert guess_domain_name(geotiff(tmp_path / "plain.tif", 3, crs=None)) == "fundus"
    assert guess_domain_name(_fundus_like(tmp_path / "fundus.png")) == "fundus"
    assert guess_domain_name(_fundus_like(tmp_path / "fundus.jpg")) == "fundus"
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    assert guess_domain_name(png(tmp_path / "grey.png", grey)) == "xray"
    assert guess_domain_name(png(tmp_path / "rgb_grey.png", grey, mode="RGB")) == "xray"
    assert guess_domain_name(png(tmp_path / "rgba_grey.png", grey, mode="RGBA")) == "xray"
    Image.fromarray(grey).convert("RGB").save(tmp_path / "grey.jpg", quality=85)
    assert guess_domain_name(tmp_path / "grey.jpg") == "xray"
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert guess_domain_name(tmp_path / "grey16.png") == "xray"


def test_guess_domain_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        guess_domain_name(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as err:
        guess_domain_name(tmp_path / "notes.txt")
    msg = one_line(err)
    assert "notes.txt: cannot guess the domain of a .txt file" in msg and ".nii.gz" in msg and ".tif" in msg
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="broken.png: not a readable PNG image"):
        guess_domain_name(tmp_path / "broken.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 garbage")
    with pytest.raises(InputError, match="broken.tif: not a readable TIFF file"):
        guess_domain_name(tmp_path / "broken.tif")
    (tmp_path / "broken.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="broken.dcm: not a readable DICOM file"):
        guess_domain_name(tmp_path / "broken.dcm")
    with zipfile.ZipFile(tmp_path / "pngs.zip", "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(InputError, match="zip holds no DICOM files"):
        guess_domain_name(tmp_path / "pngs.zip")
    (tmp_path / "bad.zip").write_bytes(b"PK nope")
    with pytest.raises(InputError, match="not a readable zip file"):
        guess_domain_name(tmp_path / "bad.zip")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="folder holds no DICOM files"):
        guess_domain_name(tmp_path / "emptydir")


# ------------------------------------------------------------------------------------------------
# describe / format_description with the fake plugin
# ------------------------------------------------------------------------------------------------
def test_describe_with_fake_plugin(tmp_path, monkeypatch):
    import unimae.domains as registry

    fake = FakePNG()
    monkeypatch.setattr(registry, "get_domain", lambda name: fake if name == "fakepng" else None)
    arr = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    path = png(tmp_path / "tiny.png", arr)
    d = describe(path, domain="fakepng")
    json.dumps(d)
    assert d["domain"] == "fakepng" and d["domain_guessed"] is False
    assert d["shape"] == [1, 2, 2] and d["dtype"] == "uint8" and d["tensor_dtype"] == "float32"
    assert d["spacing"] == [1.0, 1.0] and d["spacing_unit"] == "pixel"
    assert d["value_range"] == [0.0, 1.0]
    assert d["channels"][0]["name"] == "grey" and d["channels"][0]["max"] == 1.0
    assert d["valid_fraction"] == 1.0 and d["modality"] == "fake"
    assert d["crs"] is None and d["affine"] is None
    text = format_description(d)
    lines = text.splitlines()
    assert lines[0].split() == ["file", str(path)]
    assert any(line.split()[:2] == ["domain", "fakepng"] for line in lines)
    assert any(line.startswith("value range") and "0 .. 1" in line for line in lines)
    assert any(line.startswith("valid") and "100.0 %" in line for line in lines)
    # aligned: every value starts in the same column
    starts = {len(line) - len(line[line.index("  ") :].lstrip()) for line in lines if line.strip()}
    assert len(starts) == 1


# ------------------------------------------------------------------------------------------------
# with the real plugins (built in: a plugin that fails to import or construct fails these tests)
# ------------------------------------------------------------------------------------------------
_PLUGIN_CLASSES = {
    "ct": ("unimae.domains.ct", "CTPlugin"),
    "fundus": ("unimae.domains.fundus", "FundusPlugin"),
    "xray": ("unimae.domains.xray", "XRayPlugin"),
    "multispectral": ("unimae.domains.multispectral", "MultispectralPlugin"),
}


def _real(name: str) -> DomainPlugin:
    """An instance of the real ``name`` plugin, registered under that name; any import error propagates."""
    import importlib

    from unimae.domains import get_domain

    module, cls = _PLUGIN_CLASSES[name]
    plugin_cls = getattr(importlib.import_module(module), cls)
    assert type(get_domain(name)) is plugin_cls, f"the registry does not map {name!r} to {module}.{cls}"
    return plugin_cls()


def _registry() -> None:
    """The registry builds every built-in plugin (``describe`` goes through it); any error propagates."""
    from unimae.domains import domain_names

    assert set(_PLUGIN_CLASSES) <= set(domain_names())


def test_describe_real_plugins(tmp_path, capsys):
    _registry()
    d = describe(geotiff(tmp_path / "s2.tif", 13))
    assert d["domain"] == "multispectral" and d["domain_guessed"]
    assert d["shape"] == [13, 8, 8] and d["crs"] == "EPSG:32633" and d["dtype"] == "uint16"
    assert d["channels"][3]["name"] == "B04" and abs(d["channels"][3]["wavelength"] - 0.665) < 1e-6
    assert d["spacing_unit"] == "metre" and d["spacing"] == [10.0, 10.0]
    text = format_description(d)
    assert "EPSG:32633" in text and "B8A" in text and "0.865 µm" in text

    d = describe(_nifti(tmp_path / "vol.nii.gz"))
    assert d["domain"] == "ct" and d["affine"] is not None and d["spacing_unit"] == "mm"
    assert sorted(d["spacing"]) == pytest.approx([0.8, 0.8, 2.5])
    json.dumps(d)

    d = describe(dicom(tmp_path / "cr.dcm", "CR"))
    assert d["domain"] == "xray" and d["spacing"] == pytest.approx([0.7, 0.7]) and d["spacing_unit"] == "mm"
    text = format_description(d) + json.dumps(d)
    out = capsys.readouterr()
    for secret in ("Doe", "Jane", "SECRET-ID-42"):
        assert secret not in text and secret not in out.out + out.err


def test_real_plugins_local_manifests(tmp_path):
    xray = _real("xray")
    ms = _real("multispectral")
    grey = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    png(tmp_path / "x" / "a.png", grey)
    png(tmp_path / "x" / "b.png", grey, mode="RGBA")
    xcsv = write_csv(tmp_path / "x.csv", ["image", "label"], [["x/a.png", "nodule|effusion"], ["x/b.png", ""]])
    ds = local_dataset(xray, xcsv)
    assert ds.multi_label and ds[0].label.tolist() == [1.0, 1.0] and ds[1].label.tolist() == [0.0, 0.0]
    assert ds[1].image.shape == (1, 32, 32)
    view = xray.train_dataset(xcsv, split="train", input_size=16)
    batch = next(iter(DataLoader(view, batch_size=2)))
    assert batch["image"].shape == (2, 1, 16, 16) and batch["label"].shape == (2, 2)

    geotiff(tmp_path / "g" / "a.tif", 13)
    geotiff(tmp_path / "g" / "b.tif", 13)
    gcsv = write_csv(tmp_path / "g.csv", ["image", "label", "split"], [["g/a.tif", "forest", "train"], ["g/b.tif", "water", "val"]])
    val = local_dataset(ms, gcsv, split="val")
    s = val[0]
    assert s.image.shape == (13, 8, 8) and int(s.label) == 1 and val.class_names == ("forest", "water")
    assert s.meta["crs"] is not None and "normalization" in s.meta


@pytest.mark.samples
def test_samples_manifests(tmp_path):
    if not SAMPLES.exists():
        pytest.skip("../shared/samples not present")
    xray = _real("xray")
    ms = _real("multispectral")
    ds = local_dataset(xray, SAMPLES / "xray")  # the folder's manifest.csv (path, label, class_name)
    assert ds.layout == "csv" and len(ds) == 5 and ds.class_names == ("No_findings", "Pneumonia")
    assert ds[0].image.shape == (1, 1024, 1024)  # the RGBA one
    ms_ds = local_dataset(ms, SAMPLES / "multispectral" / "manifest.csv")
    assert len(ms_ds) == 10 and ms_ds.num_classes == 10 and ms_ds.class_names[1] == "Forest"
    assert ms_ds[1].image.shape == (13, 64, 64)
    assert guess_domain_name(SAMPLES / "ct" / "example_ct.nii.gz") == "ct"
    assert guess_domain_name(SAMPLES / "ct" / "example_ct_dicom") == "ct"
    assert guess_domain_name(SAMPLES / "multispectral" / "Forest_1031.tif") == "multispectral"
    assert guess_domain_name(SAMPLES / "fundus" / "DRIVE" / "training" / "images" / "21_training.tif") == "fundus"
    for png_path in sorted((SAMPLES / "xray" / "images").glob("*.png")):
        assert guess_domain_name(png_path) == "xray", png_path.name
    drive = local_dataset(_real("fundus"), SAMPLES / "fundus" / "DRIVE" / "training")
    assert drive.layout == "segmentation" and len(drive) == 4
    assert all(m.parent.name == "1st_manual" for m in drive.masks)


def test_real_ct_segmentation_and_series_folders(tmp_path):
    import nibabel as nib

    ct = _real("ct")
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # flipped first axis, anisotropic spacing
    for k in range(2):
        hu = np.full((10, 8, 6), -1000, dtype=np.int16)
        hu[2:8, 2:6, 1:5] = 40  # a soft-tissue block
        lab = np.zeros((10, 8, 6), dtype=np.uint8)
        lab[2:8, 2:6, 1:5] = 1
        (tmp_path / "imagesTr").mkdir(exist_ok=True)
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "imagesTr" / f"case{k}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "labelsTr" / f"case{k}.nii.gz"))
    ds = local_dataset(ct, tmp_path, task="segment", spacing=(2.0, 2.0, 2.0))
    assert ds.layout == "segmentation" and [m.name for m in ds.masks] == ["case0.nii.gz", "case1.nii.gz"]
    s = ds[0]
    # the mask was read on the source grid and resampled with the image (RAS, 2 mm)
    assert s.mask.shape == s.image.shape[1:] and s.image.shape[1:] != (10, 8, 6)
    inside = s.image[0][s.mask.bool()]
    outside = s.image[0][~s.mask.bool()]
    assert inside.numel() > 0 and float(inside.mean()) > float(outside.mean()) + 0.5

    plain = tmp_path / "plain"
    dicom_series(plain / "series_a", ext="")
    dicom_series(plain / "series_b")
    ds2 = local_dataset(ct, plain)
    assert [f.name for f in ds2.files] == ["series_a", "series_b"]
    assert ds2[0].image.ndim == 4


@pytest.mark.samples
def test_samples_drive_through_fundus_plugin():
    if not SAMPLES.exists():
        pytest.skip("../shared/samples not present")
    fundus = _real("fundus")
    ds = local_dataset(fundus, SAMPLES / "fundus" / "DRIVE" / "training", task="segment")
    s = ds[0]
    assert s.image.shape == (3, 584, 565) and s.mask.shape == (584, 565)
    assert 0.05 < float(s.mask.float().mean()) < 0.2  # vessels
