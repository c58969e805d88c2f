"""The chest X-ray domain plugin: readers, preprocessing, augmentation, synthetic data, writers and plots.

Every file is written for real into ``tmp_path`` (DICOM with pydicom, PNG/JPEG with Pillow); the opt-in
``samples`` test reads the NIH ChestX-ray14 PNGs in ``../shared/samples/xray``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, Sample, TrainingView
from unimae.domains.examples import new_dicom
from unimae.domains.xray import SyntheticChestXRay, XRayPlugin, overlay_png, read_dicom, to_source_grid

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
PATIENT = {"PatientName": "Doe^Janelle", "PatientID": "PID-SECRET-4711", "PatientBirthDate": "19610203"}


@pytest.fixture(scope="module")
def plugin() -> XRayPlugin:
    return XRayPlugin()


# -- file makers -------------------------------------------------------------------------------------
def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                signed: bool = False, patient: bool = True, **attrs) -> Path:
    """A single-frame DX DICOM file written with pydicom (explicit VR little endian)."""
    ds = new_dicom("1.2.840.10008.5.1.4.1.1.1.1", "DX")  # digital x-ray, for presentation
    if patient:
        for key, value in PATIENT.items():
            setattr(ds, key, value)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(h: int = 40, w: int = 50, top: int = 4095) -> np.ndarray:
    """A 2D ramp covering 0..top exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.round((yy * w + xx) / (h * w - 1) * top).astype(np.int64)


