"""The inference layer: sliding windows, streamed tiles, the predict layer and ``unimae predict``.

Models are tiny and randomly initialised, saved with ``save_checkpoint`` and the task contract: these
tests check geometry, bookkeeping and errors, not accuracy. Every input file is written into
``tmp_path`` by the test; the opt-in ``samples`` test reads ``../shared/samples``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from unimae.apps.predict import (
    Prediction,
    Predictor,
    add_predict_parser,
    clear_predictor_cache,
    collect_inputs,
    display_image,
    load_predictor,
    make_contract,
    overlay_image,
    run_predict,
    task_metadata,
    write_prediction,
)
from unimae.core.anomaly import image_scores
from unimae.core.checkpoint import save_checkpoint
from unimae.core.errors import InputError
from unimae.core.inference import (
    TopFraction,
    parse_task_metadata,
    ramp_profile,
    sliding_window,
    stream_blend,
    tile_grid,
)
from unimae.core.mae import MaskedAutoencoder
from unimae.core.models import MAEClassifier, MAESegmenter
from unimae.domains import get_domain
from unimae.domains.multispectral import SyntheticScenes, preset_channels

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
TINY = dict(embed_dim=32, depth=1, num_heads=2)
TINY_DEC = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)
RGB = [{"name": "R", "wavelength": 0.61}, {"name": "G", "wavelength": 0.55}, {"name": "B", "wavelength": 0.465}]
S2 = preset_channels("sentinel2_l1c")
TRANSFORM = from_origin(500_000.0, 4_200_000.0, 10.0, 10.0)
PATIENT = {"PatientName": "Doe^Janelle", "PatientID": "PID-SECRET-4711", "PatientBirthDate": "19610203"}


# ------------------------------------------------------------------------------------------------
# checkpoints and files
# ------------------------------------------------------------------------------------------------
def _save(path: Path, model, *, domain, task, classes, input_size, channels, preprocess=None, multi_label=False,
          anomaly=None) -> Path:  # fmt: skip
    contract = make_contract(domain=domain, spatial_dims=model.config["spatial_dims"], channels=channels,
                             patch_size=model.config["patch_size"], input_size=input_size, normalization=None,
                             preprocess=preprocess)  # fmt: skip
    meta = task_metadata(task=task, domain=domain, class_names=classes, contract=contract, multi_label=multi_label,
                         anomaly=anomaly)  # fmt: skip
    return save_checkpoint(path, model, **meta)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny random task checkpoints for every domain the tests use."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    ct_pre = {"window": "soft_tissue", "spacing": [3.0, 3.0, 3.0]}
    seg_ct = get_domain("ct").seg_class_names
    ms_names = get_domain("multispectral").seg_class_names
    findings = list(get_domain("xray").class_names)
    out = {
        "ct_segment": _save(root / "ct_segment", MAESegmenter(len(seg_ct), spatial_dims=3, in_chans=1, patch_size=16,
                            feature_size=4, **TINY), domain="ct", task="segment", classes=seg_ct, input_size=32,
                            channels=[{"name": "CT", "wavelength": None}], preprocess=ct_pre),
        "ct_anomaly": _save(root / "ct_anomaly", MaskedAutoencoder(spatial_dims=3, in_chans=1, patch_size=16, **TINY,
                            **TINY_DEC), domain="ct", task="anomaly", classes=[], input_size=32,
                            channels=[{"name": "CT", "wavelength": None}], preprocess=ct_pre,
                            anomaly={"image_threshold": 0.1, "pixel_threshold": 0.5}),
        "fundus_segment": _save(root / "fundus_segment", MAESegmenter(2, in_chans=3, patch_size=16, feature_size=8,
                                **TINY), domain="fundus", task="segment", classes=["background", "vessel"],
                                input_size=64, channels=RGB),
        "fundus_classify": _save(root / "fundus_classify", MAEClassifier(4, in_chans=3, patch_size=16, **TINY),
                                 domain="fundus", task="classify", classes=list(get_domain("fundus").class_names),
                                 input_size=64, channels=RGB),
        "fundus_anomaly": _save(root / "fundus_anomaly", MaskedAutoencoder(in_chans=3, patch_size=16, **TINY, **TINY_DEC),
                                domain="fundus", task="anomaly", classes=["normal", "anomaly"], input_size=64,
                                channels=RGB, anomaly={"image_threshold": 1.0, "pixel_threshold": 0.8}),
        "xray_classify": _save(root / "xray_classify", MAEClassifier(len(findings), multi_label=True, in_chans=1,
                               patch_size=16, **TINY), domain="xray", task="classify", classes=findings,
                               input_size=64, channels=[{"name": "grey", "wavelength": None}], multi_label=True),
        "ms_segment": _save(root / "ms_segment", MAESegmenter(5, in_chans=13, patch_size=8, feature_size=8, **TINY),
                            domain="multispectral", task="segment", classes=ms_names, input_size=32, channels=S2),
        "ms_anomaly": _save(root / "ms_anomaly", MaskedAutoencoder(in_chans=13, patch_size=8, **TINY, **TINY_DEC),
                            domain="multispectral", task="anomaly", classes=[], input_size=32, channels=S2,
                            anomaly={"image_threshold": 0.5, "pixel_threshold": 1.0}),
    }  # fmt: skip
    return out


def write_s2(path: Path, *, size=(96, 128), dtype="uint16", nodata=0, count=13, seed=0, corner=True) -> Path:
    """A Sentinel-2-like GeoTIFF of a synthetic land-cover scene (reflectance x 10000), nodata in a corner."""
    scene = SyntheticScenes(1, seed=seed, size=size)[0]
    norm = scene.meta["normalization"]
    refl = scene.image.numpy() * np.asarray(norm["std"])[:, None, None] + np.asarray(norm["mean"])[:, None, None]
    if dtype == "uint16":
        data = np.clip(refl * 10000, 1, 65535).astype(np.uint16)
    else:
        data = refl.astype(np.float32)
    data = data[:count]
    if corner:
        data[:, :9, :11] = nodata
    with rasterio.open(path, "w", driver="GTiff", height=size[0], width=size[1], count=count, dtype=dtype,
                       crs="EPSG:32633", transform=TRANSFORM, nodata=nodata) as ds:  # fmt: skip
        ds.write(data)
    return path


def write_fundus(path: Path, seed: int = 0, size=(90, 110)) -> Path:
    """A colour photograph-like PNG: a bright disc on black with random texture."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[disc] = (rng.random((int(disc.sum()), 3)) * np.array([120, 70, 40]) + np.array([120, 50, 20])).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_ct(path: Path, affine: np.ndarray, shape=(40, 36, 12), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    hu = rng.normal(-900, 50, shape)
    ii, jj = np.mgrid[: shape[0], : shape[1]]
    body = ((ii - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((jj - shape[1] / 2) / (0.4 * shape[1])) ** 2 < 1
    hu[body] = rng.normal(40, 30, (int(body.sum()), shape[2]))
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), path)
    return path


