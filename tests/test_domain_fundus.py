"""Fundus domain plugin: readers, FOV, preprocessing, augmentation, synthetic data, writers, plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, Sample, TrainingView, channel_list
from unimae.domains.fundus import (
    DRIVE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FundusPlugin,
    SyntheticFundus,
    denormalize,
    detect_fov,
    grade_for_count,
    overlay_png,
    render_fundus,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
DRIVE_DIR = SAMPLES / "fundus" / "DRIVE" / "training"


@pytest.fixture(scope="module")
def plugin() -> FundusPlugin:
    return FundusPlugin()


@pytest.fixture(scope="module")
def scene():
    """A synthetic fundus photograph (non-square, with lesions) and its ground truth."""
    return render_fundus(np.random.default_rng([7, 0]), (120, 150), n_lesions=6)


def _u8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max(1, (a | b).sum()))


def _one_line_error(excinfo, name: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith(f"{name}:"), msg
    return msg


# -- plugin -------------------------------------------------------------------------------------
def test_plugin_attributes(plugin):
    assert isinstance(plugin, DomainPlugin)
    assert (plugin.name, plugin.spatial_dims, plugin.modality) == ("fundus", 2, "fundus")
    assert plugin.tasks == ("classify", "segment", "anomaly")
    assert set(plugin.extensions) == {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm"}  # .ppm: STARE
    assert plugin.seg_class_names == ("background", "vessel")
    assert plugin.class_names == ("grade0", "grade1", "grade2", "grade3")
    assert plugin.accepts("a/B.JPG") and plugin.accepts("x.tiff") and not plugin.accepts("x.nii.gz")
    assert {"default", "clahe", "green"} <= set(plugin.presets)


# -- readers ------------------------------------------------------------------------------------
def _save(kind: str, rgb8: np.ndarray, path: Path) -> np.ndarray:
    """Write ``rgb8`` as file ``kind``; return the expected RGB float image in [0, 1] (None: lossy)."""
    if kind == "png8":
        Image.fromarray(rgb8).save(path)
        return rgb8 / 255.0
    if kind == "png16":
        rgb16 = rgb8.astype(np.uint16) * 257 + np.arange(rgb8.size, dtype=np.uint16).reshape(rgb8.shape) % 200
        assert cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
        return rgb16 / 65535.0
    if kind == "rgba":
        alpha = np.full(rgb8.shape[:2] + (1,), 128, np.uint8)
        Image.fromarray(np.concatenate([rgb8, alpha], -1)).save(path)
        return rgb8 / 255.0
    if kind == "grey":
        grey = rgb8[..., 0]
        Image.fromarray(grey).save(path)
        return np.repeat(grey[..., None], 3, -1) / 255.0
    if kind == "grey16":
        grey = rgb8[..., 0].astype(np.uint16) * 257 + 3
        Image.fromarray(grey).save(path)
        return np.repeat(grey[..., None], 3, -1) / 65535.0
    if kind == "tiff":
        Image.fromarray(rgb8).save(path, compression="tiff_lzw")
        return rgb8 / 255.0
    if kind == "bmp":
        Image.fromarray(rgb8).save(path)
        return rgb8 / 255.0
    if kind == "jpeg":
        Image.fromarray(rgb8).save(path, quality=95)
        return rgb8 / 255.0
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, name, lossless, dtype",
    [
        ("png8", "a.png", True, "uint8"),
        ("png16", "a.png", True, "uint16"),
        ("rgba", "a.png", True, "uint8"),
        ("grey", "a.png", True, "uint8"),
        ("grey16", "a.png", True, "uint16"),
        ("tiff", "a.tif", True, "uint8"),
        ("bmp", "a.bmp", True, "uint8"),
        ("jpeg", "a.jpg", False, "uint8"),
    ],
)
def test_read_formats(plugin, scene, tmp_path, kind, name, lossless, dtype):
    path = tmp_path / name
    expected = _save(kind, _u8(scene.rgb), path)
    if kind.startswith("grey"):
        with pytest.warns(UserWarning, match="grey"):
            sample = plugin.read(path)
    else:
        sample = plugin.read(path)
    img = sample.image
    assert img.shape == (3, 120, 150) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    got = img.permute(1, 2, 0).numpy()
    if lossless:
        np.testing.assert_allclose(got, expected, atol=1e-6)
    else:
        assert np.abs(got - expected).mean() < 0.02
    meta = sample.meta
    assert meta["source_dtype"] == dtype
    assert meta["spatial_dims"] == 2 and meta["modality"] == "fundus" and meta["path"] == str(path)
    assert meta["source_shape"] == (120, 150) and meta["spacing"] == (1.0, 1.0)
    assert [c["name"] for c in meta["channels"]] == ["R", "G", "B"]
    assert [c["wavelength"] for c in meta["channels"]] == [0.61, 0.55, 0.465]
    assert meta["affine"] is None and meta["crs"] is None and meta["transform"] is None
    assert meta["valid"].dtype == torch.bool and meta["valid"].shape == (120, 150)
    assert meta["alpha_dropped"] == (kind == "rgba")
    json.dumps(meta["normalization"])


def test_16bit_precision_kept(plugin, tmp_path):
    """Pillow would truncate 16-bit colour to 8 bits; values 1/65535 apart must stay distinct."""
    rgb16 = np.zeros((40, 50, 3), np.uint16)
    rgb16[..., 0] = 30000 + np.arange(50)[None, :]  # steps of 1/65535
    rgb16[..., 1] = 20000
    rgb16[..., 2] = 10000
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])
    red = plugin.read(path, auto_fov=False).image[0, 0].numpy()
    assert len(np.unique(red)) == 50
    np.testing.assert_allclose(red * 65535.0, 30000 + np.arange(50), atol=1e-2)


def test_auto_fov_matches_the_disc(plugin, scene, tmp_path):
    path = tmp_path / "disc.jpg"
    Image.fromarray(_u8(scene.rgb)).save(path, quality=90)
    sample = plugin.read(path)
    assert sample.meta["fov_source"] == "auto"
    assert _iou(sample.valid, scene.fov) > 0.9
    # Direct on the array too, and a frame-filling (cropped) fundus is all field of view.
    assert _iou(detect_fov(scene.rgb), scene.fov) > 0.95
    cy, cx, r = scene.fov_circle
    crop = scene.rgb[int(cy - r / 2) : int(cy + r / 2), int(cx - r / 2) : int(cx + r / 2)]
    assert detect_fov(crop).all()


def test_fov_mask_file_and_array(plugin, scene, tmp_path):
    image = tmp_path / "eye.png"
    Image.fromarray(_u8(scene.rgb)).save(image)
    square = np.zeros((120, 150), np.uint8)
    square[20:100, 30:120] = 255
    gif = tmp_path / "eye_mask.gif"
    Image.fromarray(square).save(gif)
    sample = plugin.read(image, fov_mask=gif)
    assert sample.meta["fov_source"] == "file"
    assert torch.equal(sample.valid, torch.from_numpy(square > 0))
    from_array = plugin.read(image, fov_mask=square > 0)
    assert torch.equal(from_array.valid, sample.valid)
    assert plugin.read(image, auto_fov=False).valid.all()


def test_fov_mask_shape_mismatch(plugin, scene, tmp_path):
    image = tmp_path / "eye.png"
    Image.fromarray(_u8(scene.rgb)).save(image)
    wrong = tmp_path / "wrong_mask.png"
    Image.fromarray(np.full((100, 150), 255, np.uint8)).save(wrong)
    with pytest.raises(InputError) as excinfo:
        plugin.read(image, fov_mask=wrong)
    assert "150x100" in _one_line_error(excinfo, "wrong_mask.png")


def _png_bytes(shape=(30, 40, 3)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _huge_png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (no pixel data): a decompression-bomb stand-in."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(3 * w + 1))  # a single row of pixel data
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("empty.png", b"", "empty"),
        ("truncated.png", _png_bytes()[:300], "truncated"),
        ("truncated.jpg", _jpeg_bytes()[:-200], "truncated"),
        ("noise.tif", np.random.default_rng(1).bytes(400), "not a readable image"),
        ("text.jpg", b"hello, this is not an image\n" * 10, "found text"),
        ("scan.png", b"\x1f\x8b\x08\x00" + bytes(100), "gzip"),
        ("photo.png", _jpeg_bytes(), "content is JPEG"),
        ("bomb.png", _huge_png_header(40_000, 40_000), "decompression bomb"),
    ],
    ids=lambda v: v if isinstance(v, str) else "data",
)
def test_bad_files_raise_one_line(plugin, tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as excinfo:
        plugin.read(path)
    assert needle in _one_line_error(excinfo, name)


def test_missing_file_and_folder(plugin, tmp_path):
    with pytest.raises(InputError, match="not found"):
        plugin.read(tmp_path / "absent.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="folder"):
        plugin.read(tmp_path / "dir.png")


def test_pixel_limit_checked_from_header(plugin, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_huge_png_header(3000, 2000))  # no pixel data: decoding would fail differently
    monkeypatch.setenv("UNIMAE_MAX_PIXELS", "1000000")
    with pytest.raises(InputError) as excinfo:
        plugin.read(path)
    assert "over the limit of 1,000,000" in _one_line_error(excinfo, "big.png")


def test_nan_in_float_tiff(plugin, tmp_path):
    arr = np.full((20, 30), 0.5, np.float32)
    arr[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(arr).save(path)
    with pytest.raises(InputError) as excinfo:
        plugin.read(path)
    assert "NaN" in _one_line_error(excinfo, "nan.tif")


# -- masks --------------------------------------------------------------------------------------
def test_read_mask_variants(plugin, scene, tmp_path):
    vessels = scene.vessels
    like = Sample(torch.zeros(3, *vessels.shape), {"source_shape": vessels.shape})
    Image.fromarray(vessels.astype(np.uint8) * 255).save(tmp_path / "m255.png")
    Image.fromarray(vessels.astype(np.uint8)).save(tmp_path / "m01.png")
    Image.fromarray(vessels.astype(np.uint8) * 255).convert("P").save(tmp_path / "m.gif")
    Image.fromarray(vessels.astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=85)
    for name in ("m255.png", "m01.png", "m.gif"):
        mask = plugin.read_mask(tmp_path / name, like=like)
        assert mask.dtype == torch.int64 and mask.shape == vessels.shape
        assert torch.equal(mask, torch.from_numpy(vessels.astype(np.int64))), name
    lossy = plugin.read_mask(tmp_path / "m.jpg")
    assert set(lossy.unique().tolist()) <= {0, 1}
    assert (lossy.numpy() == vessels).mean() > 0.97
    classes = np.zeros((20, 30), np.uint8)
    classes[5:10, 5:10], classes[12:18, 20:28] = 1, 3
    Image.fromarray(classes).save(tmp_path / "labels.png")
    assert torch.equal(plugin.read_mask(tmp_path / "labels.png"), torch.from_numpy(classes.astype(np.int64)))
    only_two = np.where(classes == 3, 2, 0).astype(np.uint8)  # a label map where only class 2 occurs
    Image.fromarray(only_two).save(tmp_path / "class2.png")
    assert set(plugin.read_mask(tmp_path / "class2.png").unique().tolist()) == {0, 2}
    voc = Image.fromarray(classes).convert("P")  # palette indices = class indices
    voc.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))  # colour-coded classes
    voc.save(tmp_path / "voc.png")
    assert torch.equal(plugin.read_mask(tmp_path / "voc.png"), torch.from_numpy(classes.astype(np.int64)))


def test_read_mask_shape_mismatch(plugin, scene, tmp_path):
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(tmp_path / "small.png")
    like = Sample(torch.zeros(3, 120, 150), {"source_shape": (120, 150)})
    with pytest.raises(InputError) as excinfo:
        plugin.read_mask(tmp_path / "small.png", like=like)
    assert "60x50" in _one_line_error(excinfo, "small.png")


# -- preprocessing ------------------------------------------------------------------------------
@pytest.fixture()
def read_sample(plugin, scene, tmp_path) -> Sample:
    path = tmp_path / "eye.png"
    Image.fromarray(_u8(scene.rgb)).save(path)
    return plugin.read(path)


def test_preprocess_imagenet(plugin, read_sample):
    out = plugin.preprocess(read_sample)
    valid = read_sample.valid
    mean = torch.tensor(IMAGENET_MEAN)[:, None]
    std = torch.tensor(IMAGENET_STD)[:, None]
    expected = (read_sample.image[:, valid] - mean) / std
    torch.testing.assert_close(out.image[:, valid], expected)
    assert float(out.image[:, ~valid].abs().max()) == 0.0
    assert torch.equal(out.valid, valid) and out.meta["source_shape"] == read_sample.meta["source_shape"]
    norm = out.meta["normalization"]
    assert norm["kind"] == "meanstd" and norm["mean"] == list(IMAGENET_MEAN) and norm["std"] == list(IMAGENET_STD)
    assert norm["clahe"] is None and norm["green"] == 0.0
    json.dumps(norm)
    assert abs(float(out.image[:, valid].mean())) < 1.5  # roughly zero-centred
    with pytest.raises(InputError, match="already preprocessed"):
        plugin.preprocess(out)


def test_preprocess_clahe_green_and_replay(plugin, read_sample):
    valid = read_sample.valid.numpy()
    plain = plugin.preprocess(read_sample, preset="default")
    eq = plugin.preprocess(read_sample, preset="clahe")
    assert eq.meta["normalization"]["clahe"] == {"clip_limit": 2.0, "tile_grid": 8}
    assert float(eq.image[:, ~read_sample.valid].abs().max()) == 0.0

    # CLAHE raises local contrast inside the field of view (here: green-channel Laplacian energy).
    def lap(s: Sample) -> float:
        green = denormalize(s.image, s.meta["normalization"])[..., 1]
        return float(np.abs(cv2.Laplacian(green, cv2.CV_32F))[valid].mean())

    assert lap(eq) > 1.2 * lap(plain)
    green = plugin.preprocess(read_sample, preset="green")
    rgb = denormalize(green.image, green.meta["normalization"])
    g = read_sample.image[1].numpy()
    for c in range(3):
        np.testing.assert_allclose(rgb[..., c][valid], g[valid], atol=1e-5)
    assert [c["name"] for c in green.meta["channels"]] == ["G", "G", "G"]
    # A recorded contract (as a checkpoint carries it) replays exactly.
    contract = json.loads(json.dumps(eq.meta["normalization"]))
    torch.testing.assert_close(plugin.preprocess(read_sample, normalize=contract).image, eq.image)
    with pytest.raises(InputError, match="unknown fundus normalization"):
        plugin.preprocess(read_sample, normalize="imagenett")


def test_load_passes_keywords(plugin, scene, tmp_path):
    path = tmp_path / "eye.png"
    Image.fromarray(_u8(scene.rgb)).save(path)
    sample = plugin.load(path, auto_fov=False, clahe=True)
    assert sample.valid.all() and sample.meta["normalization"]["clahe"] is not None


# -- augmentation -------------------------------------------------------------------------------
def _blocky_sample(channels: int = 3, shape=(90, 110)) -> Sample:
    """Channel 0 is +3 on mask pixels and -3 elsewhere, so the mask can be checked against the image."""
    rng = np.random.default_rng(0)
    blocks = rng.random((shape[0] // 20 + 1, shape[1] // 20 + 1)) > 0.5
    mask = np.kron(blocks, np.ones((20, 20)))[: shape[0], : shape[1]].astype(np.int64)
    image = rng.normal(0, 0.3, (channels, *shape)).astype(np.float32)
    image[0] = np.where(mask > 0, 3.0, -3.0)
    valid = np.zeros(shape, bool)
    valid[5:85, 10:100] = True
    meta = {
        "valid": torch.from_numpy(valid),
        "spacing": (1.0, 1.0),
        "channels": channel_list([f"b{i}" for i in range(channels)]),
    }
    return Sample(torch.from_numpy(image), meta, mask=torch.from_numpy(mask))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels", [3, 13])
def test_augment_shape_determinism_and_alignment(plugin, train, channels):
    sample = _blocky_sample(channels)
    transform = plugin.augment(train=train, input_size=(48, 64))
    a, b = transform(sample, 11), transform(sample, 11)
    assert a.image.shape == (channels, 48, 64) and a.image.dtype == torch.float32
    assert a.mask.shape == (48, 64) and a.mask.dtype == torch.int64 and a.valid.shape == (48, 64)
    assert set(a.mask.unique().tolist()) <= {0, 1}
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and torch.equal(a.valid, b.valid)
    assert float(a.image[:, ~a.valid].abs().sum()) == 0.0
    # The mask moved with the image: mask pixels are the bright ones in channel 0.
    agree = ((a.image[0] > 0) == (a.mask > 0))[a.valid].float().mean()
    assert float(agree) > 0.95
    if train:
        others = [transform(sample, s) for s in (1, 2, 3)]
        assert any(not torch.equal(o.image, a.image) for o in others)


@pytest.mark.parametrize("channels", [3, 13])
def test_camera_degradations_are_seeded_stay_inside_the_fov_and_only_train(plugin, channels):
    """``degrade``: with chance 1 every training crop is blurred, resampled and noisy; the same seed gives the
    same crop; the mask and the field of view are untouched and nothing leaks outside the FOV; chance 0 (the
    default) changes nothing; evaluation never degrades; a chance outside [0, 1] is refused."""
    from unimae.domains.fundus.augment import degrade

    sample = _blocky_sample(channels)
    plain = dict(train=True, input_size=(48, 64), brightness=0.0, contrast=0.0)
    clean = plugin.augment(**plain)(sample, 5)
    worse = plugin.augment(**plain, degrade=1.0)
    a, b = worse(sample, 5), worse(sample, 5)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, clean.mask) and torch.equal(a.valid, clean.valid)
    assert not torch.equal(a.image, clean.image)
    assert float(a.image[:, ~a.valid].abs().sum()) == 0.0 and torch.isfinite(a.image).all()
    flat, valid = np.ones((48, 64, channels), np.float32), clean.valid.numpy()
    assert np.array_equal(degrade(flat, valid, 0.0, 7), flat)
    assert np.abs(degrade(flat, valid, 1.0, 7)[valid] - 1).max() > 0.01  # noise on a flat image
    evaluate = dict(train=False, input_size=(48, 64))
    assert torch.equal(plugin.augment(**evaluate, degrade=1.0)(sample, 5).image, plugin.augment(**evaluate)(sample, 5).image)
    with pytest.raises(InputError, match="degrade is a probability"):
        plugin.augment(train=True, input_size=48, degrade=1.5)


def test_fov_normalised_blur_softens_edges_without_darkening_the_fov_rim():
    from unimae.domains.fundus.augment import fov_filtered

    valid = np.zeros((40, 40), bool)
    valid[5:35, 5:35] = True
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), 1.5)  # noqa: E731
    flat = np.where(valid, 2.0, 0.0).astype(np.float32)[..., None]
    assert blur(flat[..., 0])[valid].min() < 1.8  # a plain blur pulls the rim toward the black surround
    np.testing.assert_allclose(fov_filtered(flat, valid, blur)[valid], 2.0, rtol=1e-5)
    checker = (np.indices((40, 40)).sum(0) % 2).astype(np.float32)[..., None] * valid[..., None]
    soft = fov_filtered(checker, valid, blur)
    assert np.abs(np.diff(soft[valid.nonzero()[0].min():35, 5:35, 0], axis=1)).mean() < 0.2  # was 1.0


def test_eval_letterbox_marks_padding_invalid(plugin):
    sample = _blocky_sample(3, shape=(90, 110))  # FOV box 80 x 90 -> letterboxed into 64 x 64
    out = plugin.augment(train=False, input_size=64)(sample, 0)
    box = out.meta["letterbox"]
    assert box["bbox"] == [5, 10, 85, 100]
    top, left, bottom, right = box["inner"]
    assert (left, right) == (0, 64) and bottom - top == round(80 * 64 / 90)
    assert not out.valid[:top].any() and not out.valid[bottom:].any() and out.valid[top:bottom].all()
    assert out.meta["spacing"][0] == pytest.approx(90 / 64)


def test_training_view_collates(plugin):
    view = plugin.train_dataset(None, input_size=32, num_samples=3, task="anomaly")
    assert isinstance(view, TrainingView) and len(view) == 3
    item = view[1]
    assert item["image"].shape == (3, 32, 32) and item["valid"].dtype == torch.bool
    assert item["mask"].shape == (32, 32) and item["label"].ndim == 0
    batch = torch.utils.data.default_collate([view[0], view[1]])
    assert batch["image"].shape == (2, 3, 32, 32)


# -- synthetic ----------------------------------------------------------------------------------
def test_synthetic_deterministic_and_lazy(plugin):
    a = plugin.synthetic(4, seed=3, size=64, task="segment")
    b = plugin.synthetic(9, seed=3, size=64, task="segment")
    assert torch.equal(a[2].image, b[2].image) and torch.equal(a[2].mask, b[2].mask)
    assert not torch.equal(a[1].image, a[2].image)
    assert not torch.equal(plugin.synthetic(4, seed=4, size=64)[2].image, a[2].image)
    assert torch.equal(a[-1].image, a[3].image)
    with pytest.raises(IndexError):
        a[4]
    with pytest.raises(InputError, match="unknown task"):
        plugin.synthetic(2, task="segmnet")


def test_synthetic_meta_contract(plugin):
    sample = plugin.synthetic(2, seed=0, size=(64, 80))[0]
    meta = sample.meta
    assert sample.image.shape == (3, 64, 80)
    assert meta["spatial_dims"] == 2 and meta["modality"] == "fundus" and meta["path"] is None
    assert meta["spacing"] == (1.0, 1.0) and meta["source_shape"] == (64, 80)
    assert [c["name"] for c in meta["channels"]] == ["R", "G", "B"]
    assert meta["valid"].shape == (64, 80) and 0.4 < float(meta["valid"].float().mean()) < 0.8
    assert float(sample.image[:, ~sample.valid].abs().max()) == 0.0
    assert meta["normalization"]["kind"] == "meanstd"
    json.dumps(meta["normalization"])


def test_synthetic_vessels_darker_in_green(plugin):
    ds = plugin.synthetic(4, seed=1, size=128, task="segment")
    for i in range(len(ds)):
        s = ds[i]
        green = denormalize(s.image, s.meta["normalization"])[..., 1]
        vessel = s.mask.numpy().astype(bool)
        near = cv2.dilate(vessel.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~vessel
        near &= s.valid.numpy()
        frac = vessel[s.valid.numpy()].mean()
        assert 0.04 < frac < 0.25, frac
        assert green[vessel].mean() < 0.8 * green[near].mean()


def test_synthetic_lesions_and_grades(plugin):
    ds = plugin.synthetic(12, seed=2, size=128, task="anomaly", lesion_prob=0.9)
    seen_kinds = set()
    for i in range(len(ds)):
        s = ds[i]
        info = s.meta["synthetic"]
        mask = s.mask.numpy()
        assert int(s.label) == int(mask.any()) == int(info["n_lesions"] > 0)
        rgb = denormalize(s.image, s.meta["normalization"])
        bright = rgb.sum(-1)
        h, w = mask.shape
        yy, xx = np.mgrid[:h, :w]
        for lesion in info["lesions"]:
            y, x = lesion["center"]
            r = lesion["radius"]
            assert mask[int(round(y)), int(round(x))] == 1
            d = np.hypot(yy - y, xx - x)
            core = d <= max(0.75, 0.5 * r)
            ring = (d > r + 3) & (d < r + 6) & s.valid.numpy() & (mask == 0)
            seen_kinds.add(lesion["kind"])
            if lesion["kind"] in ("exudate", "cotton_wool"):  # bright: yellow exudates, pale cotton-wool spots
                assert rgb[core, 1].mean() > np.median(rgb[ring, 1]) + 0.15
            else:
                assert bright[core].mean() < np.median(bright[ring]) - 0.15
            assert r >= 1.0  # never below a pixel, whatever the image size
    assert seen_kinds == {"exudate", "haemorrhage", "microaneurysm", "cotton_wool"}
    healthy = plugin.synthetic(5, seed=2, size=64, task="anomaly", lesion_prob=0.0)
    assert all(int(healthy[i].label) == 0 and int(healthy[i].mask.sum()) == 0 for i in range(5))


def test_synthetic_grade_follows_lesion_count(plugin):
    ds = plugin.synthetic(24, seed=5, size=64, task="classify")
    grades = []
    for i in range(len(ds)):
        s = ds[i]
        n = s.meta["synthetic"]["n_lesions"]
        assert s.mask is None and int(s.label) == grade_for_count(n) == s.meta["synthetic"]["grade"]
        grades.append(int(s.label))
    assert set(grades) == {0, 1, 2, 3}
    assert [grade_for_count(n) for n in (0, 1, 3, 4, 8, 9, 16)] == [0, 1, 1, 2, 2, 3, 3]


def test_synthetic_lesions_grow_with_the_grade_and_stay_visible_at_low_resolution(plugin):
    """ICDR-like: grade 1 = microaneurysms only; grade 3 has large blot haemorrhages and cotton-wool spots.
    Radii scale with the image but keep pixel floors, so lesions stay >= 2 px across at 64 px."""
    from unimae.domains.fundus.synthetic import GRADE_LESION_MIX

    assert set(GRADE_LESION_MIX[1]) == {"microaneurysm"} and "cotton_wool" in GRADE_LESION_MIX[3]
    for size in (64, 224):
        ds = plugin.synthetic(60, seed=3, size=size, task="classify")
        by_grade: dict[int, list[dict]] = {1: [], 2: [], 3: []}
        for i in range(len(ds)):
            info = ds[i].meta["synthetic"]
            if info["grade"]:
                by_grade[info["grade"]] += info["lesions"]
        assert {lesion["kind"] for lesion in by_grade[1]} == {"microaneurysm"}
        assert {lesion["kind"] for lesion in by_grade[3]} >= {"haemorrhage", "exudate", "cotton_wool"}
        radii = {g: np.array([lesion["radius"] for lesion in v]) for g, v in by_grade.items()}
        assert all(r.min() >= 1.0 for r in radii.values())
        assert np.median(radii[3]) > 1.5 * np.median(radii[2]) and np.median(radii[2]) > np.median(radii[1])
        blots = [lesion["radius"] for lesion in by_grade[3] if lesion["kind"] == "haemorrhage"]
        assert min(blots) >= (2.5 if size == 64 else 8.0)


def test_synthetic_dataset_class_metadata():
    assert SyntheticFundus.all_band_names == ("R", "G", "B") and SyntheticFundus.rgb_bands == ("R", "G", "B")
    ds = SyntheticFundus(1, size=48, task="anomaly", lesion_prob=1.0)
    fig = ds.plot(ds[0])
    assert "label" in fig._suptitle.get_text()


# -- writers ------------------------------------------------------------------------------------
def test_geometry_round_trip_565x584(plugin, tmp_path):
    scene = render_fundus(np.random.default_rng(0), (584, 565))
    src = tmp_path / "01_test.tif"
    Image.fromarray(_u8(scene.rgb)).save(src)
    sample = plugin.load(src)
    assert sample.image.shape == (3, 584, 565)
    # Full-resolution label map: written and read back exactly, same size as the source.
    out = plugin.write(torch.from_numpy(scene.vessels.astype(np.int64)), sample.meta, tmp_path / "vessels.png")
    with Image.open(out) as im:
        assert im.size == (565, 584) and im.mode == "L"
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    back = plugin.read_mask(out, like=sample)
    assert torch.equal(back, torch.from_numpy(scene.vessels.astype(np.int64)))
    # A prediction made on the letterboxed 64 x 64 model input goes back to 565 x 584.
    small = plugin.augment(train=False, input_size=64)(sample, 0)
    out2 = plugin.write(small.valid.long(), small.meta, tmp_path / "fov_from_model.png")
    with Image.open(out2) as im:
        assert im.size == (565, 584)
    assert _iou(plugin.read_mask(out2).numpy(), scene.fov) > 0.95
    # A heat map in 16 bits keeps its values.
    heat = torch.from_numpy(np.linspace(0, 1, 584 * 565, dtype=np.float32).reshape(584, 565))
    out3 = plugin.write(heat, sample.meta, tmp_path / "heat.png", bits=16, mask_outside_fov=False)
    with Image.open(out3) as im:
        arr = np.asarray(im).astype(np.float64) / 65535.0
        assert im.text["unimae_kind"] == "heat"
    np.testing.assert_allclose(arr, heat.numpy(), atol=1e-4)


def test_write_rejects_bad_results(plugin, read_sample, tmp_path):
    meta = read_sample.meta
    with pytest.raises(InputError, match="PNG"):
        plugin.write(np.zeros((120, 150), np.uint8), meta, tmp_path / "x.jpg")
    bad = np.zeros((120, 150), np.float32)
    bad[0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        plugin.write(bad, meta, tmp_path / "x.png")
    with pytest.raises(InputError, match="2D"):
        plugin.write(np.zeros((2, 120, 150)), meta, tmp_path / "x.png")
    assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written left behind


def test_overlay_png(tmp_path, scene):
    rgb = _u8(scene.rgb)
    out = overlay_png(rgb, scene.vessels.astype(np.int64), tmp_path / "ov.png", alpha=0.6)
    with Image.open(out) as im:
        ov = np.asarray(im)
    assert ov.shape == rgb.shape
    assert np.array_equal(ov[~scene.vessels], rgb[~scene.vessels])
    cyan = np.array([0, 230, 255])
    assert (
        np.abs(ov[scene.vessels].astype(int) - cyan).sum(-1) < np.abs(rgb[scene.vessels].astype(int) - cyan).sum(-1)
    ).all()
    heat = np.zeros((60, 75), np.float32)  # half resolution: resized onto the image
    heat[20:40, 30:50] = 1.0
    out = overlay_png(rgb, heat, tmp_path / "heat.png", threshold=0.5)
    with Image.open(out) as im:
        hv = np.asarray(im)
    assert np.array_equal(hv[:30], rgb[:30]) and not np.array_equal(hv[45:75, 65:95], rgb[45:75, 65:95])


def test_plot_returns_figure(plugin):
    sample = plugin.synthetic(1, size=64, task="segment")[0]
    fig = plugin.plot(sample, prediction=sample.mask)
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["field of view", "vessel"]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
    heat_fig = plugin.plot(sample.replace(mask=None), prediction=torch.rand(64, 64))
    assert len(heat_fig.axes) == 2  # the image panel and its colour bar


def test_drive_layout_dataset(plugin, tmp_path):
    for sub in ("images", "1st_manual", "mask"):
        (tmp_path / sub).mkdir()
    scenes = [render_fundus(np.random.default_rng([1, i]), 96) for i in range(2)]
    for i, sc in zip((31, 32), scenes):
        Image.fromarray(_u8(sc.rgb)).save(tmp_path / "images" / f"{i}_training.tif")
        Image.fromarray(sc.vessels.astype(np.uint8) * 255).save(tmp_path / "1st_manual" / f"{i}_manual1.gif")
        Image.fromarray(sc.fov.astype(np.uint8) * 255).save(tmp_path / "mask" / f"{i}_training_mask.gif")
    ds = DRIVE(tmp_path, preprocess={"preset": "clahe"})
    assert len(ds) == 2 and DRIVE.rgb_bands == ("R", "G", "B")
    s = ds[1]
    assert torch.equal(s.mask, torch.from_numpy(scenes[1].vessels.astype(np.int64)))
    assert torch.equal(s.valid, torch.from_numpy(scenes[1].fov)) and s.meta["fov_source"] == "file"
    assert s.meta["normalization"]["clahe"] is not None
    with pytest.raises(InputError, match="images/"):
        DRIVE(tmp_path / "mask")


# -- real samples (opt-in) ----------------------------------------------------------------------
@pytest.mark.samples
def test_drive_samples(plugin):
    if not DRIVE_DIR.is_dir():
        pytest.skip("../shared/samples not present")
    images = sorted((DRIVE_DIR / "images").glob("*_training.tif"))
    assert len(images) == 4
    for path in images:
        key = path.stem.split("_")[0]
        sample = plugin.read(path)
        assert sample.image.shape == (3, 584, 565)
        given = plugin.read(path, fov_mask=DRIVE_DIR / "mask" / f"{key}_training_mask.gif").valid
        assert _iou(sample.valid, given) > 0.95
        vessels = plugin.read_mask(DRIVE_DIR / "1st_manual" / f"{key}_manual1.gif", like=sample)
        assert set(vessels.unique().tolist()) == {0, 1}
        fraction = float(vessels[given].float().mean())
        assert 0.08 < fraction < 0.18, fraction
        model = plugin.preprocess(sample, preset="clahe")
        assert abs(float(model.image[:, given].mean())) < 1.0
    ds = DRIVE(DRIVE_DIR, preprocess={})
    item = plugin.augment(train=True, input_size=224)(ds[0], 0)
    assert item.image.shape == (3, 224, 224) and set(item.mask.unique().tolist()) <= {0, 1}