def grey8(h: int = 48, w: int = 64) -> np.ndarray:
    """An 8-bit grey test image that spans 0..255 with structure in both axes."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
    img[0, 0], img[-1, -1] = 0, 255
    return img


def save_png(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, format="PNG", **kwargs)
    return path


def assert_one_line(err: pytest.ExceptionInfo, name: str) -> None:
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{name}:"), text


# -- DICOM -------------------------------------------------------------------------------------------
def test_dicom_monochrome1_reads_as_inverse_of_monochrome2(plugin, tmp_path):
    pixels = ramp()
    m2 = plugin.read(write_dicom(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2"))
    m1 = plugin.read(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert m2.image.shape == (1, 40, 50) and m2.image.dtype == torch.float32
    expected = torch.from_numpy(pixels / 4095.0).float()[None]  # no window: min..max stretch
    torch.testing.assert_close(m2.image, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(m1.image, 1.0 - m2.image, atol=1e-6, rtol=0)
    assert m1.meta["photometric"] == "MONOCHROME1" and m2.meta["photometric"] == "MONOCHROME2"
    assert m2.meta["modality"] == "DX"


def test_dicom_rescale_and_window_follow_the_dicom_linear_formula(plugin, tmp_path):
    pixels = ramp()
    path = write_dicom(tmp_path / "win.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=1500, WindowWidth=3000, PixelSpacing=[0.139, 0.143])
    sample = plugin.read(path)
    value = pixels * 2.0 - 1024.0  # modality LUT
    c, w = 1500 - 0.5, 3000 - 1  # PS3.3 C.11.2.1.2.1 LINEAR
    expected = np.clip((value - c) / w + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(sample.image[0].numpy(), expected, atol=1e-5)
    assert 0 < (sample.image == 0).sum() and 0 < (sample.image == 1).sum()  # the window clips both ends
    assert sample.meta["window"]["center"] == 1500 and sample.meta["window"]["width"] == 3000
    assert sample.meta["spacing"] == pytest.approx((0.139, 0.143))
    assert sample.meta["spacing_source"] == "PixelSpacing"
    # window=False ignores the window and stretches the rescaled values
    raw = plugin.read(path, window=False)
    np.testing.assert_allclose(raw.image[0].numpy(), (value - value.min()) / np.ptp(value), atol=1e-6)
    assert raw.meta["window"] is None


def test_dicom_voi_lut_sequence_and_imager_spacing(plugin, tmp_path):
    from pydicom.dataset import Dataset

    pixels = ramp(top=1023)
    lut = np.round(np.sqrt(np.arange(512) / 511.0) * 4095).astype(np.uint16)  # a gamma-like VOI LUT
    item = Dataset()
    item.LUTDescriptor = [512, 256, 12]  # 512 entries, first mapped value 256, 12 bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUTData
    path = write_dicom(tmp_path / "lut.dcm", pixels, bits_stored=10, VOILUTSequence=[item],
                       WindowCenter=100, WindowWidth=10, ImagerPixelSpacing=[0.2, 0.25])
    sample = plugin.read(path)
    expected = lut[np.clip(pixels - 256, 0, 511)] / 4095.0  # the LUT wins over the window
    np.testing.assert_allclose(sample.image[0].numpy(), expected, atol=1e-6)
    assert sample.meta["window"]["source"] == "VOILUTSequence"
    assert sample.meta["spacing"] == (0.2, 0.25) and sample.meta["spacing_source"] == "ImagerPixelSpacing"


def test_dicom_16bit_signed_and_pixel_padding(plugin, tmp_path):
    pixels = ramp(top=65535) - 32768  # full signed 16-bit range
    s16 = plugin.read(write_dicom(tmp_path / "s16.dcm", pixels, bits_stored=16, signed=True))
    np.testing.assert_allclose(s16.image[0].numpy(), (pixels + 32768) / 65535.0, atol=1e-6)
    padded = ramp(top=4000)
    padded[:, :5] = 4095  # detector edge marked as padding
    s = plugin.read(write_dicom(tmp_path / "pad.dcm", padded, PixelPaddingValue=4095))
    assert not s.valid[:, :5].any() and s.valid[:, 5:].all()
    assert float(s.image[0, :, :5].abs().max()) == 0.0
    inside = padded[:, 5:]
    np.testing.assert_allclose(s.image[0, :, 5:].numpy(), (inside - inside.min()) / np.ptp(inside), atol=1e-6)


def test_dicom_patient_fields_never_leak(plugin, tmp_path, caplog, capsys):
    import pydicom

    caplog.set_level(logging.DEBUG)
    pydicom.config.debug(True)  # even pydicom's own debug logging must not see the patient fields
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sample = plugin.read(write_dicom(tmp_path / "p.dcm", ramp(), WindowCenter=2000, WindowWidth=4000))
            _, _, info = read_dicom(tmp_path / "p.dcm")
            with pytest.raises(InputError) as err:
                plugin.read(write_dicom(tmp_path / "nopix.dcm", None))
    finally:
        pydicom.config.debug(False)
    out = capsys.readouterr()
    texts = [str(sample.meta), str(info), str(err.value), caplog.text, out.out, out.err,
             " ".join(str(w.message) for w in caught)]
    for value in PATIENT.values():
        for needle in (value, value.split("^")[0]):
            assert all(needle not in t for t in texts), needle
    assert not any(k.lower().startswith("patient") for k in sample.meta)


# -- PNG / JPEG --------------------------------------------------------------------------------------
def test_png_8_16_bit_grey_rgb_rgba_read_as_the_same_one_channel_image(plugin, tmp_path):
    g = grey8()
    expected = torch.from_numpy(g / 255.0).float()[None]
    rgba = np.dstack([g, g, g, np.random.default_rng(1).integers(0, 256, g.shape).astype(np.uint8)])
    files = {
        "grey8.png": save_png(tmp_path / "grey8.png", g),
        "grey16.png": save_png(tmp_path / "grey16.png", g.astype(np.uint16) * 257),
        "rgb.png": save_png(tmp_path / "rgb.png", np.dstack([g, g, g])),
        "rgba.png": save_png(tmp_path / "rgba.png", rgba),  # alpha is dropped, not composited
    }
    modes = {}
    for name, path in files.items():
        s = plugin.read(path)
        assert s.image.shape == (1, 48, 64) and s.image.dtype == torch.float32, name
        torch.testing.assert_close(s.image, expected, atol=1e-6, rtol=0, msg=name)
        assert s.meta["source_shape"] == (48, 64) and s.meta["modality"] == "CR"
        modes[name] = s.meta["source_mode"]
    assert modes == {"grey8.png": "L", "grey16.png": "I;16", "rgb.png": "RGB", "rgba.png": "RGBA"}


def test_colour_png_uses_luminance_and_16bit_significant_bits(plugin, tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(20, 30, 3)).astype(np.uint8)
    s = plugin.read(save_png(tmp_path / "colour.png", rgb))
    lum = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(s.image[0].numpy(), lum, atol=1e-6)
    # a 12-bit radiograph in a 16-bit PNG: the sBIT chunk sets the range, or bits= does
    twelve = ramp(20, 30, top=3000).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    s12 = plugin.read(save_png(tmp_path / "s12.png", twelve, pnginfo=info))
    np.testing.assert_allclose(s12.image[0].numpy(), twelve / 4095.0, atol=1e-6)
    assert s12.meta["intensity_scale"]["bits"] == 12
    plain = save_png(tmp_path / "plain12.png", twelve)
    np.testing.assert_allclose(plugin.read(plain).image[0].numpy(), twelve / 3000.0, atol=1e-6)  # min..max
    np.testing.assert_allclose(plugin.read(plain, bits=14).image[0].numpy(), twelve / 16383.0, atol=1e-6)


def test_jpeg_and_exif_orientation(plugin, tmp_path):
    yy, xx = np.mgrid[0:64, 0:96]
    g = (xx * 255 / 95).astype(np.uint8)  # smooth, so JPEG is near-lossless
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    s = plugin.read(tmp_path / "g.jpg")
    assert s.image.shape == (1, 64, 96) and s.meta["format"] == "JPEG"
    assert float((s.image[0] - torch.from_numpy(g / 255.0)).abs().mean()) < 0.01
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    Image.fromarray(g).save(tmp_path / "rot.jpeg", quality=95, exif=exif)
    r = plugin.read(tmp_path / "rot.jpeg")
    assert r.image.shape == (1, 96, 64) and r.meta["exif_transposed"] and r.meta["source_shape"] == (96, 64)
    assert float(r.image[0, 0].mean()) < 0.1 and float(r.image[0, -1].mean()) > 0.9  # dark edge now on top


# -- bad input ---------------------------------------------------------------------------------------
def _bad_files(tmp_path: Path) -> dict[str, Path]:
    g = grey8()
    files: dict[str, Path] = {}
    (tmp_path / "empty.png").write_bytes(b"")
    files["empty.png"] = tmp_path / "empty.png"
    (tmp_path / "empty.dcm").write_bytes(b"")
    files["empty.dcm"] = tmp_path / "empty.dcm"
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["truncated.png"] = tmp_path / "truncated.png"
    (tmp_path / "png_named.dcm").write_bytes(buf.getvalue())
    files["png_named.dcm"] = tmp_path / "png_named.dcm"
    (tmp_path / "text.png").write_text("this is a text file, not an image\n")
    files["text.png"] = tmp_path / "text.png"
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    files["corrupt.jpg"] = tmp_path / "corrupt.jpg"
    full = write_dicom(tmp_path / "full.dcm", ramp()).read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(full[: len(full) - 1000])
    files["truncated.dcm"] = tmp_path / "truncated.dcm"
    files["nopixels.dcm"] = write_dicom(tmp_path / "nopixels.dcm", None)
    files["multiframe.dcm"] = write_dicom(tmp_path / "multiframe.dcm", np.zeros((8, 4), np.uint16),
                                          Rows=4, Columns=4, NumberOfFrames=2)
    (tmp_path / "notes.txt").write_text("hello")
    files["notes.txt"] = tmp_path / "notes.txt"
    files["missing.png"] = tmp_path / "missing.png"
    return files


BAD = {
    "empty.png": "empty",
    "empty.dcm": "empty",
    "truncated.png": "truncated",
    "png_named.dcm": "not a DICOM file (it is a PNG image",
    "text.png": "not a PNG/JPEG image (it is a text file)",
    "corrupt.jpg": "corrupt",
    "truncated.dcm": "truncated",
    "nopixels.dcm": "no pixel data",
    "multiframe.dcm": "multi-frame",
    "notes.txt": "not an x-ray file",
    "missing.png": "not found",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_one_line_input_error(plugin, tmp_path, name):
    path = _bad_files(tmp_path)[name]
    with pytest.raises(InputError) as err:
        plugin.read(path)
    assert_one_line(err, name)
    assert BAD[name] in str(err.value), str(err.value)


def test_nan_in_float_dicom_is_rejected(plugin, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 4, 4, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    values = np.ones((4, 4), np.float32)
    values[1, 2] = np.nan
    ds.FloatPixelData = values.tobytes()
    ds.save_as(tmp_path / "nan.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="NaN or Inf") as err:
        plugin.read(tmp_path / "nan.dcm")
    assert_one_line(err, "nan.dcm")


def test_pixel_limit_checked_before_decoding(plugin, tmp_path, monkeypatch):
    png = save_png(tmp_path / "big.png", grey8(48, 64))
    dcm = write_dicom(tmp_path / "big.dcm", ramp(48, 64))
    monkeypatch.setenv("UNIMAE_MAX_PIXELS", "1000")
    for path in (png, dcm):
        with pytest.raises(InputError, match="over the limit of 1,000") as err:
            plugin.read(path)
        assert_one_line(err, path.name)
    monkeypatch.setenv("UNIMAE_MAX_PIXELS", str(10**9))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow's own bomb guard (error at 2x)
    with pytest.raises(InputError, match="decompression-bomb") as err:
        plugin.read(png)
    assert_one_line(err, "big.png")


# -- masks -------------------------------------------------------------------------------------------
def test_read_mask_binary_labels_and_shape_check(plugin, tmp_path):
    g = grey8()
    image = plugin.read(save_png(tmp_path / "img.png", g))
    binary = np.zeros(g.shape, np.uint8)
    binary[10:20, 5:40] = 255
    m = plugin.read_mask(save_png(tmp_path / "lung.png", binary), like=image)
    assert m.dtype == torch.int64 and m.shape == g.shape
    assert torch.equal(m, torch.from_numpy((binary > 0).astype(np.int64)))
    labels = np.zeros(g.shape, np.uint8)
    labels[:, :20], labels[:, 40:] = 1, 2
    assert set(plugin.read_mask(save_png(tmp_path / "lab.png", labels)).unique().tolist()) == {0, 1, 2}
    with pytest.raises(InputError, match="mask is 30x30 but its image is 48x64") as err:
        plugin.read_mask(save_png(tmp_path / "small.png", np.zeros((30, 30), np.uint8)), like=image)
    assert_one_line(err, "small.png")
    colour = np.dstack([binary, binary // 2, binary * 0])
    with pytest.raises(InputError, match="colour mask"):
        plugin.read_mask(save_png(tmp_path / "colour.png", colour))


# -- preprocess --------------------------------------------------------------------------------------
def test_preprocess_normalisation_presets_and_idempotence(plugin, tmp_path):
    g = grey8()
    raw = plugin.read(save_png(tmp_path / "g.png", g))
    pre = plugin.preprocess(raw)
    torch.testing.assert_close(pre.image, (raw.image - 0.5) / 0.25)
    spec = pre.meta["normalization"]
    assert spec["kind"] == "meanstd" and spec["mean"] == [0.5] and spec["std"] == [0.25]
    assert json.loads(json.dumps(spec)) == spec  # travels in a checkpoint's JSON
    assert torch.equal(pre.valid, raw.valid) and pre.meta["source_shape"] == raw.meta["source_shape"]
    # re-preprocessing never normalises twice; switching normalisation undoes the first one
    torch.testing.assert_close(plugin.preprocess(pre).image, pre.image)
    net = plugin.preprocess(pre, normalize="imagenet")
    torch.testing.assert_close(net.image, (raw.image - 0.449) / 0.226, atol=1e-5, rtol=0)
    assert set(plugin.presets) >= {"default", "imagenet", "clahe"}
    for name, kwargs in plugin.presets.items():
        out = plugin.load(tmp_path / "g.png", **kwargs)
        assert out.meta["normalization"]["name"] == kwargs["normalize"], name
    clahe = plugin.preprocess(raw, preset="clahe")
    assert clahe.meta["normalization"]["clahe"]["clip_limit"] == 2.0
    assert not torch.allclose(clahe.image, pre.image)
    with pytest.raises(InputError, match="unknown x-ray normalization 'imagenett'.*Did you mean 'imagenet'"):
        plugin.preprocess(raw, normalize="imagenett")


# -- augmentation ------------------------------------------------------------------------------------
def test_train_augment_shape_seeded_determinism_and_mask_follows(plugin):
    sample = plugin.synthetic(2, seed=3, size=(120, 100), task="segment")[0]
    aug = plugin.augment(train=True, input_size=64)
    a, b, c = aug(sample, 11), aug(sample, 11), aug(sample, 12)
    assert a.image.shape == (1, 64, 64) and a.mask.shape == (64, 64) and a.valid.shape == (64, 64)
    assert a.mask.dtype == torch.int64 and a.valid.dtype == torch.bool
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and torch.equal(a.valid, b.valid)
    assert not torch.equal(a.image, c.image)
    assert set(a.mask.unique().tolist()) <= {0, 1, 2}  # nearest interpolation: no new labels
    assert a.meta["normalization"] == sample.meta["normalization"]
    # the lungs stay dark after the crop: the mask moved with the image
    for out in (a, c):
        lung = out.image[0][(out.mask > 0) & out.valid]
        rest = out.image[0][(out.mask == 0) & out.valid]
        assert lung.numel() > 50 and float(lung.mean()) < float(rest.mean())
    # rotated-in corners are invalid (and background); over many seeds some must appear
    invalid = [aug(sample, s) for s in range(12)]
    assert any((~o.valid).any() for o in invalid)
    assert all((o.mask[~o.valid] == 0).all() for o in invalid)


def test_augment_is_multichannel_safe(plugin):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((13, 50, 70), dtype=np.float32))
    sample = Sample(image=image, meta={"spatial_dims": 2})
    for train in (True, False):
        out = plugin.augment(train=train, input_size=(32, 40))(sample, 5)
        assert out.image.shape == (13, 32, 40) and out.valid.shape == (32, 40)


def test_no_flip_by_default_and_flip_swaps_lung_labels(plugin):
    sample = plugin.synthetic(1, size=64, task="segment")[0]
    still = plugin.augment(train=True, input_size=64, crop_scale=(1.0, 1.0), rotate=0, brightness=0, contrast=0)
    for seed in range(10):
        out = still(sample, seed)
        assert torch.equal(out.mask, sample.mask)  # never flipped: lung_right stays on the image left
    flip = plugin.augment(train=True, input_size=64, crop_scale=(1.0, 1.0), rotate=0, brightness=0, contrast=0,
                          hflip=True, flip_label_pairs=((1, 2),))
    swapped = sample.mask.flip(-1).clone()
    swapped[sample.mask.flip(-1) == 1], swapped[sample.mask.flip(-1) == 2] = 2, 1
    flipped = 0
    for seed in range(10):
        out = flip(sample, seed)
        if torch.allclose(out.image, sample.image.flip(-1), atol=1e-5):
            flipped += 1
            assert torch.equal(out.mask, swapped)
        else:
            assert torch.equal(out.mask, sample.mask)
    assert 0 < flipped < 10


def test_eval_letterbox_marks_padding_invalid(plugin, tmp_path):
    g = np.full((60, 120), 200, np.uint8)
    sample = plugin.preprocess(plugin.read(save_png(tmp_path / "wide.png", g)))
    ev = plugin.augment(train=False, input_size=64)
    out = ev(sample, 0)
    assert out.image.shape == (1, 64, 64) and out.meta["letterbox"] == {"size": [64, 64], "box": [16, 0, 32, 64]}
    assert not out.valid[:16].any() and not out.valid[48:].any() and out.valid[16:48].all()
    torch.testing.assert_close(out.image[0, 16:48], torch.full((32, 64), (200 / 255 - 0.5) / 0.25))
    assert torch.equal(ev(sample, 0).image, ev(sample, 99).image)  # no randomness at evaluation


# -- synthetic ---------------------------------------------------------------------------------------
def test_synthetic_contract_and_determinism(plugin):
    ds = plugin.synthetic(6, seed=5, size=(96, 80), task="segment")
    assert isinstance(ds, SyntheticChestXRay) and len(ds) == 6
    s = ds[2]
    assert s.image.shape == (1, 96, 80) and s.image.dtype == torch.float32 and s.mask.shape == (96, 80)
    m = s.meta
    assert m["spatial_dims"] == 2 and m["modality"] == "CR" and m["path"] is None
    assert m["channels"] == [{"name": "grey", "wavelength": None}] and len(m["spacing"]) == 2
    assert m["valid"].shape == (96, 80) and m["valid"].all() and m["source_shape"] == (96, 80)
    assert m["normalization"] == plugin.preprocess(s).meta["normalization"]
    assert -1.5 < float(s.image.mean()) < 0.5 and 0.4 < float(s.image.std()) < 1.5  # zero-centred-ish
    again = plugin.synthetic(20, seed=5, size=(96, 80), task="segment")[2]  # depends on (seed, i) only
    assert torch.equal(s.image, again.image) and torch.equal(s.mask, again.mask)
    assert not torch.equal(ds[2].image, ds[3].image)
    assert not torch.equal(s.image, plugin.synthetic(6, seed=6, size=(96, 80))[2].image)
    with pytest.raises(IndexError):
        ds[6]


def _measured_ctr(lungs: np.ndarray, heart: np.ndarray) -> float:
    """Cardiothoracic ratio from masks: widest heart / widest span of both lungs."""
    cols = np.nonzero(heart.any(axis=0))[0]
    heart_w = cols.max() - cols.min() + 1
    lung_cols = np.nonzero((lungs > 0).any(axis=0))[0]
    return heart_w / (lung_cols.max() - lung_cols.min() + 1)


def test_synthetic_images_match_their_labels(plugin):
    ds = plugin.synthetic(24, seed=1, size=128, task="classify", lesion_prob=0.8)
    unit = lambda s: s.image[0] * 0.25 + 0.5  # noqa: E731  (back to [0, 1])
    counts = np.zeros(3)
    for i in range(len(ds)):
        s, case = ds[i], ds.draw(i)
        img = unit(s).numpy()
        right, left = case.lungs == 1, case.lungs == 2
        # radiological convention: the patient's right lung is on the image left
        assert np.nonzero(right)[1].mean() < 64 < np.nonzero(left)[1].mean()
        # lung fields are darker than the mediastinum between them
        rows = np.nonzero(right.any(1) & left.any(1))[0]
        between = np.zeros_like(right)
        for r in rows:
            between[r, np.nonzero(right[r])[0].max() + 3 : np.nonzero(left[r])[0].min() - 2] = True
        lung_px = (right | left) & ~case.opacity
        assert img[lung_px].mean() + 0.2 < img[between].mean()
        # focal opacities are brighter than the surrounding lung
        if case.opacity.any():
            assert img[case.opacity].mean() > img[lung_px].mean() + 0.05
        # multi-hot labels agree with the masks and the heart size
        label = s.label.numpy()
        assert label.dtype == np.float32 and label.shape == (3,)
        assert label[0] == case.nodules.any() and label[1] == case.consolidation.any()
        assert label[2] == (_measured_ctr(case.lungs, case.heart) > 0.5)
        assert not (case.opacity & (case.lungs == 0)).any()  # opacities lie inside the lungs
        counts += label
    assert (counts > 0).all()  # every finding occurs


def test_synthetic_anomaly_and_segment_targets(plugin):
    anomaly = plugin.synthetic(12, seed=2, size=96, task="anomaly")
    labels = []
    for i in range(len(anomaly)):
        s = anomaly[i]
        assert s.mask.dtype == torch.int64 and set(s.mask.unique().tolist()) <= {0, 1}
        assert int(s.label) == int(s.mask.any())
        assert torch.equal(s.mask.bool(), torch.from_numpy(anomaly.draw(i).opacity))
        labels.append(int(s.label))
    assert 0 < sum(labels) < 12
    normal = plugin.synthetic(8, seed=2, size=96, task="anomaly", lesion_prob=0.0)
    assert all(int(normal[i].label) == 0 and not normal[i].mask.any() for i in range(8))
    assert all(int(s.label) == 1 for s in plugin.synthetic(5, size=96, task="anomaly", lesion_prob=1.0))
    seg = plugin.synthetic(3, size=96, task="segment")[0]
    assert seg.label is None and set(seg.mask.unique().tolist()) == {0, 1, 2}
    with pytest.raises(InputError, match="unknown task"):
        plugin.synthetic(2, task="detect")


def test_train_dataset_on_synthetic_data_collates(plugin):
    view = plugin.train_dataset(None, input_size=48, num_samples=4, seed=0, task="classify")
    assert isinstance(view, TrainingView)
    batch = next(iter(torch.utils.data.DataLoader(view, batch_size=4)))
    assert batch["image"].shape == (4, 1, 48, 48) and batch["valid"].shape == (4, 48, 48)
    assert batch["label"].shape == (4, 3) and batch["label"].dtype == torch.float32
    assert torch.equal(view[1]["image"], view[1]["image"])  # seeded by (seed, epoch, index)


# -- writing back ------------------------------------------------------------------------------------
def test_label_map_round_trip_to_source_geometry(plugin, tmp_path):
    h, w = 90, 150
    g = np.full((h, w), 60, np.uint8)
    truth = np.zeros((h, w), np.int64)
    truth[20:70, 30:60], truth[30:80, 90:140] = 1, 2
    g[truth > 0] = 200
    src = tmp_path / "cxr.png"
    save_png(src, g)
    sample = plugin.preprocess(plugin.read(src)).replace(mask=torch.from_numpy(truth))
    model_view = plugin.augment(train=False, input_size=128)(sample, 0)  # what the model sees
    predicted = model_view.mask  # a perfect "prediction" on the model grid
    out = plugin.write(predicted, model_view.meta, tmp_path / "pred.png", class_names=plugin.seg_class_names)
    back = np.asarray(Image.open(out))
    assert back.shape == (h, w) and back.dtype == np.uint8
    for k in (1, 2):
        inter = ((back == k) & (truth == k)).sum()
        union = ((back == k) | (truth == k)).sum()
        assert inter / union > 0.9, k
        centre_err = np.abs(np.argwhere(back == k).mean(0) - np.argwhere(truth == k).mean(0))
        assert (centre_err < 1.0).all(), (k, centre_err)  # no shift from the letterbox
    note = json.loads(Image.open(out).info["unimae"])
    assert note["kind"] == "labels" and note["classes"][1] == "lung_right"
    # the mask reads back through read_mask onto the same image
    assert plugin.read_mask(out, like=plugin.read(src)).shape == (h, w)
    # heat maps: floats, written at source size with their value range recorded
    heat = torch.linspace(0, 3, 128).repeat(128, 1)  # rises left to right, peak 3.0 inside the content
    hp = plugin.write(heat, model_view.meta, tmp_path / "heat.png")
    assert np.asarray(Image.open(hp)).shape == (h, w)
    assert json.loads(Image.open(hp).info["unimae"])["vmax"] == pytest.approx(3.0, abs=0.02)
    written = np.asarray(Image.open(hp)).astype(float)
    assert written[:, -1].mean() > 250 and written[:, 0].mean() < 5


def test_write_is_atomic_and_validates(plugin, tmp_path):
    meta = {"source_shape": (20, 30)}
    path = plugin.write(np.ones((20, 30), np.int64), meta, tmp_path / "keep.png")
    before = path.read_bytes()
    bad = np.full((20, 30), np.nan, np.float32)
    with pytest.raises(InputError, match="NaN"):
        plugin.write(bad, meta, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keep.png"]
    with pytest.raises(InputError, match="written as .png"):
        plugin.write(np.ones((20, 30), np.int64), meta, tmp_path / "out.nii.gz")
    big = plugin.write(np.full((20, 30), 300, np.int64), meta, tmp_path / "big.png")
    assert np.asarray(Image.open(big)).max() == 300  # 16-bit when labels exceed 255


def test_overlay_png_colours_only_the_labelled_pixels(tmp_path):
    image = torch.linspace(0, 1, 40 * 60).reshape(1, 40, 60)
    mask = torch.zeros(20, 30, dtype=torch.int64)  # half resolution: resized to the image
    mask[5:10, 5:10] = 1
    out = np.asarray(Image.open(overlay_png(image, mask, tmp_path / "ov.png", alpha=0.6)))
    assert out.shape == (40, 60, 3)
    inside, outside = out[12:18, 12:18].reshape(-1, 3), out[30:, 40:].reshape(-1, 3)
    assert (inside[:, 0] > inside[:, 2] + 40).all()  # label 1 is red
    assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()  # grey
    heat = torch.zeros(40, 60)
    heat[:, 30:] = 1.0
    hot = np.asarray(Image.open(overlay_png(image, heat, tmp_path / "heat.png", threshold=0.5)))
    assert (hot[:, :30, 0] == hot[:, :30, 2]).all() and (hot[:, 30:, 0] != hot[:, 30:, 2]).any()


def test_to_source_grid_undoes_the_letterbox():
    meta = {"source_shape": (50, 100), "letterbox": {"size": [64, 64], "box": [16, 0, 32, 64]}}
    grid = torch.zeros(64, 64, dtype=torch.int64)
    grid[16:48, 32:] = 1  # the right half of the content
    back = to_source_grid(grid, meta)
    assert back.shape == (50, 100) and back[:, 52:].all() and not back[:, :48].any()


# -- plot --------------------------------------------------------------------------------------------
def test_plot_returns_figure_with_overlay_and_legend(plugin):
    from matplotlib.figure import Figure

    s = plugin.synthetic(1, size=64, task="segment")[0]
    fig = plugin.plot(s)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    legend = fig.axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["lung_right", "lung_left"]
    heat = plugin.plot(s, torch.rand(64, 64))
    assert len(heat.axes) == 3  # image, overlay, colour bar
    c = plugin.synthetic(1, size=64, task="classify", lesion_prob=1.0)[0]
    one = plugin.plot(c)
    assert len(one.axes) == 1 and "findings:" in one._suptitle.get_text()


def test_plugin_declares_the_domain():
    p = XRayPlugin()
    assert isinstance(p, DomainPlugin)
    assert (p.name, p.spatial_dims, p.modality, p.multi_label) == ("xray", 2, "CR", True)
    assert p.tasks == ("classify", "segment", "anomaly")
    assert p.class_names == ("nodule", "consolidation", "cardiomegaly")
    assert p.seg_class_names == ("background", "lung_right", "lung_left")
    assert all(p.accepts(f"a{ext.upper()}") for ext in (".dcm", ".dicom", ".png", ".jpg", ".jpeg"))
    assert p.recipes["pretrain"]["mask_ratio"] == 0.9 and p.recipes["pretrain"]["crop_scale"] == (0.5, 1.0)


# -- real samples (opt-in) ---------------------------------------------------------------------------
@pytest.mark.samples
def test_nih_samples_read_as_one_channel(plugin):
    folder = SAMPLES / "xray"
    if not folder.is_dir():
        pytest.skip("../shared/samples not present")
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for row in rows:
        s = plugin.load(folder / row["path"])
        assert s.image.shape == (1, 1024, 1024), row["path"]
        assert s.meta["source_mode"] == row["mode"]
        unit = s.image * 0.25 + 0.5
        assert 0.0 <= float(unit.min()) and float(unit.max()) <= 1.0 + 1e-6
        assert 0.25 < float(unit.mean()) < 0.75  # a radiograph, not a blank
        if row["mode"] == "RGBA":  # grey stored as opaque RGBA: luminance == the grey value
            rgba = np.asarray(Image.open(folder / row["path"]))
            np.testing.assert_allclose(unit[0].numpy(), rgba[..., 0] / 255.0, atol=1e-5)