OBLIQUE = np.array(
    [[-0.9, 0.0, 0.05, 40.0], [0.0, 0.0, 2.5, -30.0], [0.02, -1.1, 0.0, 12.0], [0.0, 0.0, 0.0, 1.0]]
)  # LIP-ish axes with a small rotation: nothing is RAS, nothing is isotropic


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="unimae")
    add_predict_parser(parser.add_subparsers(dest="command"))
    argv = ["predict", "--checkpoint", str(kw.pop("checkpoint")), "--input", str(kw.pop("input")),
            "--output", str(kw.pop("output")), "--no-progress", "--device", "cpu", "--precision", kw.pop("precision", "fp32")]  # fmt: skip
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# core: the contract, sliding windows, streamed tiles
# ------------------------------------------------------------------------------------------------
def test_task_metadata_round_trip_and_errors():
    contract = make_contract(domain="fundus", spatial_dims=2, channels=RGB, patch_size=16, input_size=224,
                             normalization={"kind": "meanstd"}, preprocess={"clahe": False})  # fmt: skip
    meta = {"format": "unimae-checkpoint", "model_class": "MaskedAutoencoder",
            **task_metadata(task="anomaly", domain="fundus", class_names=[], contract=contract,
                            anomaly={"image_threshold": 0.3, "pixel_threshold": 0.7})}  # fmt: skip
    json.dumps(meta)  # JSON-serialisable as written
    info = parse_task_metadata(meta)
    assert info["contract"]["input_size"] == [224, 224] and info["class_names"] == ["normal", "anomaly"]
    assert info["anomaly"] == {"k": 4, "sigma": None, "top_fraction": 0.01, "image_threshold": 0.3,
                               "pixel_threshold": 0.7, "fpr": 0.05}  # fmt: skip
    # a pretraining MAE checkpoint reads as an uncalibrated anomaly model
    pre = parse_task_metadata({"model_class": "MaskedAutoencoder", "contract": contract})
    assert pre["task"] == "anomaly" and pre["anomaly"]["pixel_threshold"] is None
    bad = [({**meta, "contract": {}}, "no input 'contract'"), ({**meta, "model_class": "MAEClassifier"}, "must hold a MaskedAutoencoder"),
           ({**meta, "task": "detect"}, "not one of"), ({"model_class": "MAEClassifier", "contract": contract}, "no 'task'")]  # fmt: skip
    for m, msg in bad:
        with pytest.raises(InputError, match=msg) as err:
            parse_task_metadata(m, "run/best.json")
        assert "\n" not in str(err.value) and str(err.value).startswith("best.json: ")


