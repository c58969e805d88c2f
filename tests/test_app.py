"""The web app: display helpers, the model picker, the demo-model cache, and the live app over its API.

The helpers are tested on predictions built by hand (no model). The app itself is launched in-process on
a free port of 127.0.0.1 with the demo models of the ``test`` profile (real fine-tuned models, a few
steps each) built into a temporary cache, and every domain x task endpoint is called with
``gradio_client`` on the example files. Every input file is written by the tests or by the demo builder.
"""

from __future__ import annotations

import os

# as `unimae app` runs (apps/app.py), before anything imports gradio or huggingface_hub; the API client in these tests
# shares the process, so it is offline too (README: API users set the same for gradio_client)
for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_key, _value)

import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from unimae.apps import ui_render as R  # noqa: E402
from unimae.apps.predict import Prediction  # noqa: E402
from unimae.core.errors import InputError  # noqa: E402
from unimae.domains.base import Sample  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
PATIENT_STRINGS = ("SYNTHETIC^PHANTOM", "UNIMAE-DEMO-0001", "19000101")


# ------------------------------------------------------------------------------------------------
# hand-made predictions
# ------------------------------------------------------------------------------------------------
def ct_prediction(task: str = "segment", *, affine: np.ndarray | None = None, shape=(10, 8, 6)) -> Prediction:
    """A CT prediction on an LPS grid: HU 0 everywhere, one labelled / hot voxel block at known world place."""
    affine = np.diag([-2.0, -2.0, 3.0, 1.0]) if affine is None else affine
    hu = np.zeros(shape, np.float32)
    meta = {"spatial_dims": 3, "affine": affine, "valid": torch.ones(shape, dtype=torch.bool), "units": "HU",
            "source_shape": shape, "spacing": (2.0, 2.0, 3.0), "path": "scan.nii.gz"}  # fmt: skip
    source = Sample(image=torch.from_numpy(hu)[None], meta=meta)
    result = np.zeros(shape, np.float32)
    result[1, 2, 4] = 1.0  # LPS voxel (1, 2, 4) = RAS voxel (8, 5, 4): right, anterior
    if task == "segment":
        return Prediction(task="segment", domain="ct", class_names=["background", "liver", "spleen"], meta=meta,
                          source=source, label_map=(result * 2).astype(np.uint8),
                          class_fractions={"background": 0.99, "liver": 0.0, "spleen": 0.01})  # fmt: skip
    heat = result * 4.0
    pred = Prediction(task="anomaly", domain="ct", class_names=["normal", "anomaly"], meta=meta, source=source,
                      heatmap=heat, score=4.0, threshold=2.0, image_threshold=1.0, is_anomalous=True)  # fmt: skip
    return pred.with_threshold(2.0)


def scene_prediction(nodata: bool = True) -> Prediction:
    """A 4-band scene (B02, B03, B04, B08) with a nodata corner and a two-class label map."""
    channels = [{"name": n, "wavelength": w} for n, w in (("B02", 0.49), ("B03", 0.56), ("B04", 0.665), ("B08", 0.842))]
    img = np.random.default_rng(0).uniform(0.05, 0.3, (4, 12, 16)).astype(np.float32)
    valid = np.ones((12, 16), bool)
    if nodata:
        valid[:3, :4] = False
    meta = {"spatial_dims": 2, "channels": channels, "valid": torch.from_numpy(valid), "crs": "EPSG:32633",
            "transform": (10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0), "nodata": 0.0, "source_shape": (12, 16)}  # fmt: skip
    labels = np.zeros((12, 16), np.uint8)
    labels[6:, 8:] = 1
    return Prediction(task="segment", domain="multispectral", class_names=["water", "forest"], meta=meta,
                      source=Sample(image=torch.from_numpy(img), meta=meta), label_map=labels,
                      class_fractions={"water": 0.7, "forest": 0.3})  # fmt: skip


# ------------------------------------------------------------------------------------------------
# display helpers
# ------------------------------------------------------------------------------------------------
def test_plane_slice_radiological_orientation():
    vol = np.zeros((5, 6, 7), np.int32)  # RAS: axis 0 -> patient right, 1 -> anterior, 2 -> superior
    vol[4, 5, 3] = 1  # far right, most anterior, middle height
    ax = R.plane_slice(vol, "axial", 3)
    assert ax.shape == (6, 5)
    assert ax[0, 0] == 1  # anterior at the top, the patient's right on the viewer's left
    cor = R.plane_slice(vol, "coronal", 5)
    assert cor.shape == (7, 5) and cor[3, 0] == 1  # superior at the top (row 6 - 3), right on the left
    sag = R.plane_slice(vol, "sagittal", 4)
    assert sag.shape == (7, 6) and sag[3, 0] == 1  # anterior on the left
    assert R.plane_slice(vol, "axial", 99).shape == (6, 5)  # clamped to the volume
    with pytest.raises(InputError, match="plane"):
        R.plane_slice(vol, "oblique", 0)


