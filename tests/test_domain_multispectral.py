"""Multispectral domain: GeoTIFF reading/writing, band resolution, stats, augmentation, synthetic scenes.

Every test writes its own real GeoTIFFs with rasterio into ``tmp_path``; the opt-in ``samples`` test reads
the EuroSAT-MS tiles in ``../shared/samples/multispectral``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Compression
from rasterio.transform import from_origin
from rasterio.windows import Window

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.multispectral import (
    ANOMALY_SPECTRA,
    BAND_PRESETS,
    CLASS_SPECTRA,
    LAND_COVER_CLASSES,
    GeoreferenceWarning,
    GeoTiffReader,
    GeoTiffWriter,
    MultispectralPlugin,
    compute_band_stats,
    iter_windows,
    load_band_stats,
    preset_channels,
    save_band_stats,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
S2 = list(BAND_PRESETS["sentinel2_l1c"]["bands"])
S2_WL = [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190]
TRANSFORM = from_origin(500_000.0, 4_200_000.0, 10.0, 10.0)


@pytest.fixture(scope="module")
def plugin() -> MultispectralPlugin:
    return MultispectralPlugin()


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform=TRANSFORM,
    nodata=None,
    descriptions=None,
    scales=None,
    offsets=None,
    band_tags=None,
    colorinterp=None,
    tiled: bool = False,
) -> Path:
    """Write a real GeoTIFF ``(C, H, W)`` with rasterio."""
    c, h, w = data.shape
    profile = dict(driver="GTiff", height=h, width=w, count=c, dtype=data.dtype.name, nodata=nodata)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if descriptions is not None:
                for i, d in enumerate(descriptions, start=1):
                    ds.set_band_description(i, d)
            if scales is not None:
                ds.scales = scales
            if offsets is not None:
                ds.offsets = offsets
            if band_tags is not None:
                for i, t in enumerate(band_tags, start=1):
                    ds.update_tags(i, **t)
            if colorinterp is not None:
                ds.colorinterp = colorinterp
    return path


def s2_scene(h: int = 40, w: int = 50, seed: int = 0) -> np.ndarray:
    """13-band uint16 DN: band b holds values around 1000 * (b + 1) so bands are recognisable."""
    rng = np.random.default_rng(seed)
    base = (np.arange(13, dtype=np.int64) + 1)[:, None, None] * 1000
    return (base + rng.integers(0, 500, size=(13, h, w))).astype(np.uint16)


@pytest.fixture
def s2_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = s2_scene()
    data[:, :3, :] = 0  # a nodata strip
    data[5, 10, 10] = 0  # one band nodata -> the pixel is invalid
    return write_tif(tmp_path / "scene.tif", data, nodata=0), data


# --------------------------------------------------------------------------------------------------
# the plugin and its tables
# --------------------------------------------------------------------------------------------------


def test_plugin_contract(plugin):
    assert isinstance(plugin, DomainPlugin)
    assert plugin.name == "multispectral" and plugin.spatial_dims == 2
    assert plugin.modality == "sentinel2_l1c"
    assert plugin.tasks == ("classify", "segment", "anomaly")
    assert plugin.accepts("a/B.TIF") and plugin.accepts("x.tiff") and not plugin.accepts("x.png")
    assert plugin.seg_class_names == LAND_COVER_CLASSES and plugin.seg_class_names[0] == "water"


def test_band_presets_table():
    l1c = preset_channels("sentinel2_l1c")
    assert [c["name"] for c in l1c] == S2
    assert [c["wavelength"] for c in l1c] == pytest.approx(S2_WL)
    l2a = [c["name"] for c in preset_channels("sentinel2_l2a")]
    assert l2a == [b for b in S2 if b != "B10"]
    ls = preset_channels("landsat8")
    assert [c["name"] for c in ls] == [f"SR_B{i}" for i in range(1, 8)]
    assert [c["wavelength"] for c in ls] == pytest.approx([0.443, 0.482, 0.562, 0.655, 0.865, 1.609, 2.201])
    assert preset_channels("landsat9") == ls
    assert preset_channels("rgb") == [
        {"name": "R", "wavelength": 0.665}, {"name": "G", "wavelength": 0.560}, {"name": "B", "wavelength": 0.490}
    ]
    assert [c["name"] for c in preset_channels("eurosat")][-1] == "B8A"
    with pytest.raises(InputError, match="sentinel2_l1c"):
        preset_channels("sentinel2_llc")


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def test_read_13_band_default_preset(plugin, s2_file):
    path, data = s2_file
    s = plugin.read(path)
    assert s.image.shape == (13, 40, 50) and s.image.dtype == torch.float32
    m = s.meta
    assert [c["name"] for c in m["channels"]] == S2
    assert [c["wavelength"] for c in m["channels"]] == pytest.approx(S2_WL)
    assert m["band_preset"] == "sentinel2_l1c" and m["band_source"] == "band_count"
    assert m["modality"] == "sentinel2_l1c" and m["spatial_dims"] == 2
    assert CRS.from_wkt(m["crs"]) == CRS.from_epsg(32633)
    assert m["transform"] == pytest.approx(tuple(TRANSFORM)[:6])
    assert m["spacing"] == (10.0, 10.0) and m["spacing_units"] == "metre"
    assert m["nodata"] == 0 and m["source_shape"] == (40, 50) and m["dtype"] == "uint16"
    assert m["path"] == str(path)
    # nodata -> valid (any band at nodata invalidates the pixel), values 0 there
    valid = m["valid"]
    assert valid.dtype == torch.bool and valid.shape == (40, 50)
    assert not valid[:3].any() and not valid[10, 10] and valid[3:].sum() == 37 * 50 - 1
    assert torch.all(s.image[:, ~valid] == 0)
    # reflectance = DN / 10000 where valid
    expected = data.astype(np.float32) / 10000.0
    ok = valid.numpy()
    np.testing.assert_allclose(s.image.numpy()[:, ok], expected[:, ok], rtol=1e-6)
    assert m["scale_source"] == "default" and m["units"] == "reflectance"


def test_read_nan_float_file(plugin, tmp_path):
    data = np.full((13, 8, 9), 0.2, dtype=np.float32)
    data[3, 2, 2] = np.nan
    data[:, 5, :] = np.nan
    s = plugin.read(write_tif(tmp_path / "f.tif", data))
    v = s.valid
    assert not v[2, 2] and not v[5].any() and int(v.sum()) == 8 * 9 - 9 - 1
    assert torch.isfinite(s.image).all() and torch.all(s.image[:, ~v] == 0)
    assert torch.allclose(s.image[:, v], torch.tensor(0.2))  # float data is already reflectance
    assert s.meta["scale_source"] == "none" and s.meta["units"] == "reflectance"


def test_inf_and_all_nodata_raise(plugin, tmp_path):
    data = np.full((13, 6, 6), 0.1, dtype=np.float32)
    data[2, 1, 1] = np.inf
    with pytest.raises(InputError, match="inf.tif: .*Inf"):
        plugin.read(write_tif(tmp_path / "inf.tif", data))
    empty = np.zeros((13, 6, 6), dtype=np.uint16)
    with pytest.raises(InputError, match="empty.tif: .*nodata") as err:
        plugin.read(write_tif(tmp_path / "empty.tif", empty, nodata=0))
    assert "\n" not in str(err.value)
    nan = np.full((13, 6, 6), np.nan, dtype=np.float32)
    with pytest.raises(InputError, match="nodata or NaN"):
        plugin.read(write_tif(tmp_path / "nan.tif", nan))
    # an all-nodata window can be allowed for streamed tiling
    s = plugin.read(tmp_path / "empty.tif", window=(0, 0, 3, 3), allow_empty=True)
    assert s.image.shape == (13, 3, 3) and not s.valid.any()


def test_band_descriptions_in_another_order(plugin, tmp_path):
    perm = np.random.default_rng(3).permutation(13)
    data = s2_scene(12, 10)[perm]  # band k of the file holds Sentinel-2 band S2[perm[k]]
    # descriptions in mixed spellings: "B4", "B04", "B8A" ...
    desc = [S2[p].replace("B0", "B") if k % 2 else S2[p] for k, p in enumerate(perm)]
    s = plugin.read(write_tif(tmp_path / "desc.tif", data, descriptions=desc))
    names = [c["name"] for c in s.meta["channels"]]
    assert names == [S2[p] for p in perm]
    assert [c["wavelength"] for c in s.meta["channels"]] == pytest.approx([S2_WL[p] for p in perm])
    assert s.meta["band_source"] == "descriptions" and s.meta["band_preset"] is None
    # each channel's values identify its band (about 1000 * (index + 1) DN)
    means = s.image.mean(dim=(1, 2)).numpy() * 10000
    assert np.all(np.abs(means - (perm + 1) * 1000 - 250) < 60)
    # bands= overrides the descriptions
    s2 = plugin.read(tmp_path / "desc.tif", bands="sentinel2_l1c")
    assert [c["name"] for c in s2.meta["channels"]] == S2 and s2.meta["band_source"] == "user"


def test_band_names_from_tags_and_landsat(plugin, tmp_path):
    # 4 bands named by a "name" tag, Sentinel-2 subset: B02 B03 B04 B08 in the order B08 B04 B03 B02
    data = np.full((4, 5, 5), 1500, dtype=np.uint16)
    tags = [{"name": n} for n in ("nir", "red", "B3", "b02")]
    s = plugin.read(write_tif(tmp_path / "tags.tif", data, band_tags=tags))
    assert [c["name"] for c in s.meta["channels"]] == ["B08", "B04", "B03", "B02"]
    assert torch.allclose(s.image, torch.tensor(0.15))
    # Landsat C2 L2 surface reflectance, 7 bands, described as SR_B*
    ls = np.full((7, 4, 4), 10000, dtype=np.uint16)
    s = plugin.read(write_tif(tmp_path / "LC09_L2SP_sr.tif", ls, descriptions=[f"SR_B{i}" for i in range(1, 8)]))
    assert s.meta["modality"] == "landsat9" and s.meta["band_preset"] == "landsat9"
    assert [c["wavelength"] for c in s.meta["channels"]][4] == pytest.approx(0.865)
    assert torch.allclose(s.image, torch.tensor(10000 * 2.75e-5 - 0.2))
    # 7 undescribed bands -> landsat8 by count
    s = plugin.read(write_tif(tmp_path / "ls.tif", ls))
    assert s.meta["band_preset"] == "landsat8" and s.meta["channels"][0]["name"] == "SR_B1"
    # unknown names but wavelength tags in nm
    wl = [{"wavelength": str(v), "wavelength_units": "nm"} for v in (450, 550, 650, 850, 1600)]
    s = plugin.read(write_tif(tmp_path / "wl.tif", np.ones((5, 3, 3), np.float32), band_tags=wl))
    assert [c["wavelength"] for c in s.meta["channels"]] == pytest.approx([0.45, 0.55, 0.65, 0.85, 1.6])
    assert s.meta["band_source"] == "wavelength_tags"


def test_band_count_mismatch_and_unknown(plugin, tmp_path):
    path = write_tif(tmp_path / "five.tif", np.ones((5, 4, 4), np.uint16))
    with pytest.raises(InputError, match=r"five.tif: the file has 5 bands but band preset 'sentinel2_l1c' has 13"):
        plugin.read(path, bands="sentinel2_l1c")
    with pytest.raises(InputError, match="5 bands.*no preset"):
        plugin.read(path)
    with pytest.raises(InputError, match="5 bands but bands= lists 3"):
        plugin.read(path, bands=["B02", "B03", "B04"])
    with pytest.raises(InputError, match="unknown band name 'B99'"):
        plugin.read(path, bands=["B02", "B03", "B04", "B08", "B99"])
    s = plugin.read(path, bands=["B2", "B3", "B4", "B8", "B11"])
    assert [c["name"] for c in s.meta["channels"]] == ["B02", "B03", "B04", "B08", "B11"]


def test_scale_offset_from_file_and_override(plugin, tmp_path):
    data = np.full((3, 4, 4), 100, dtype=np.int16)
    data[1] = 200
    path = write_tif(tmp_path / "scaled.tif", data, descriptions=["B04", "B03", "B02"],
                     scales=[0.001, 0.002, 0.001], offsets=[-0.05, 0.0, 0.01])
    s = plugin.read(path)
    assert s.meta["scale_source"] == "file"
    np.testing.assert_allclose(s.image.mean(dim=(1, 2)).numpy(), [0.05, 0.4, 0.11], rtol=1e-5)
    s = plugin.read(path, scale=1e-4)
    assert s.meta["scale_source"] == "user"
    np.testing.assert_allclose(s.image.mean(dim=(1, 2)).numpy(), [0.01, 0.02, 0.01], rtol=1e-5)
    # Sentinel-2 processing baseline >= 04.00: DN carry a +1000 offset
    dn = np.full((13, 3, 3), 2000, np.uint16)
    s = plugin.read(write_tif(tmp_path / "pb4.tif", dn), offset=-0.1)
    assert torch.allclose(s.image, torch.tensor(0.1))
    s = plugin.read(write_tif(tmp_path / "pb4tag.tif", dn, band_tags=[{"BOA_ADD_OFFSET": "-1000"}] * 13))
    assert torch.allclose(s.image, torch.tensor(0.1))
    # 8-bit RGB is divided by 255, an alpha band becomes `valid`
    rgba = np.full((4, 5, 5), 255, np.uint8)
    rgba[3, 0, :] = 0
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    s = plugin.read(write_tif(tmp_path / "rgba.tif", rgba, colorinterp=ci))
    assert s.image.shape == (3, 5, 5) and s.meta["band_preset"] == "rgb"
    assert not s.valid[0].any() and s.valid[1:].all() and torch.allclose(s.image[:, 1:], torch.tensor(1.0))


def test_no_crs_warns_and_writes_without_crs(plugin, tmp_path):
    path = write_tif(tmp_path / "plain.tif", s2_scene(6, 7), crs=None, transform=None)
    with pytest.warns(GeoreferenceWarning, match="plain.tif: no georeference"):
        s = plugin.read(path)
    assert s.meta["crs"] is None and s.meta["transform"] is None and s.meta["spacing"] == (1.0, 1.0)
    out = plugin.write(torch.ones(6, 7, dtype=torch.long), s.meta, tmp_path / "out.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out) as ds:
            assert ds.crs is None and ds.transform.is_identity and ds.shape == (6, 7)


def test_gcp_georeference_is_kept(plugin, tmp_path):
    from rasterio.control import GroundControlPoint as GCP

    gcps = [GCP(0, 0, 500_000, 4e6), GCP(0, 20, 500_200, 4e6), GCP(20, 0, 500_000, 4e6 - 200)]
    path = tmp_path / "gcp.tif"
    with rasterio.open(path, "w", driver="GTiff", height=20, width=20, count=3, dtype="uint8", gcps=gcps,
                       crs="EPSG:32633") as ds:
        ds.write(np.full((3, 20, 20), 51, np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeoreferenceWarning)  # GCPs are a georeference: no warning
        s = plugin.read(path)
    assert s.meta["transform"] is None and len(s.meta["gcps"]) == 3 and torch.allclose(s.image, torch.tensor(0.2))
    out = plugin.write(torch.ones(20, 20, dtype=torch.long), s.meta, tmp_path / "out.tif")
    with rasterio.open(out) as ds:
        got, crs = ds.gcps
        assert crs.to_epsg() == 32633 and [(g.row, g.col, g.x, g.y) for g in got] == [
            (g.row, g.col, g.x, g.y) for g in gcps
        ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tif", b"", "empty"),
        ("random.tif", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "unrecognised content"),
        ("png.tif", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG data"),
        ("text.tiff", b"hello,world\n1,2\n", "text data"),
        ("header_only.tif", b"II*\x00\x08\x00\x00\x00" + b"\x00" * 8, "truncated or corrupt"),
    ],
)
def test_bad_files_one_line_errors(plugin, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        plugin.read(path)
    text = str(err.value)
    assert text.startswith(f"{name}: ") and "\n" not in text


def test_truncated_and_missing(plugin, tmp_path):
    full = write_tif(tmp_path / "full.tif", s2_scene(64, 64), tiled=True)
    raw = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.tif: .*truncated or corrupt") as err:
        plugin.read(cut)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="missing.tif: file not found"):
        plugin.read(tmp_path / "missing.tif")


def test_pixel_limit_checked_from_header(plugin, s2_file, monkeypatch):
    path, _ = s2_file
    monkeypatch.setenv("UNIMAE_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="40x50 = 2,000 pixels, over the limit of 1,000"):
        plugin.read(path)
    s = plugin.read(path, window=(5, 5, 20, 20))  # a window under the limit is fine
    assert s.image.shape == (13, 20, 20)


def test_window_read_equals_slice_of_full_read(plugin, s2_file):
    path, _ = s2_file
    full = plugin.read(path)
    for win in [(2, 7, 15, 20), Window(7, 2, 20, 15)]:
        part = plugin.read(path, window=win)
        assert torch.equal(part.image, full.image[:, 2:17, 7:27])
        assert torch.equal(part.valid, full.valid[2:17, 7:27])
        a, b, c, d, e, f = part.meta["transform"]
        assert (c, f) == pytest.approx((500_000.0 + 7 * 10, 4_200_000.0 - 2 * 10))
        assert part.meta["window"] == (2, 7, 15, 20) and part.meta["source_shape"] == (40, 50)
    with pytest.raises(InputError, match="not inside the 40x50 image"):
        plugin.read(path, window=(30, 0, 20, 10))


def test_iter_windows_cover_the_grid():
    wins = list(iter_windows(70, 45, tile=32, overlap=8))
    cover = np.zeros((70, 45), int)
    for w in wins:
        assert (w.height, w.width) == (32, 32)
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert cover.min() >= 1 and wins[-1].row_off + 32 == 70 and wins[-1].col_off + 32 == 45
    assert [(w.height, w.width) for w in iter_windows(10, 12, tile=64)] == [(10, 12)]
    with pytest.raises(ValueError, match="overlap"):
        list(iter_windows(10, 10, tile=8, overlap=8))


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def test_write_round_trip_geometry(plugin, s2_file, tmp_path):
    path, _ = s2_file
    s = plugin.read(path)
    classes = torch.randint(1, 6, s.spatial_shape)  # int64 class map, 1..5 (0 is free for nodata)
    out = plugin.write(classes, s.meta, tmp_path / "pred.tif")
    with rasterio.open(path) as src, rasterio.open(out) as ds:
        assert ds.crs == src.crs and ds.transform == src.transform and ds.shape == src.shape
        assert ds.nodata == src.nodata == 0
        assert ds.compression == Compression.deflate and ds.profile["tiled"]
        assert ds.dtypes[0] == "uint8"
        got = ds.read(1)
    valid = s.valid.numpy()
    assert np.array_equal(got[valid], classes.numpy()[valid]) and np.all(got[~valid] == 0)
    # a class map using 0 as a class cannot use nodata 0: another value is chosen, with a warning
    classes[valid.nonzero()[0][0], valid.nonzero()[1][0]] = 0
    with pytest.warns(UserWarning, match="writing nodata=255"):
        out2 = plugin.write(classes, s.meta, tmp_path / "pred0.tif")
    with rasterio.open(out2) as ds:
        assert ds.nodata == 255 and np.all(ds.read(1)[~valid] == 255)
    # float heat map on a window keeps the window's geometry
    part = plugin.read(path, window=(4, 4, 10, 12))
    heat = plugin.write(torch.rand(10, 12) + 0.5, part.meta, tmp_path / "heat.tif")
    with rasterio.open(heat) as ds:
        assert ds.dtypes[0] == "float32" and ds.transform.c == 500_040.0 and ds.transform.f == 4_199_960.0
    with pytest.raises(InputError, match="result is 5x5 but the image grid is 40x50"):
        plugin.write(torch.zeros(5, 5), s.meta, tmp_path / "bad.tif")


def test_geotiff_writer_windows_equal_full_write(tmp_path, s2_file):
    path, _ = s2_file
    rng = np.random.default_rng(1)
    result = rng.random((2, 40, 50)).astype(np.float32)
    with GeoTiffWriter.like(path, tmp_path / "full.tif", count=2, dtype="float32", nodata=-1.0) as wr:
        wr.write(result)
    with GeoTiffWriter.like(path, tmp_path / "tiled.tif", count=2, dtype="float32", nodata=-1.0) as wr:
        for w in iter_windows(40, 50, tile=16, overlap=4):
            r, c, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
            wr.write(result[:, r : r + h, c : c + wd], w)
    with rasterio.open(tmp_path / "full.tif") as a, rasterio.open(tmp_path / "tiled.tif") as b, rasterio.open(path) as src:
        assert np.array_equal(a.read(), b.read()) and np.array_equal(b.read(), result)
        assert b.crs == src.crs and b.transform == src.transform and b.nodata == -1.0 and b.count == 2
        assert b.compression == Compression.deflate and b.block_shapes[0] == (256, 256)


def test_geotiff_writer_is_atomic(tmp_path):
    target = write_tif(tmp_path / "keep.tif", np.ones((1, 4, 4), np.uint8))
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with GeoTiffWriter(target, height=4, width=4, count=1, dtype="uint8") as wr:
            wr.write(np.zeros((4, 4), np.uint8))
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tif"]


# --------------------------------------------------------------------------------------------------
# statistics and preprocessing
# --------------------------------------------------------------------------------------------------


def test_band_stats_match_numpy(s2_file, tmp_path):
    path, data = s2_file
    stats = compute_band_stats([path, path], tile=16)
    valid = np.all(data != 0, axis=0)
    vals = data[:, valid].astype(np.float64) / 10000.0
    assert stats["bands"] == S2 and stats["pixels"] == 2 * int(valid.sum()) and stats["files"] == 2
    np.testing.assert_allclose(stats["mean"], vals.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], vals.std(axis=1), rtol=1e-5)
    both = np.concatenate([vals, vals], axis=1)  # the file was given twice
    np.testing.assert_allclose(stats["p1"], np.percentile(both, 1, axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["p99"], np.percentile(both, 99, axis=1), rtol=1e-6)
    saved = save_band_stats(stats, tmp_path / "stats.json")
    assert load_band_stats(saved) == json.loads(json.dumps(stats))
    # a file bigger than the budget is sampled by window and still close
    sampled = compute_band_stats(path, max_pixels_per_file=600, tile=16, seed=1)
    assert 0 < sampled["pixels"] <= 600
    np.testing.assert_allclose(sampled["mean"], vals.mean(axis=1), rtol=0.05)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bands": ["B01"], "mean": [0.1], "std": [0.0]}))
    with pytest.raises(InputError, match="bad.json: .*std <= 0"):
        load_band_stats(bad)


def test_preprocess_default_and_given_stats(plugin, s2_file):
    path, data = s2_file
    s = plugin.read(path)
    x = plugin.preprocess(s)
    norm = x.meta["normalization"]
    assert norm["kind"] == "meanstd" and norm["bands"] == S2 and norm["source"] == "default:sentinel2_l1c"
    json.dumps(norm)
    mean = torch.tensor(norm["mean"])[:, None, None]
    std = torch.tensor(norm["std"])[:, None, None]
    v = s.valid
    assert torch.allclose((x.image * std + mean)[:, v], s.image[:, v], atol=1e-5)
    assert torch.all(x.image[:, ~v] == 0) and torch.equal(x.valid, v)
    # with dataset statistics the valid pixels become zero-mean, unit-std per band
    stats = compute_band_stats(path)
    y = plugin.preprocess(s, stats=stats)
    assert y.meta["normalization"]["source"] == "stats"
    np.testing.assert_allclose(y.image[:, v].mean(dim=1).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.image[:, v].std(dim=1, unbiased=False).numpy(), 1.0, atol=1e-3)
    # band selection by name for a model trained on fewer bands
    z = plugin.preprocess(s, select_bands=["B4", "B03", "B02"])
    assert [c["name"] for c in z.meta["channels"]] == ["B04", "B03", "B02"] and z.image.shape[0] == 3
    assert torch.equal(z.image, x.image[[3, 2, 1]])
    with pytest.raises(InputError, match="no statistics for band"):
        plugin.preprocess(s, stats={"bands": ["B01"], "mean": [0.1], "std": [0.1]})
    with pytest.raises(InputError, match="already normalised"):
        plugin.preprocess(x, stats=stats)
    # load() = read + preprocess with the kwargs each takes
    w = plugin.load(path, bands="sentinel2_l1c", window=(3, 0, 5, 5))
    assert w.image.shape == (13, 5, 5) and "normalization" in w.meta


def test_read_mask_geotiff_and_png(plugin, s2_file, tmp_path):
    from PIL import Image

    path, _ = s2_file
    s = plugin.read(path)
    cmap = np.random.default_rng(0).integers(0, 5, (1, 40, 50)).astype(np.uint8)
    m = plugin.read_mask(write_tif(tmp_path / "labels.tif", cmap), like=s)
    assert m.dtype == torch.int64 and torch.equal(m, torch.from_numpy(cmap[0].astype(np.int64)))
    Image.fromarray(cmap[0]).save(tmp_path / "labels.png")
    assert torch.equal(plugin.read_mask(tmp_path / "labels.png", like=s), m)
    part = plugin.read(path, window=(5, 6, 10, 11))  # the mask of a window comes from the same window
    assert torch.equal(plugin.read_mask(tmp_path / "labels.tif", like=part), m[5:15, 6:17])
    with pytest.raises(InputError, match="small.tif: mask is 4x4 but the image is 40x50"):
        plugin.read_mask(write_tif(tmp_path / "small.tif", cmap[:, :4, :4]), like=s)
    with pytest.raises(InputError, match="must have 1 band"):
        plugin.read_mask(path, like=s)


# --------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------


def _indexed_sample(c: int = 13, h: int = 40, w: int = 50) -> Sample:
    """Channel 0 = row index, channel 1 = column index, the mask = (row + col) % 5."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.random.default_rng(0).standard_normal((c, h, w)).astype(np.float32)
    img[0], img[1] = rows, cols
    meta = {"channels": preset_channels("sentinel2_l1c")[:c], "valid": torch.ones(h, w, dtype=torch.bool),
            "transform": tuple(TRANSFORM)[:6]}
    mask = torch.from_numpy(((rows + cols) % 5).astype(np.int64))
    return Sample(image=torch.from_numpy(img), meta=meta, mask=mask)