def test_sliding_window_blends_a_local_function_exactly_in_2d_and_3d():
    torch.manual_seed(0)
    for shape, roi in [((2, 3, 50, 37), 16), ((1, 2, 20, 18, 11), (8, 8, 8)), ((1, 1, 5, 7), 16)]:
        x = torch.randn(shape)
        calls = []

        def fn(w: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(w.shape))
            return torch.cat([w.sin(), w.mean(1, keepdim=True)], dim=1)

        out = sliding_window(fn, x, roi, overlap=0.5, sw_batch_size=3)
        want = torch.cat([x.sin(), x.mean(1, keepdim=True)], dim=1)
        assert out.shape == want.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        roi_t = (roi,) * (x.ndim - 2) if isinstance(roi, int) else roi
        assert all(c[2:] == roi_t and c[0] <= 3 for c in calls)  # windows of the ROI, batched
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(lambda w: w, torch.zeros(1, 1, 8, 8), 4, overlap=1.0)


def test_tile_grid_and_ramps_partition_unity():
    assert tile_grid(100, 32, 8) == [(0, 32), (24, 56), (48, 80), (72, 100)]
    assert tile_grid(20, 32, 8) == [(0, 20)]
    with pytest.raises(ValueError, match="half the tile"):
        tile_grid(100, 32, 17)
    total = np.zeros(100, np.float32)
    regions = tile_grid(100, 32, 8)
    for j, (a, b) in enumerate(regions):
        total[a:b] += ramp_profile(b - a, 8 if j else 0, 8 if j + 1 < len(regions) else 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("shape,tile,overlap", [((100, 37), 32, 8), ((257, 300), 64, 32), ((10, 500), 32, 0), ((95, 95), 40, 20)])
def test_stream_blend_emits_each_pixel_once_and_reproduces_a_local_function(shape, tile, overlap):
    rng = np.random.default_rng(0)
    h, w = shape
    img = rng.random((2, h, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.1
    valid[:20, :20] = False  # an all-invalid tile is never predicted
    out = np.full((2, h, w), np.nan, np.float32)
    cover = np.zeros((h, w), int)
    got_valid = np.zeros((h, w), bool)
    order, windows = [], []

    def predict(win):
        r, c, th, tw = win
        assert r >= 0 and c >= 0 and r + th <= h and c + tw <= w and (th, tw) == (min(tile, h), min(tile, w))
        windows.append(win)
        v = valid[r : r + th, c : c + tw]
        return (None, v) if not v.any() else (np.sin(img[:, r : r + th, c : c + tw]) * 3, v)

    def emit(r, c, values, ok):
        bh, bw = ok.shape
        order.append((r, c))
        out[:, r : r + bh, c : c + bw] = values
        cover[r : r + bh, c : c + bw] += 1
        got_valid[r : r + bh, c : c + bw] = ok

    stream_blend(shape, predict, emit, channels=2, tile=tile, overlap=overlap)
    assert cover.min() == 1 and cover.max() == 1 and order == sorted(order)
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_allclose(out[:, valid], (np.sin(img) * 3)[:, valid], atol=1e-5)
    assert len(windows) == len(tile_grid(h, min(tile, h), min(overlap, min(tile, h) // 2))) * len(
        tile_grid(w, min(tile, w), min(overlap, min(tile, w) // 2)))


def test_top_fraction_streams_the_image_score():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, size=(1, 70, 90)).astype(np.float32)
    valid = rng.random((1, 70, 90)) > 0.3
    tf = TopFraction(0.01, x.size)
    for r in range(0, 70, 9):
        block = x[0, r : r + 9]
        tf.update(block[valid[0, r : r + 9]])
    want = image_scores(torch.from_numpy(x), torch.from_numpy(valid), top_fraction=0.01).item()
    assert tf.mean() == pytest.approx(want, rel=1e-6) and tf.count == int(valid.sum())


# ------------------------------------------------------------------------------------------------
# geometry: NIfTI and GeoTIFF results on the source grid
# ------------------------------------------------------------------------------------------------
def test_ct_segmentation_and_anomaly_keep_the_nifti_geometry(ckpts, tmp_path):
    src = write_ct(tmp_path / "scan.nii.gz", OBLIQUE)
    pred = load_predictor(ckpts["ct_segment"], device="cpu", precision="fp32").predict(src)
    assert pred.label_map.shape == (40, 36, 12) and pred.label_map.max() < 7 and pred.task == "segment"
    assert abs(sum(pred.class_fractions.values()) - 1.0) < 1e-6
    files = write_prediction(pred, tmp_path / "out", "scan")
    img = nib.load(files["seg"])
    assert img.shape == (40, 36, 12) and np.allclose(img.affine, OBLIQUE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), pred.label_map)
    assert Image.open(files["overlay"]).size[0] > 0
    report = json.loads(files["report"].read_text())
    assert report["input"]["source_shape"] == [40, 36, 12] and np.allclose(report["input"]["affine"], OBLIQUE)

    ano = load_predictor(ckpts["ct_anomaly"], device="cpu", precision="fp32")
    a = ano.predict(src)
    assert a.heatmap.shape == (40, 36, 12) and a.heatmap.dtype == np.float32 and a.heatmap.max() > 0
    assert a.is_anomalous == (a.score > 0.1) and a.threshold == 0.5
    files = write_prediction(a, tmp_path / "out", "scan_anomaly")
    heat = nib.load(files["heatmap"])
    assert heat.shape == (40, 36, 12) and np.allclose(heat.affine, OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(np.asarray(heat.dataobj), a.heatmap, rtol=1e-5, atol=1e-6)
    mask = np.asarray(nib.load(files["anomaly_mask"]).dataobj)
    np.testing.assert_array_equal(mask.astype(bool), a.anomaly_mask)


@pytest.mark.parametrize("dtype,nodata,want_nodata", [("float32", -9999.0, -9999.0), ("uint16", 0, 255.0)])
def test_geotiff_results_keep_crs_transform_nodata_and_shape(ckpts, tmp_path, dtype, nodata, want_nodata):
    src = write_s2(tmp_path / "scene.tif", dtype=dtype, nodata=nodata)
    for task in ("segment", "anomaly"):
        out = tmp_path / task
        assert run_predict(_args(checkpoint=ckpts[f"ms_{task}"], input=src, output=out)) == 0
        names = ["scene_seg.tif"] if task == "segment" else ["scene_heatmap.tif", "scene_anomaly_mask.tif"]
        with rasterio.open(src) as s:
            for name in names:
                with rasterio.open(out / name) as r:
                    assert r.crs == s.crs and r.transform == s.transform and r.shape == s.shape and r.count == 1
                    got = r.read(1)
                    expect_nd = want_nodata if name == "scene_seg.tif" else (
                        255.0 if "mask" in name else (nodata if nodata < 0 else np.nan))
                    assert (np.isnan(r.nodata) and np.isnan(expect_nd)) or r.nodata == expect_nd
                    corner = got[:9, :11]
                    assert (np.isnan(corner).all() if np.isnan(r.nodata) else (corner == r.nodata).all())
                    inside = got[20:, 20:]
                    assert np.isfinite(inside).all() and (inside != r.nodata).all()
                    if name == "scene_seg.tif":
                        assert inside.max() < 5
        report = json.loads((out / "scene.json").read_text())
        assert report["input"]["crs"] and report["task"] == task and "streamed" in report
        assert Image.open(out / "scene_overlay.png").mode == "RGBA"  # nodata is transparent


def test_tiled_geotiff_equals_untiled(ckpts, tmp_path):
    src = write_s2(tmp_path / "scene.tif", size=(96, 128))
    for task, key in (("segment", "probs"), ("anomaly", "heatmap")):
        p = Predictor(*_load(ckpts[f"ms_{task}"]))
        # sliding-window overlap 0: tiled and whole-scene windows lie on one grid, so blending must be exact;
        # overlap 0.25 (the default): the model sees other context near tile seams, the blend stays close
        for overlap, tile, tile_overlap in ((0.0, 64, 32), (0.25, 64, 16))[: 2 if task == "segment" else 1]:
            p.overlap = overlap
            res = {}
            for name, t, ov in (("tiled", tile, tile_overlap), ("whole", 512, 0)):
                p.tile, p.tile_overlap = t, ov
                files = p.predict_geotiff(src, tmp_path / f"{task}_{name}_{overlap}", probabilities=True)
                with rasterio.open(files[key]) as ds:
                    res[name] = ds.read(masked=True)
            np.testing.assert_array_equal(res["tiled"].mask, res["whole"].mask)
            diff = np.abs(res["tiled"] - res["whole"])
            if overlap == 0.0:
                assert float(diff.max()) < 1e-5
            else:  # no seams, holes or double counts: a small mean difference, zero far from the seams
                assert float(diff.mean()) < 0.1 * float(np.abs(res["whole"]).mean())
                assert float(diff[..., :24, :24].max()) < 1e-5


def _load(ckpt: Path):
    from unimae.core.checkpoint import load_checkpoint

    model, meta = load_checkpoint(ckpt)
    return model, meta


def test_in_memory_scene_matches_the_streamed_files(ckpts, tmp_path):
    src = write_s2(tmp_path / "scene.tif", size=(70, 90))
    p = load_predictor(ckpts["ms_segment"], device="cpu", precision="fp32")
    pred = p.predict(src)
    assert pred.label_map.shape == (70, 90) and pred.source is not None
    files = write_prediction(pred, tmp_path / "mem", "scene")
    streamed = p.predict_geotiff(src, tmp_path / "stream")
    with rasterio.open(files["seg"]) as a, rasterio.open(streamed["seg"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.nodata == b.nodata == 255 and a.transform == b.transform


# ------------------------------------------------------------------------------------------------
# classification, anomaly, folders
# ------------------------------------------------------------------------------------------------
def test_classification_json_and_folder_csv(ckpts, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        write_fundus(folder / f"eye{i}.png", seed=i)
    out = tmp_path / "out"  # precision auto: bf16 autocast on CPUs that have it, float32 results either way
    assert run_predict(_args(checkpoint=ckpts["fundus_classify"], input=folder, output=out, precision="auto")) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    names = list(get_domain("fundus").class_names)
    assert [r["file"] for r in rows] == ["eye0.png", "eye1.png", "eye2.png"] and not any(r["error"] for r in rows)
    for r in rows:
        probs = [float(r[f"p_{n}"]) for n in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and r["predicted"] == names[int(np.argmax(probs))]
        report = json.loads((out / f"{Path(r['file']).stem}.json").read_text())
        assert report["task"] == "classify" and set(report["probabilities"]) == set(names)
        assert report["input"]["source_shape"] == [90, 110]
    # multi-label: independent sigmoids, a decision threshold
    xr = tmp_path / "chest.png"
    Image.fromarray((np.random.default_rng(0).random((80, 70)) * 255).astype(np.uint8)).save(xr)
    p = load_predictor(ckpts["xray_classify"], device="cpu", precision="fp32")
    pr = p.predict(xr, threshold=0.3)
    assert pr.multi_label and len(pr.probabilities) == len(get_domain("xray").class_names) and all(0 < v < 1 for v in pr.probabilities.values())
    assert pr.predicted == [n for n, v in pr.probabilities.items() if v > 0.3] and pr.threshold == 0.3


def test_anomaly_threshold_changes_the_mask_not_the_heatmap(ckpts, tmp_path):
    src = write_fundus(tmp_path / "eye.png", size=(90, 110))
    p = load_predictor(ckpts["fundus_anomaly"], device="cpu", precision="fp32")
    a = p.predict(src)
    assert a.heatmap.shape == (90, 110) and a.threshold == 0.8 and a.image_threshold == 1.0
    assert a.is_anomalous == (a.score > 1.0)
    np.testing.assert_array_equal(a.anomaly_mask, a.heatmap > 0.8)  # the calibrated threshold by default
    lo, hi = (float(q) for q in np.quantile(a.heatmap[a.heatmap > 0], [0.3, 0.7]))
    b, c = p.predict(src, threshold=lo), p.predict(src, threshold=hi)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    np.testing.assert_array_equal(a.heatmap, c.heatmap)
    assert b.threshold == lo and b.score == a.score == c.score and b.is_anomalous == a.is_anomalous
    assert b.anomaly_mask.sum() > c.anomaly_mask.sum() > 0 and not (c.anomaly_mask & ~b.anomaly_mask).any()
    np.testing.assert_array_equal(a.with_threshold(lo).anomaly_mask, b.anomaly_mask)
    files = write_prediction(b, tmp_path / "out", "eye")
    assert Image.open(files["heatmap"]).size == (110, 90) and Image.open(files["anomaly_mask"]).size == (110, 90)
    mask_png = np.asarray(Image.open(files["anomaly_mask"]))
    np.testing.assert_array_equal(mask_png > 0, b.anomaly_mask)
    report = json.loads(files["report"].read_text())
    assert report["pixel_threshold"] == lo and report["score"] == pytest.approx(b.score)
    assert report["is_anomalous"] == b.is_anomalous


def test_full_resolution_segmentation_of_a_sample(ckpts):
    """A synthetic sample already in model space (what the app's examples pass) at a size != input_size."""
    sample = get_domain("fundus").synthetic(1, size=(100, 84), task="segment")[0]
    pred = load_predictor(ckpts["fundus_segment"], device="cpu", precision="fp32").predict(sample)
    assert pred.label_map.shape == (100, 84) and pred.source is sample
    assert not pred.label_map[~sample.valid.numpy()].any()  # outside the field of view: background
    rgb = display_image(sample, get_domain("fundus"))
    over = overlay_image(rgb, labels=pred.label_map, alpha=1.0)
    assert over.shape == (100, 84, 3)
    fg = pred.label_map > 0
    if fg.any():
        assert (over[fg] != rgb[fg]).any(axis=-1).all()  # labelled pixels are coloured, others untouched
    np.testing.assert_array_equal(over[~fg], rgb[~fg])


def test_bad_inputs_give_one_line_errors_and_the_rest_still_run(ckpts, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_fundus(folder / "a_good.png")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    write_ct(folder / "c_scan.nii.gz", np.eye(4))
    (folder / ".hidden").write_text("ignored")
    out = tmp_path / "out"
    code = run_predict(_args(checkpoint=ckpts["fundus_segment"], input=folder, output=out))
    err = capsys.readouterr().err
    assert code == 2
    assert (out / "a_good_seg.png").is_file() and (out / "a_good.json").is_file()
    lines = [ln for ln in err.splitlines() if ln.startswith("unimae: error:")]
    assert len(lines) == 2 and "b_corrupt.png" in lines[0] and "c_scan.nii.gz" in lines[1]
    assert "fundus" in lines[1]  # says which domain the model reads
    rows = {r["file"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert rows["a_good.png"]["error"] == "" and rows["b_corrupt.png"]["error"] and rows["c_scan.nii.gz"]["error"]

    # wrong band count, and an image of another domain, to a multispectral model
    ms = tmp_path / "scenes"
    ms.mkdir()
    write_s2(ms / "good.tif", size=(40, 40))
    write_s2(ms / "four_bands.tif", size=(40, 40), count=4)  # no preset has 4 bands: the reader says so
    write_s2(ms / "rgb.tif", size=(40, 40), count=3)  # read as RGB: the model needs 13 bands
    write_fundus(ms / "photo.png")
    code = run_predict(_args(checkpoint=ckpts["ms_segment"], input=ms, output=tmp_path / "ms_out"))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unimae: error:")]
    assert code == 2 and (tmp_path / "ms_out" / "good_seg.tif").is_file() and len(lines) == 3
    assert any("four_bands.tif" in ln and "4 bands" in ln for ln in lines)
    assert any("rgb.tif" in ln and "has 3 bands" in ln and "expects 13" in ln for ln in lines)
    assert any("photo.png" in ln for ln in lines)

    # a bad checkpoint or input path: nothing runs, one line, status 2
    assert run_predict(_args(checkpoint=tmp_path / "nope", input=folder, output=out)) == 2
    assert run_predict(_args(checkpoint=ckpts["fundus_segment"], input=tmp_path / "missing", output=out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(ln.startswith("unimae: error:") for ln in err)


def test_predictor_cache_reuses_models_until_the_file_changes(ckpts):
    clear_predictor_cache()
    ck = ckpts["fundus_classify"]
    a = load_predictor(ck, device="cpu", precision="fp32")
    b = load_predictor(str(ck).replace(".json", ".safetensors"), device="cpu", precision="fp32")
    assert a is b and a.model is b.model
    assert load_predictor(ck, device="cpu", precision="bf16") is not a  # another precision: another predictor
    assert load_predictor(ck, device="cpu", precision="fp32") is a
    st = os.stat(ck)
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the checkpoint was rewritten
    c = load_predictor(ck, device="cpu", precision="fp32")
    assert c is not a and isinstance(c, Predictor) and load_predictor(ck, device="cpu", precision="fp32") is c
    with pytest.raises(InputError, match="unknown device"):
        load_predictor(ck, device="tpu:0")


def test_reports_never_carry_patient_fields(ckpts, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    pix = (np.random.default_rng(0).random((60, 50)) * 4000).astype(np.uint16)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 60, 50, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pix.tobytes()
    path = tmp_path / "chest.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    assert run_predict(_args(checkpoint=ckpts["xray_classify"], input=path, output=out)) == 0
    text = (out / "chest.json").read_text() + (out / "predictions.csv").read_text()
    for value in PATIENT.values():
        assert value not in text and value.split("^")[0] not in text
    assert json.loads((out / "chest.json").read_text())["input"]["modality"] == "DX"


def test_collect_inputs_and_cli_parser(tmp_path):
    plugin = get_domain("ct")
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    assert collect_inputs(series, plugin) == ([series], [])
    root = tmp_path / "root"
    (root / "notes").mkdir(parents=True)
    (root / "b.nii.gz").write_bytes(b"x")
    (root / "a.nii").write_bytes(b"x")
    items, skipped = collect_inputs(root, plugin)
    assert [p.name for p in items] == ["a.nii", "b.nii.gz"] and [p.name for p in skipped] == ["notes"]
    with pytest.raises(InputError, match="input not found"):
        collect_inputs(tmp_path / "nope", plugin)
    args = _args(checkpoint="m", input="i", output="o", threshold=0.25, precision="fp32")
    assert args.threshold == 0.25 and args.precision == "fp32" and args.func.__name__ == run_predict.__name__


def test_prediction_rejects_threshold_on_other_tasks():
    pred = Prediction(task="segment", domain="fundus", class_names=["bg", "fg"], meta={})
    with pytest.raises(ValueError, match="anomaly"):
        pred.with_threshold(0.5)


# ------------------------------------------------------------------------------------------------
# real files (opt-in)
# ------------------------------------------------------------------------------------------------
@pytest.mark.samples
def test_real_samples_keep_their_geometry(ckpts, tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    drive = sorted((SAMPLES / "fundus" / "DRIVE" / "training" / "images").glob("*.tif"))[:1]
    eurosat = sorted((SAMPLES / "multispectral").glob("*.tif"))[:1]
    ct = SAMPLES / "ct" / "example_ct.nii.gz"
    if drive:
        p = Predictor(*_load(ckpts["fundus_segment"]), overlap=0.0, sw_batch_size=16)
        pred = p.predict(drive[0])
        assert pred.label_map.shape == (584, 565)
        files = write_prediction(pred, tmp_path, "drive")
        assert Image.open(files["seg"]).size == (565, 584)
    if eurosat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files = load_predictor(ckpts["ms_segment"], device="cpu", precision="fp32").predict_geotiff(eurosat[0], tmp_path)
        with rasterio.open(eurosat[0]) as s, rasterio.open(files["seg"]) as r:
            assert r.crs == s.crs and r.transform == s.transform and r.shape == s.shape
    if ct.is_file():
        p = Predictor(*_load(ckpts["ct_segment"]), overlap=0.0)
        p.preprocess_kwargs["spacing"] = [6.0, 6.0, 6.0]  # a coarse grid keeps the test fast; geometry is the point
        pred = p.predict(ct)
        files = write_prediction(pred, tmp_path, "ct")
        src, out = nib.load(ct), nib.load(files["seg"])
        assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