def test_blend_labels_colours_hidden_and_valid():
    base = np.full((4, 4, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2, 2]] * 4)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    valid = np.ones((4, 4), bool)
    valid[:, 3] = False
    out = R.blend_labels(base, labels, colours, 1.0, hidden=(0,), valid=valid)
    assert (out[:, 0] == 100).all()  # hidden background untouched
    assert (out[:, 1] == [0, 255, 0]).all() and (out[:, 2] == [0, 0, 255]).all()
    assert (out[:, 3] == 100).all()  # outside valid untouched
    half = R.blend_labels(base, labels, colours, 0.5, hidden=(0,))
    assert tuple(half[0, 1]) == (50, 178, 50)
    assert (R.blend_labels(base, labels, colours, 0.0) == base).all()
    with pytest.raises(InputError, match="opacity"):
        R.blend_labels(base, labels, colours, 1.5)


def test_blend_heat_outlines_the_mask_and_scales_by_vmax():
    base = np.zeros((9, 9, 3), np.uint8)
    heat = np.zeros((9, 9), np.float32)
    heat[2:7, 2:7] = 1.0
    mask = heat > 0.5
    out = R.blend_heat(base, heat, 1.0, vmax=1.0, mask=mask)
    assert tuple(out[2, 2]) == tuple(R.MASK_EDGE.astype(np.uint8))  # border of the mask
    assert tuple(out[4, 4]) != tuple(R.MASK_EDGE.astype(np.uint8))  # inside: heat colour
    assert out[4, 4].sum() > 300 and (out[0, 0] == 0).all()  # hot inside, cold outside stays the base
    dim = R.blend_heat(base, heat, 1.0, vmax=4.0)
    assert dim[4, 4].sum() < out[4, 4].sum()  # a larger vmax draws the same error dimmer
    assert R.heat_vmax(np.array([0.1, 0.2]), threshold=1.0) == pytest.approx(1.5)
    assert R.heat_vmax(np.array([0.1, 3.0]), threshold=1.0) == pytest.approx(3.0)


def test_threshold_scale_puts_the_calibrated_value_mid_range():
    cal, top = 1.8, R.threshold_top(380.0)  # the CT anomaly case of issue 10: hottest pixel 211 x the calibrated one
    assert 380.0 < top < 390.0
    assert R.position_to_threshold(0.5, cal, top) == pytest.approx(cal)
    assert R.position_to_threshold(0.0, cal, top) == 0.0 and R.position_to_threshold(1.0, cal, top) == pytest.approx(top)
    grid = np.linspace(0, 1, 101)
    values = [R.position_to_threshold(p, cal, top) for p in grid]
    assert all(b > a for a, b in zip(values, values[1:]))  # monotonic
    assert R.position_to_threshold(0.6, cal, top) < 5 * cal  # fine control just above the calibrated value
    for t in (0.0, 0.9, cal, 7.0, 200.0, top):
        assert R.position_to_threshold(R.threshold_to_position(t, cal, top), cal, top) == pytest.approx(t, abs=1e-9)
    assert R.threshold_to_position(1e6, cal, top) == 1.0
    assert R.position_to_threshold(0.25, None, 10.0) == pytest.approx(2.5)  # no calibration: linear
    assert R.threshold_to_position(2.5, None, 10.0) == pytest.approx(0.25)


def test_colour_bar_keeps_its_maximum_when_the_threshold_moves():
    view = R.prepare_view(ct_prediction("anomaly"), None)
    before = R.anomaly_html(view.pred, view.vmax)
    moved = R.with_threshold(view, 3.5)
    assert moved.vmax == view.vmax
    after = R.anomaly_html(moved.pred, moved.vmax)
    top_label = lambda h: h.rsplit("<span>", 1)[1].split("</span>")[0]  # noqa: E731
    assert top_label(before) == top_label(after) and before != after


def test_upload_check_names_the_problem_and_the_right_tab(tmp_path):
    from unimae.apps.ui_panel import check_upload

    png = tmp_path / "000123_a_very_long_name_of_a_chest_film.png"
    png.write_bytes(b"x")
    msg = check_upload(png, "ct")
    assert msg is not None and png.name in msg and "CT tab" in msg and "NIfTI" in msg and "Fundus or X-ray" in msg
    assert check_upload(png, "xray") is None and check_upload(png, "fundus") is None
    assert check_upload(tmp_path / "scan.nii.gz", "ct") is None and check_upload(None, "ct") is None
    assert "Multispectral" not in (check_upload(tmp_path / "scene.tif", "fundus") or "x")  # fundus reads TIFF too
    dcm = tmp_path / "IM0001"  # a DICOM file without an extension: recognised by its content
    dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert check_upload(dcm, "ct") is None and check_upload(dcm, "xray") is None
    assert "without an extension" in check_upload(dcm, "multispectral")