def test_augment_train_seeded_and_consistent(plugin):
    t = plugin.augment(train=True, input_size=32)
    s = _indexed_sample()
    a, b, c = t(s, 7), t(s, 7), t(s, 8)
    assert a.image.shape == (13, 32, 32) and a.mask.shape == (32, 32) and a.valid.shape == (32, 32)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    outs = [t(s, k).image for k in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert not torch.equal(a.image, c.image) or not torch.equal(t(s, 9).image, a.image)
    for k in range(6):  # the mask moved exactly like the image
        o = t(s, k)
        assert torch.equal(o.mask, ((o.image[0] + o.image[1]) % 5).long())
        assert o.valid.all() and o.meta["transform"] is None
    # a smaller image is padded: padding is invalid and 0
    small = _indexed_sample(h=20, w=24)
    o = t(small, 3)
    assert o.image.shape == (13, 32, 32) and int(o.valid.sum()) == 20 * 24
    assert torch.all(o.image[:, ~o.valid] == 0)
    filled = plugin.augment(train=True, input_size=32, mask_fill=-1)(small, 3)  # e.g. a loss's ignore index
    assert torch.all(filled.mask[~filled.valid] == -1) and torch.all(filled.mask[filled.valid] >= 0)
    # non-square crops skip rotations but still flip
    t2 = plugin.augment(train=True, input_size=(16, 24))
    assert t2(s, 1).image.shape == (13, 16, 24)


def test_augment_eval_centre_crop_keeps_geometry(plugin):
    t = plugin.augment(train=False, input_size=32)
    s = _indexed_sample()
    o = t(s, 0)
    assert torch.equal(o.image, t(s, 99).image)  # no randomness
    r0, c0 = (40 - 32) // 2, (50 - 32) // 2
    assert o.image[0, 0, 0] == r0 and o.image[1, 0, 0] == c0 and o.meta["crop"] == (r0, c0, 32, 32)
    assert o.meta["transform"][2] == 500_000.0 + 10 * c0 and o.meta["transform"][5] == 4_200_000.0 - 10 * r0
    small = _indexed_sample(h=20, w=30)
    p = plugin.augment(train=False, input_size=40)(small, 0)
    assert p.image.shape == (13, 40, 40) and int(p.valid.sum()) == 600
    pr, pc = (40 - 20) // 2, (40 - 30) // 2
    assert p.valid[pr, pc] and not p.valid[pr - 1, pc] and p.image[0, pr, pc] == 0 and p.image[1, pr + 1, pc + 2] == 2


# --------------------------------------------------------------------------------------------------
# synthetic scenes
# --------------------------------------------------------------------------------------------------


def _reflectance(sample: Sample) -> torch.Tensor:
    norm = sample.meta["normalization"]
    return sample.image * torch.tensor(norm["std"])[:, None, None] + torch.tensor(norm["mean"])[:, None, None]


def _nearest(sample: Sample, table: np.ndarray) -> torch.Tensor:
    """Per pixel, the index of the nearest spectrum (row of ``table``) to the pixel's reflectance."""
    refl = _reflectance(sample).numpy().reshape(table.shape[1], -1).T  # (N, C)
    d = ((refl[:, None, :] - table[None].astype(np.float32)) ** 2).sum(-1)
    return torch.from_numpy(d.argmin(axis=1).reshape(sample.mask.shape))


def test_synthetic_contract_and_determinism(plugin):
    ds = plugin.synthetic(5, seed=3, task="segment")
    assert len(ds) == 5
    s = ds[2]
    assert s.image.shape == (13, 96, 96) and s.image.dtype == torch.float32 and s.mask.dtype == torch.int64
    m = s.meta
    assert m["spatial_dims"] == 2 and m["path"] is None and m["modality"] == "sentinel2_l1c"
    assert [c["name"] for c in m["channels"]] == S2 and m["spacing"] == (10.0, 10.0)
    assert CRS.from_wkt(m["crs"]).to_epsg() == 32633 and m["transform"][0] == 10.0 and m["transform"][4] == -10.0
    assert m["valid"].all() and json.dumps(m["normalization"])
    assert abs(float(s.image.mean())) < 1.0 and 0.2 < float(s.image.std()) < 3.0  # model space
    again = plugin.synthetic(5, seed=3, task="segment")[2]
    assert torch.equal(s.image, again.image) and torch.equal(s.mask, again.mask)
    assert not torch.equal(s.image, ds[1].image)
    assert not torch.equal(s.image, plugin.synthetic(5, seed=4)[2].image)
    # the same (seed, i) gives the same scene whatever the task; images and targets line up
    c = plugin.synthetic(5, seed=3, task="classify")[2]
    assert torch.equal(c.image, s.image)
    assert int(c.label) == int(torch.bincount(s.mask.flatten(), minlength=5).argmax())
    other = plugin.synthetic(2, seed=0, size=(40, 56), bands="landsat8")[1]
    assert other.image.shape == (7, 40, 56) and other.meta["modality"] == "landsat8"


def test_synthetic_class_spectra(plugin):
    ds = plugin.synthetic(12, seed=0, task="segment")
    idx = {b: i for i, b in enumerate(S2)}
    sums = {k: torch.zeros(13) for k in range(5)}
    counts = dict.fromkeys(range(5), 0)
    for i in range(len(ds)):
        s = ds[i]
        refl = _reflectance(s)
        for k in range(5):
            sel = s.mask == k
            sums[k] += refl[:, sel].sum(dim=1)
            counts[k] += int(sel.sum())
    assert all(counts[k] > 0 for k in range(5))
    spec = {LAND_COVER_CLASSES[k]: (sums[k] / counts[k]).numpy() for k in range(5)}
    water, forest, crop, soil, urban = (spec[n] for n in LAND_COVER_CLASSES)
    nir, red, blue, swir = idx["B08"], idx["B04"], idx["B02"], idx["B11"]
    assert water[nir] < 0.5 * forest[nir] and water[nir] < water[blue]  # water dark, falling into NIR
    for veg in (forest, crop):  # red edge: NIR plateau far above red
        assert veg[nir] > 3 * veg[red] and veg[idx["B07"]] > veg[idx["B05"]] > veg[red]
    assert soil[swir] > soil[red] > soil[blue]  # bare soil rises towards SWIR
    vis_nir = urban[[idx[b] for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08")]]
    assert vis_nir.min() > 0.1 and vis_nir.max() / vis_nir.min() < 1.6  # urban bright and flat
    # per-pixel labels match the pixels: nearest class spectrum recovers the class map
    s = ds[0]
    pred = _nearest(s, np.array([CLASS_SPECTRA[n] for n in LAND_COVER_CLASSES]))
    assert float((pred == s.mask).float().mean()) > 0.85


def test_synthetic_anomalies(plugin):
    ds = plugin.synthetic(16, seed=1, task="anomaly", lesion_prob=0.5)
    labels = [int(ds[i].label) for i in range(16)]
    assert 0 < sum(labels) < 16
    # nearest of the 5 land-cover and 3 anomaly spectra: the mask is exactly the anomalous pixels
    table = np.array([CLASS_SPECTRA[n] for n in LAND_COVER_CLASSES] + [ANOMALY_SPECTRA[k] for k in ANOMALY_SPECTRA])
    for i in range(16):
        s = ds[i]
        assert int(s.label) == int(s.mask.any()) and set(s.mask.unique().tolist()) <= {0, 1}
        pred = _nearest(s, table) >= 5
        if s.label:
            assert float(pred[s.mask == 1].float().mean()) > 0.95
        assert float(pred[s.mask == 0].float().mean()) < 0.05
    normal = plugin.synthetic(8, seed=1, task="anomaly", lesion_prob=0.0)
    assert all(int(normal[i].label) == 0 and not normal[i].mask.any() for i in range(8))


def test_train_dataset_from_synthetic(plugin):
    view = plugin.train_dataset(None, input_size=32, num_samples=3, seed=0, task="segment")
    item = view[1]
    assert item["image"].shape == (13, 32, 32) and item["mask"].shape == (32, 32) and item["valid"].all()
    batch = torch.utils.data.default_collate([view[0], view[2]])
    assert batch["image"].shape == (2, 13, 32, 32)


# --------------------------------------------------------------------------------------------------
# plotting
# --------------------------------------------------------------------------------------------------


def test_plot_composites_and_overlays(plugin, s2_file):
    from matplotlib.figure import Figure

    s = plugin.synthetic(1, seed=0, task="segment")[0]
    fig = plugin.plot(s)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # composite + class map with legend
    assert fig.axes[1].get_legend() is not None
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert set(labels) <= set(LAND_COVER_CLASSES) and labels
    fig = plugin.plot(s, torch.rand(96, 96), composite="false_color")
    assert len(fig.axes) == 3  # composite, heat map, colour bar
    path, _ = s2_file
    raw = plugin.read(path)
    fig = plugin.plot(raw)
    rgba = fig.axes[0].get_images()[0].get_array()
    assert rgba.shape == (40, 50, 4) and np.all(np.asarray(rgba)[:3, :, 3] == 0)  # nodata transparent
    rgb = Sample(image=torch.rand(3, 8, 8), meta={"channels": preset_channels("rgb")})
    with pytest.raises(InputError, match="no band near 0.842"):
        plugin.plot(rgb, composite="false_color")


# --------------------------------------------------------------------------------------------------
# real EuroSAT-MS tiles (opt-in)
# --------------------------------------------------------------------------------------------------


@pytest.mark.samples
def test_eurosat_samples(plugin):
    folder = SAMPLES / "multispectral"
    if not folder.is_dir():
        pytest.skip("../shared/samples not present")
    files = sorted(folder.glob("*.tif"))
    assert len(files) == 10
    by_class = {}
    for f in files:
        s = plugin.read(f, bands="eurosat")  # EuroSAT stores B8A last
        assert s.image.shape == (13, 64, 64) and s.meta["crs"] is not None
        assert CRS.from_wkt(s.meta["crs"]).to_epsg() in range(32601, 32661)
        assert s.meta["spacing"] == pytest.approx((10.0, 10.0), abs=0.1)
        assert s.valid.all() and 0.0 <= float(s.image.min()) and float(s.image.max()) < 1.5
        names = [c["name"] for c in s.meta["channels"]]
        by_class[f.stem.split("_")[0]] = {n: float(s.image[i].mean()) for i, n in enumerate(names)}
        x = plugin.preprocess(s)
        assert abs(float(x.image.mean())) < 3.0
    forest, sea = by_class["Forest"], by_class["SeaLake"]
    assert forest["B08"] > 2 * forest["B04"] and forest["B8A"] > forest["B04"]
    assert sea["B08"] < 0.1 and sea["B08"] < 0.5 * forest["B08"]
    # without bands= a 13-band file is read in the standard L1C order
    s = plugin.read(files[0])
    assert s.meta["band_preset"] == "sentinel2_l1c"