def test_natural_colour_composite_picks_bands_by_name_and_keeps_a_uniform_tile_calm():
    from unimae.domains.multispectral.bands import preset_channels
    from unimae.domains.multispectral.plotting import composite_bands, rgb_composite

    channels = [dict(c) for c in preset_channels("eurosat")]
    names = [c["name"] for c in channels]
    assert names[-1] == "B8A"  # EuroSAT order: B8A last
    assert [names[i] for i in composite_bands(channels, "natural")] == ["B04", "B03", "B02"]
    assert [names[i] for i in composite_bands(channels, "false_color")] == ["B08", "B04", "B03"]
    rng = np.random.default_rng(0)
    level = {"B02": 0.085, "B03": 0.063, "B04": 0.037}  # a forest tile: dark, hazy blue, little texture
    img = np.stack([np.full((64, 64), level.get(n, 0.2)) + rng.normal(0, 0.004, (64, 64)) for n in names])
    rgba = rgb_composite(img.astype(np.float32), None, channels)
    assert rgba.shape == (64, 64, 4) and (rgba[..., 3] == 1).all()
    assert float(rgba[..., :3].std(axis=(0, 1)).max()) < 0.12  # not stretched into coloured noise
    assert float(rgba[..., :3].mean()) < 0.5  # a dark tile stays dark
    bright = img.copy()
    bright[:, :, :32] += 0.2  # real contrast is kept
    out = rgb_composite(bright.astype(np.float32), None, channels)
    assert float(out[:, :32, :3].mean() - out[:, 32:, :3].mean()) > 0.4


def test_window_grey():
    g = R.window_grey(np.array([-1000.0, 40.0, 240.0, 3000.0]), 40.0, 400.0)
    assert g.shape == (4, 3) and list(g[:, 0]) == [0, 128, 255, 255]
    with pytest.raises(InputError, match="width"):
        R.window_grey(np.zeros(2), 0.0, 0.0)


def test_volume_view_segment_overlay_on_the_right_slice():
    pred = ct_prediction("segment")
    view = R.prepare_view(pred, None)
    assert view.kind == "volume" and view.hu.shape == (10, 8, 6)
    # LPS voxel (1, 2, 4) -> RAS voxel (8, 5, 4)
    assert view.labels[8, 5, 4] == 2 and view.labels.sum() == 2
    assert R.slice_count(view, "axial") == 6 and R.slice_count(view, "sagittal") == 10
    spleen = tuple(int(c) for c in view.colours[2])
    hit = R.render(view, opacity=1.0, plane="axial", index=4, window=(40, 400))
    miss = R.render(view, opacity=1.0, plane="axial", index=3, window=(40, 400))
    colours = {tuple(int(c) for c in px) for px in hit.reshape(-1, 3)}
    assert spleen in colours and spleen not in {tuple(int(c) for c in px) for px in miss.reshape(-1, 3)}
    assert min(hit.shape[:2]) >= R.DISPLAY_MIN_SIDE  # enlarged for the screen
    sag = R.render(view, opacity=1.0, plane="sagittal", index=8)
    h, w = sag.shape[:2]  # S (6 x 3 mm) by A (8 x 2 mm): the physical aspect is kept
    assert h / w == pytest.approx(18.0 / 16.0, rel=0.05)
    legend = R.legend_html(pred.class_names, view.colours, view.hidden, pred.class_fractions)
    assert "spleen" in legend and "liver" in legend and "<span>background</span>" not in legend and "1.0 %" in legend


def test_threshold_updates_the_mask_without_the_model():
    pred = ct_prediction("anomaly")
    view = R.prepare_view(pred, None)
    assert view.mask.sum() == 1
    low = R.with_threshold(view, 0.5)
    high = R.with_threshold(view, 5.0)
    assert low.mask.sum() == 1 and high.mask.sum() == 0 and high.pred.anomaly_mask.sum() == 0
    assert np.array_equal(high.heat, view.heat)  # the same heat map: nothing was recomputed
    assert high.pred.threshold == 5.0 and view.pred.threshold == 2.0  # the original view is unchanged
    assert "anomalous" in R.anomaly_html(high.pred, high.vmax)
    assert R.with_threshold(view, None).mask is None


def test_scene_view_composites_and_nodata_transparency():
    view = R.prepare_view(scene_prediction(), None)
    assert view.kind == "scene"
    nat = R.render(view, opacity=0.0, composite="natural")
    assert nat.shape[-1] == 4  # RGBA: nodata transparent
    scale = nat.shape[0] // 12
    assert nat[0, 0, 3] == 0 and nat[-1, -1, 3] == 255
    false = R.render(view, opacity=0.0, composite="false_color")
    assert not np.array_equal(nat[..., :3], false[..., :3])
    seg = R.render(view, opacity=1.0)
    forest = tuple(int(c) for c in R.class_colours(["water", "forest"])[1])
    assert tuple(int(c) for c in seg[8 * scale, 10 * scale, :3]) == forest
    water = tuple(int(c) for c in R.class_colours(["water", "forest"])[0])
    assert tuple(int(c) for c in seg[5 * scale, 2 * scale, :3]) == water  # class 0 is a real class here
    rgb_only = scene_prediction()
    rgb_only.source = rgb_only.source.replace(image=rgb_only.source.image[:3])
    rgb_only.meta["channels"] = rgb_only.meta["channels"][:3]
    with pytest.raises(InputError, match="false colour"):
        R.render(R.prepare_view(rgb_only, None), composite="false_color")


def test_large_pictures_are_shrunk_once_for_display(monkeypatch):
    monkeypatch.setattr(R, "DISPLAY_MAX_SIDE", 64)
    heat = np.zeros((200, 100), np.float32)
    heat[101, 51] = 5.0  # a single hot pixel must survive the shrinking
    meta = {"spatial_dims": 2, "valid": torch.ones(200, 100, dtype=torch.bool), "source_shape": (200, 100)}
    src = Sample(image=torch.rand(1, 200, 100), meta=meta)
    pred = Prediction(task="anomaly", domain="xray", class_names=["normal", "anomaly"], meta=meta, source=src,
                      heatmap=heat, score=5.0, threshold=1.0).with_threshold(1.0)  # fmt: skip
    view = R.prepare_view(pred, None)
    assert view.step == 4 and view.heat.shape == (50, 25) and view.heat.max() == 5.0 and view.mask.sum() == 1
    assert max(R.render(view).shape[:2]) <= 64


def test_output_dirs_prune_and_cleanup(tmp_path):
    from unimae.apps.ui_panel import OutputDirs

    dirs = OutputDirs(ttl_s=60, root=tmp_path)
    old, new = dirs.new(), dirs.new()
    (old / "x.png").write_bytes(b"1")
    past = time.time() - 120
    os.utime(old, (past, past))
    assert dirs.prune() == 1 and not old.exists() and new.exists()
    dirs.cleanup()
    assert not dirs.root.exists()


def test_safe_stem_and_auth():
    from unimae.apps.app import _auth
    from unimae.apps.ui_panel import safe_stem

    assert safe_stem("scan 01.nii.gz") == "scan_01" and safe_stem("series.zip") == "series"
    assert safe_stem("../../etc/passwd") == "passwd" and safe_stem("...") == "input"
    assert _auth("alice:s3cret:x") == ("alice", "s3cret:x") and _auth(None) is None
    with pytest.raises(InputError, match="USER:PASS"):
        _auth("alice")


def test_app_parser_defaults_are_local_and_private():
    import argparse

    from unimae.apps.app import add_app_parser
    from unimae.apps.demo_models import add_demo_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_app_parser(sub)
    add_demo_parser(sub)
    args = parser.parse_args(["app"])
    assert (args.host, args.port, args.share, args.auth, args.models) == ("127.0.0.1", 7860, False, None, None)
    args = parser.parse_args(["app", "--models", "runs", "--port", "8080", "--auth", "a:b", "--share"])
    assert (args.models, args.port, args.auth, args.share) == ("runs", 8080, "a:b", True)
    assert parser.parse_args(["demo", "--force"]).force is True


# ------------------------------------------------------------------------------------------------
# the demo-model cache
# ------------------------------------------------------------------------------------------------
def test_cache_root_precedence(monkeypatch, tmp_path):
    from unimae.apps.demo_models import cache_root, demo_cache_dir, demo_version

    monkeypatch.delenv("UNIMAE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "unimae"
    monkeypatch.setenv("UNIMAE_CACHE_DIR", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"
    assert demo_cache_dir().name == f"demo-models-{demo_version()}"
    assert demo_cache_dir("test").name.endswith("-test") and demo_version("test") != demo_version("default")
    monkeypatch.delenv("UNIMAE_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "unimae"


def test_incomplete_cache_is_never_used(tmp_path):
    from unimae.apps.demo_models import load_demo

    root = tmp_path / "demo"
    (root / "models" / "fundus_segment").mkdir(parents=True)
    (root / "models" / "fundus_segment" / "best.json").write_text("{}")
    assert load_demo(root) is None  # no manifest: a build that never finished
    manifest = {"format": 1, "models": {"fundus_segment": "models/fundus_segment/best.json"}, "examples": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert load_demo(root) is None  # the weights are missing
    (root / "models" / "fundus_segment" / "best.safetensors").write_bytes(b"x")
    assert load_demo(root) is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The test-profile demo models and examples, built once per test session (shared with the browser test)."""
    from unimae.apps.demo_models import ensure_demo

    root = tmp_path_factory.getbasetemp() / "unimae-demo-test"
    return ensure_demo(root, profile="test", progress=False)


def test_demo_build_is_complete_and_reused(bundle, monkeypatch):
    import unimae.apps.finetune as ft
    from unimae.apps.demo_models import DEMO_TASKS, ensure_demo

    assert sorted(bundle.models) == sorted(f"{d}_{t}" for d, t in DEMO_TASKS)
    for path in bundle.models.values():
        meta = json.loads(path.read_text())
        assert meta["format"] == "unimae-checkpoint" and path.with_suffix(".safetensors").stat().st_size > 0
    assert all(bundle.examples[d] for d in ("ct", "fundus", "xray", "multispectral"))
    assert not any(p.name.startswith(".") and "building" in p.name for p in bundle.root.parent.iterdir())
    # a complete cache is reused as it is: nothing is trained again and no file is rewritten
    def no_training(*args, **kwargs):
        raise AssertionError("ensure_demo retrained a model of a complete cache")

    monkeypatch.setattr(ft, "finetune", no_training)
    files = {p: p.stat().st_mtime_ns for p in bundle.root.rglob("*") if p.is_file()}
    again = ensure_demo(bundle.root, profile="test", progress=False)
    assert again.manifest["built"] == bundle.manifest["built"] and again.models == bundle.models
    assert {p: p.stat().st_mtime_ns for p in bundle.root.rglob("*") if p.is_file()} == files
    anomaly = json.loads(bundle.models["fundus_anomaly"].read_text())["anomaly"]
    assert anomaly["pixel_threshold"] is not None and anomaly["image_threshold"] is not None  # calibrated


def test_interrupted_demo_build_leaves_nothing_behind(tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM during the first-start build: no half-built cache, and a message that fits."""
    import unimae.apps.finetune as ft
    from unimae.apps.demo_models import build_demo, load_demo

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("interrupted; checkpoint saved at step 3; continue with resume=true")

    monkeypatch.setattr(ft, "finetune", stopped)
    root = tmp_path / "cache" / "demo"
    with pytest.raises(KeyboardInterrupt, match="nothing was kept") as info:
        build_demo(root, profile="test", progress=False)
    assert "resume=true" not in str(info.value)
    assert load_demo(root) is None and list((tmp_path / "cache").iterdir()) == []


def test_model_catalog_lists_demo_and_local_checkpoints(bundle, tmp_path):
    import shutil

    from unimae.apps.ui_models import ModelCatalog

    mine = tmp_path / "runs" / "eyes"
    mine.mkdir(parents=True)
    src = bundle.models["fundus_segment"]
    shutil.copy(src, mine / "best.json")
    shutil.copy(src.with_suffix(".safetensors"), mine / "best.safetensors")
    (tmp_path / "runs" / "notes.json").write_text('{"hello": 1}')  # not a checkpoint: ignored
    (tmp_path / "runs" / "broken.json").write_text('{"format": "unimae-checkpoint"}')  # no weights: reported
    catalog = ModelCatalog(bundle.models, tmp_path / "runs")
    keys = [k for _, k in catalog.choices("fundus", "segment")]
    assert keys == ["demo/fundus_segment", "models/eyes/best"]
    label = dict((k, lab) for lab, k in catalog.choices("fundus", "segment"))["models/eyes/best"]
    assert "fundus segment" in label and "vessel" in label
    assert len(catalog.skipped) == 1 and "broken" in catalog.skipped[0]
    assert catalog.resolve(None, "fundus", "segment").key == "demo/fundus_segment"
    with pytest.raises(InputError, match="unknown model"):
        catalog.resolve("../../etc/passwd", "fundus", "segment")
    with pytest.raises(InputError, match="not xray segment"):
        catalog.resolve("models/eyes/best", "xray", "segment")
    later = tmp_path / "runs" / "later"
    later.mkdir()
    shutil.copy(src, later / "m.json")
    shutil.copy(src.with_suffix(".safetensors"), later / "m.safetensors")
    assert catalog.resolve("models/later/m", "fundus", "segment").path == later / "m.json"  # found by a rescan


# ------------------------------------------------------------------------------------------------
# the live app
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "", None)


class _NetworkLog:
    """Records every host this process resolves or connects to (the app must only ever talk to itself)."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self._saved = (socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex)

    def __enter__(self) -> _NetworkLog:
        getaddrinfo, connect, connect_ex = self._saved
        log = self.hosts

        def note(address) -> None:
            host = address[0] if isinstance(address, tuple) else address
            if isinstance(host, bytes):
                host = host.decode()
            if host not in _LOCAL_HOSTS and not str(host).startswith("127.") and not isinstance(address, str):
                log.append(str(host))

        def _getaddrinfo(host, *args, **kwargs):
            note((host,))
            return getaddrinfo(host, *args, **kwargs)

        def _connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                note(address)
            return connect(sock, address)

        def _connect_ex(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                note(address)
            return connect_ex(sock, address)

        socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = _getaddrinfo, _connect, _connect_ex
        return self

    def __exit__(self, *exc) -> None:
        socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = self._saved


@pytest.fixture(scope="module")
def live(bundle):
    """The app on a free port of 127.0.0.1 and a gradio_client connected to it; every host the process resolves or
    connects to meanwhile is recorded (``live["network"]``)."""
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    from unimae.apps.app import AppSettings, build_app, launch_app
    from unimae.apps.ui_models import ModelCatalog

    with _NetworkLog() as network:
        settings = AppSettings(device="cpu", precision="fp32", concurrency=2, max_file_size="2mb")
        demo = build_app(ModelCatalog(bundle.models), bundle.examples, settings=settings)
        _, url, _ = launch_app(demo, port=_free_port(), allowed_paths=bundle.paths, prevent_thread_lock=True,
                               quiet=True)  # fmt: skip
        client = Client(url, verbose=False)
        yield {"url": url, "client": client, "bundle": bundle, "demo": demo, "network": network}
        demo.close()


def test_api_names_every_domain_task(live):
    from unimae.apps.app import endpoint_names

    info = live["client"].view_api(return_format="dict", print_info=False)
    named = set(info["named_endpoints"])
    expected = {"/ct_segment", "/ct_anomaly", "/fundus_classify", "/fundus_segment", "/fundus_anomaly",
                "/xray_classify", "/xray_segment", "/xray_anomaly", "/multispectral_classify",
                "/multispectral_segment", "/multispectral_anomaly"}  # fmt: skip
    assert set(endpoint_names()) == expected and expected <= named
    params = [p["parameter_name"] for p in info["named_endpoints"]["/ct_segment"]["parameters"]]
    assert params[:2] == ["file", "model"] and "window" in params and "plane" in params


CASES = [
    ("ct", "segment", ".nii.gz"),
    ("ct", "anomaly", ".zip"),
    ("fundus", "classify", ".jpg"),
    ("fundus", "segment", "healthy.png"),
    ("fundus", "anomaly", "lesions.png"),
    ("xray", "classify", "consolidation.png"),
    ("xray", "segment", ".dcm"),
    ("xray", "anomaly", "16bit.png"),
    ("multispectral", "classify", "landcover.tif"),
    ("multispectral", "segment", "landcover.tif"),
    ("multispectral", "anomaly", "anomalies.tif"),
]


@pytest.mark.parametrize("domain,task,suffix", CASES, ids=[f"{d}_{t}" for d, t, _ in CASES])
def test_endpoint(live, domain, task, suffix):
    from gradio_client import handle_file
    from PIL import Image

    from unimae.domains import get_domain

    bundle, client = live["bundle"], live["client"]
    src = _example(bundle, domain, suffix)
    image, summary, files, report, status = client.predict(handle_file(str(src)), api_name=f"/{domain}_{task}")
    with Image.open(image) as im:
        assert min(im.size) >= 64 and im.mode in ("RGB", "RGBA")
    plugin = get_domain(domain)
    assert report["task"] == task and report["domain"] == domain and report["file"] == src.name
    assert src.name in status and f"demo/{domain}_{task}" in status
    assert report["trained_on"] == "synthetic" and report["model"] == f"demo/{domain}_{task}"
    assert "demo model trained on synthetic images: its output on real images is not meaningful" in status
    names = [Path(f).name for f in files]
    stem = src.name.split(".")[0]
    assert f"{stem}.json" in names
    text = json.dumps(report) + status + str(summary)
    assert not any(s in text for s in PATIENT_STRINGS)
    if task == "classify":
        conf = {c["label"]: c["confidence"] for c in summary["confidences"]}
        assert sorted(conf) == sorted(plugin.class_names)
        if plugin.multi_label:
            assert report["multi_label"] is True and all(0.0 <= v <= 1.0 for v in conf.values())
        else:
            assert sum(conf.values()) == pytest.approx(1.0, abs=1e-4) and report["predicted"] == [max(conf, key=conf.get)]
        return
    suffix_out = {"ct": ".nii.gz", "multispectral": ".tif"}.get(domain, ".png")
    key = "seg" if task == "segment" else "heatmap"
    result = next(Path(f) for f in files if Path(f).name == f"{stem}_{key}{suffix_out}")
    assert f"{stem}_overlay.png" in names
    if task == "segment":
        shown = [n for n in plugin.seg_class_names if n not in ("background",)]
        assert all(n in summary for n in shown)
    else:
        assert "image score" in summary and report["pixel_threshold"] is not None
        assert f"{stem}_anomaly_mask{suffix_out}" in names
    if domain == "ct":  # the NIfTI download sits on the source grid
        ref = plugin.read(src)
        out = nib.load(str(result))
        assert out.shape == tuple(ref.meta["source_shape"])
        assert np.allclose(out.affine, ref.meta["affine"], atol=1e-4)
    elif domain == "multispectral":  # the GeoTIFF download keeps CRS, transform and nodata
        with rasterio.open(src) as a, rasterio.open(result) as b:
            assert b.crs == a.crs and b.transform == a.transform and (b.width, b.height) == (a.width, a.height)
            assert b.nodata is not None
            if task == "segment" and "landcover" in src.name:
                nodata_px = a.read(1) == a.nodata
                assert nodata_px.any() and (b.read(1)[nodata_px] == b.nodata).all()
    else:
        with Image.open(result) as im:
            ref = plugin.read(src)
            assert im.size[::-1] == tuple(ref.meta["source_shape"])


def test_errors_are_messages_and_the_app_keeps_serving(live, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bundle, client = live["bundle"], live["client"]
    bad = tmp_path / "broken.png"
    bad.write_text("this is not an image")
    with pytest.raises(AppError, match=r"broken\.png"):
        client.predict(handle_file(str(bad)), api_name="/fundus_segment")
    fundus = _example(bundle, "fundus", "healthy.png")
    with pytest.raises(AppError, match="fundus"):  # another domain's file
        client.predict(handle_file(str(fundus)), api_name="/xray_classify")
    with rasterio.open(_example(bundle, "multispectral", "landcover.tif")) as ds:
        profile = ds.profile | {"count": 3}
        rgb = ds.read([4, 3, 2])
    three = tmp_path / "three_bands.tif"
    with rasterio.open(three, "w", **profile) as out:
        out.write(rgb)
    with pytest.raises(AppError, match="3 band"):  # wrong band count for a 13-band model
        client.predict(handle_file(str(three)), api_name="/multispectral_segment")
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG" + os.urandom(3 * 2**20))
    with pytest.raises(Exception, match="(?i)size|large|413"):  # over max_file_size (2 MB here)
        client.predict(handle_file(str(big)), api_name="/fundus_classify")
    with pytest.raises(AppError, match="unknown model"):
        client.predict(handle_file(str(fundus)), "models/../../secret", api_name="/fundus_classify")
    out = client.predict(handle_file(str(fundus)), api_name="/fundus_classify")  # still serving
    assert out[3]["task"] == "classify"


def test_anomaly_api_threshold_overrides_the_calibrated_one(live):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bundle, client = live["bundle"], live["client"]
    src = handle_file(str(_example(bundle, "fundus", "lesions.png")))
    calibrated = client.predict(src, api_name="/fundus_anomaly")[3]
    high = client.predict(src, threshold=1e9, api_name="/fundus_anomaly")[3]
    zero = client.predict(src, threshold=0.0, api_name="/fundus_anomaly")[3]
    assert high["pixel_threshold"] == 1e9 and high["anomalous_fraction"] == 0.0
    assert zero["pixel_threshold"] == 0.0 and zero["anomalous_fraction"] > 0.5
    assert calibrated["pixel_threshold"] not in (0.0, 1e9) and high["score"] == calibrated["score"]
    with pytest.raises(AppError, match="threshold must be"):
        client.predict(src, threshold=-1.0, api_name="/fundus_anomaly")
    params = client.view_api(return_format="dict")["named_endpoints"]
    assert "threshold" in [p["parameter_name"] for p in params["/ct_anomaly"]["parameters"]]
    assert "threshold" not in [p["parameter_name"] for p in params["/fundus_segment"]["parameters"]]


def test_dicom_patient_fields_never_reach_the_user(live, caplog):
    from gradio_client import handle_file

    bundle, client = live["bundle"], live["client"]
    for domain, task, suffix in (("xray", "classify", ".dcm"), ("ct", "segment", ".zip")):
        src = _example(bundle, domain, suffix)
        assert b"SYNTHETIC^PHANTOM" in (src.read_bytes() if suffix == ".dcm" else _zip_first(src))
        image, summary, files, report, status = client.predict(handle_file(str(src)), api_name=f"/{domain}_{task}")
        texts = [status, json.dumps(report), str(summary)] + [Path(f).read_text() for f in files if f.endswith(".json")]
        assert not any(s in t for t in texts for s in PATIENT_STRINGS)
    assert not any(s in caplog.text for s in PATIENT_STRINGS)


def _zip_first(path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return zf.read(zf.namelist()[0])


def test_the_app_never_touches_the_network(live):
    """Building, launching and serving the app (every endpoint test runs in this module before this one) resolves
    and connects to this machine only: no analytics, no version check, no fonts or front-end from a CDN."""
    from gradio_client import handle_file

    out = live["client"].predict(handle_file(str(_example(live["bundle"], "fundus", "healthy.png"))),
                                 api_name="/fundus_classify")  # fmt: skip
    assert out[3]["task"] == "classify"
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"
    assert live["network"].hosts == []


def _example(bundle, domain: str, suffix: str) -> Path:
    return next(p for p in bundle.examples[domain] if p.name.endswith(suffix))


def test_panel_threshold_and_redraw_do_not_rerun_the_model(bundle, monkeypatch):
    from unimae.apps.predict import Predictor
    from unimae.apps.ui_models import ModelCatalog
    from unimae.apps.ui_panel import AppSettings, OutputDirs, TaskPanel

    panel = TaskPanel("ct", "anomaly", ModelCatalog(bundle.models), OutputDirs(60), AppSettings(device="cpu"))
    src = _example(bundle, "ct", "lesions.nii.gz")
    image, summary, files, report, status, view = panel.run(str(src))
    from PIL import Image

    with Image.open(image) as im:  # the picture is handed to Gradio as a PNG file
        assert view.kind == "volume" and im.mode == "RGB" and min(im.size) >= 64

    def boom(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(Predictor, "predict", boom)
    top = float(view.heat.max())
    low = panel.rethreshold(view, 0.0)
    high = panel.rethreshold(view, top * 2)
    assert low[4].mask.sum() > 0 and high[4].mask.sum() == 0
    assert low[3]["pixel_threshold"] == 0.0 and high[3]["anomalous_fraction"] == 0.0
    mask_file = next(f for f in high[2] if "anomaly_mask" in f)
    assert np.asarray(nib.load(mask_file).dataobj).sum() == 0
    a = panel.draw(view, opacity=0.6, plane="coronal", index=3, window="lung", center=None, width=None)
    b = panel.draw(view, opacity=0.6, plane="coronal", index=3, window="custom", center=-600.0, width=1500.0)
    assert np.array_equal(a, b)  # the lung preset is center -600 / width 1500
    with Image.open(panel.redraw(view, 0.6, "coronal", 3, "lung", None, None)) as im:
        assert np.array_equal(np.asarray(im), a)
    slice_upd, scale_upd, box_upd = panel.controls(view, "sagittal")
    assert slice_upd["maximum"] == view.hu.shape[0] - 1
    calibrated = view.pred.threshold
    assert view.calibrated == pytest.approx(calibrated) and box_upd["value"] == pytest.approx(calibrated, rel=1e-3)
    assert scale_upd["value"] == pytest.approx(0.5, abs=1e-3)  # the calibrated threshold sits mid-scale
    assert panel.threshold_from_position(view, 1.0) > top  # the right end flags nothing
    assert panel.threshold_from_position(view, 0.5) == pytest.approx(calibrated, rel=1e-3)
    assert high[4].vmax == view.vmax == low[4].vmax  # the colour bar keeps its maximum when the threshold moves
    assert report["trained_on"] == "synthetic" and json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["trained_on"] == "synthetic"
    assert "synthetic images" in status and "not meaningful" in status
    with pytest.raises(Exception, match="width must be"):
        panel.redraw(view, 0.6, "axial", 0, "custom", 40.0, -5.0)


def test_volume_opens_at_the_hottest_slice_of_an_anomaly_map():
    hu = np.zeros((10, 12, 14), np.float32)
    seg = R.ResultView(pred=None, kind="volume", hu=hu, labels=np.zeros(hu.shape, np.int64))
    assert [R.start_slice(seg, p) for p in ("sagittal", "coronal", "axial")] == [5, 6, 7]  # the middle
    heat = np.zeros(hu.shape, np.float32)
    heat[2, 9, 3] = 4.0
    heat[8, 1, 12] = 1.0
    ano = R.ResultView(pred=None, kind="volume", hu=hu, heat=heat)
    assert [R.start_slice(ano, p) for p in ("sagittal", "coronal", "axial")] == [2, 9, 3]
    assert R.start_slice(R.ResultView(pred=None, kind="volume", hu=hu, heat=np.zeros(hu.shape, np.float32)), "axial") == 7


def test_panel_tta_switch_predicts_in_one_pass_and_says_which(bundle):
    from unimae.apps.ui_models import ModelCatalog
    from unimae.apps.ui_panel import AppSettings, OutputDirs, TaskPanel

    panel = TaskPanel("fundus", "segment", ModelCatalog(bundle.models), OutputDirs(60), AppSettings(device="cpu"))
    src = _example(bundle, "fundus", "healthy.png")
    *_, report_tta, status_tta, view_tta = panel.run(str(src))
    assert panel._last_predictor.tta == "mirror"
    *_, report_one, status_one, view_one = panel.run(str(src), tta=False)
    assert panel._last_predictor.tta == "none"
    assert report_tta["tta"] == view_tta.pred.tta == "mirror" and "mean of 4 mirrored copies" in status_tta  # the domain's default
    assert report_one["tta"] == view_one.pred.tta == "none" and "test-time augmentation" not in status_one
    anomaly = TaskPanel("fundus", "anomaly", ModelCatalog(bundle.models), OutputDirs(60), AppSettings(device="cpu"))
    *_, report, status, _ = anomaly.run(str(_example(bundle, "fundus", "lesions.png")), tta=False)  # no TTA to turn off
    assert "tta" not in report or report["tta"] == "none"
