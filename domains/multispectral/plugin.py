"""The multispectral (satellite) domain plugin: GeoTIFF in, results back on the source grid."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from unimae.core.errors import InputError
from unimae.domains.base import DomainPlugin, ResultFile, Sample, Transform
from unimae.domains.multispectral.augment import SceneAugment
from unimae.domains.multispectral.bands import BAND_PRESETS, DEFAULT_BAND_STATS, canonical_band, preset_channels
from unimae.domains.multispectral.examples import write_examples as _write_examples
from unimae.domains.multispectral.plotting import COMPOSITES, plot_sample, rgb_composite
from unimae.domains.multispectral.reader import TIFF_SUFFIXES, GeoTiffReader, read_class_map, read_geotiff
from unimae.domains.multispectral.stats import load_band_stats, normalization_for
from unimae.domains.multispectral.synthetic import LAND_COVER_CLASSES, SyntheticScenes
from unimae.domains.multispectral.writer import GeoTiffWriter, write_geotiff
from unimae.domains.sniff import suffix, tiff_info

__all__ = ["MultispectralPlugin"]


class MultispectralPlugin(DomainPlugin):
    """Sentinel-2, Landsat 8/9 and RGB GeoTIFFs.

    ``read`` gives reflectance ``(C, H, W)`` with band names and wavelengths, nodata/NaN in ``valid`` and
    the CRS/transform; ``preprocess`` standardises each band by name (default approximate statistics per
    preset, or your own from ``compute_band_stats``); ``write`` puts a result back on the source grid.
    Synthetic data: land-cover scenes (``water`` = 0, ``forest``, ``crop``, ``bare_soil``, ``urban``;
    there is no background class).
    """

    name: ClassVar[str] = "multispectral"
    spatial_dims: ClassVar[int] = 2
    modality: ClassVar[str] = "sentinel2_l1c"
    extensions: ClassVar[tuple[str, ...]] = TIFF_SUFFIXES
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    #: preprocess presets (band selections; normalisation statistics come from the band preset)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "rgb": {"select_bands": ("B04", "B03", "B02")},
        "l2a_bands": {"select_bands": tuple(BAND_PRESETS["sentinel2_l2a"]["bands"])},
    }
    class_names: ClassVar[tuple[str, ...]] = LAND_COVER_CLASSES
    seg_class_names: ClassVar[tuple[str, ...]] = LAND_COVER_CLASSES
    multi_label: ClassVar[bool] = False
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        # SatMAE-style 96 px crops with 8 px patches; spectral embedding and channel + patch masking
        "pretrain": {"patch_size": 8, "input_size": 96, "mask_ratio": 0.75, "masking": "channel_patch",
                     "channel_mask_ratio": 0.5, "bands": "sentinel2_l1c"},
        # segment_mode "sliding": training crops at native resolution, so prediction works at that scale
        "finetune": {"patch_size": 8, "input_size": 96, "layer_decay": 0.75, "bands": "sentinel2_l1c",
                     "segment_mode": "sliding"},
    }
    synthetic_data: ClassVar[type[SyntheticScenes]] = SyntheticScenes
    synthetic_options: ClassVar[tuple[str, ...]] = ("bands",)
    augment_class: ClassVar[type[SceneAugment]] = SceneAugment
    # TorchGeo-style band metadata
    all_band_names: ClassVar[tuple[str, ...]] = tuple(BAND_PRESETS["sentinel2_l1c"]["bands"])
    rgb_bands: ClassVar[tuple[str, ...]] = ("B04", "B03", "B02")
    band_presets: ClassVar[dict[str, dict[str, Any]]] = BAND_PRESETS
    title: ClassVar[str] = "Multispectral"
    description: ClassVar[str] = (
        "Satellite scenes: **GeoTIFF** (Sentinel-2, Landsat 8/9 or RGB). Results come back as GeoTIFF with the "
        "source CRS, transform and nodata; nodata is shown transparent."
    )
    display: ClassVar[str] = "scene"
    composites: ClassVar[dict[str, str]] = {"natural": "natural colour", "false_color": "false colour (NIR)"}
    channel_noun: ClassVar[str] = "bands"
    georeferenced: ClassVar[bool] = True
    result_suffix: ClassVar[str] = ".tif"
    streams: ClassVar[bool] = True
    demo_models: ClassVar[dict[str, dict[str, Any]]] = {
        "classify": {"model": {"patch_size": 8}, "data": {"input_size": 64, "num_val_samples": 32},
                     "train": {"max_steps": 60, "batch_size": 16}},
        "segment": {"model": {"patch_size": 8, "feature_size": 8}, "data": {"input_size": 64, "num_val_samples": 4},
                    "train": {"max_steps": 60, "batch_size": 8, "lr": 3e-3}},
        "anomaly": {"model": {"patch_size": 8},
                    "data": {"input_size": 64, "num_val_samples": 32, "val_lesion_prob": 0.5},
                    "train": {"max_steps": 100, "batch_size": 8}},
    }  # fmt: skip
    demo_test_size: ClassVar[int] = 32
    demo_examples: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"size": 96, "nodata_corner": 18},
        "test": {"size": 40, "nodata_corner": 8},
    }

    # -- files -----------------------------------------------------------------------------------
    def sniff(self, path: str | Path) -> float:
        """TIFFs with more than 4 bands or a CRS (1.0); other TIFFs 0.3 (an RGB photograph is likelier, but a
        model for scenes reads an RGB GeoTIFF that lost its CRS)."""
        p = Path(path)
        if not p.is_file() or suffix(p) not in TIFF_SUFFIXES:
            return 0.0
        count, crs = tiff_info(p)
        return 1.0 if count > 4 or crs else 0.3

    #: read a GeoTIFF (or a ``window`` of it) as reflectance (:func:`~unimae.domains.multispectral.reader.read_geotiff`,
    #: called as it is)
    read = staticmethod(read_geotiff)

    def read_for_model(self, path: str | Path, trained_read: Mapping[str, Any]) -> Sample:
        """A file that does not name its bands (``band_source == "band_count"``) is read in the band order of the
        model's training files (``trained_read["bands"]``, e.g. EuroSAT's B8A-last order)."""
        sample = self.read(path)
        if trained_read and sample.meta.get("band_source") == "band_count":
            sample = self.read(path, **trained_read)
        return sample

    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        """A class-map GeoTIFF (one band) or PNG as int64 ``(H, W)``; shape must match ``like``."""
        return read_class_map(path, like=like)

    def preset_channels(self, preset: str) -> list[dict[str, Any]]:
        """The bands of a band preset (``sentinel2_l1c``, ``landsat8``, ``eurosat`` ...) with their wavelengths."""
        return [dict(c) for c in preset_channels(preset)]

    # -- model space -----------------------------------------------------------------------------
    def preprocess(
        self,
        sample: Sample,
        *,
        stats: dict[str, Any] | str | Path | None = None,
        select_bands: Sequence[str] | None = None,
    ) -> Sample:
        """Standardise each band, ``(x - mean) / std``, and set invalid pixels to 0.

        ``stats``: a statistics dict or JSON file from ``compute_band_stats`` (looked up by band name);
        default: the band preset's approximate reflectance statistics. ``select_bands``: keep and
        reorder bands by name (e.g. ``("B04", "B03", "B02")``) for a model trained on those bands.
        ``meta['normalization']`` records the per-band mean/std. A sample that is already normalised
        (synthetic data) is returned as is (after any band selection); re-normalising it with other
        ``stats`` raises.
        """
        path = sample.meta.get("path")
        if isinstance(stats, (str, Path)):
            stats = load_band_stats(stats)
        if select_bands is not None:
            sample = _select_bands(sample, select_bands)
        if sample.meta.get("normalization") is not None:
            if stats is not None:
                raise InputError("the sample is already normalised; pass stats= only for raw reads", path)
            return sample
        names = [c["name"] for c in sample.meta["channels"]]
        units = sample.meta.get("units")
        if stats is None:
            if units == "DN":
                raise InputError(
                    "values are raw digital numbers with no known reflectance scale; pass scale= when reading "
                    "or stats= computed on these files",
                    path,
                )
            table = sample.meta.get("band_stats_table") or _stats_table_for(names, sample.meta.get("modality"))
            norm = normalization_for(names, table=table, path=path)
        else:
            if stats.get("units") and units and stats["units"] != units:
                raise InputError(f"statistics are in {stats['units']} but the image is in {units}", path)
            norm = normalization_for(names, stats=stats, path=path)
        mean = torch.tensor(norm["mean"], dtype=torch.float32)[:, None, None]
        std = torch.tensor(norm["std"], dtype=torch.float32)[:, None, None].clamp_min(1e-8)
        image = (sample.image.float() - mean) / std
        valid = sample.valid
        image = image.masked_fill(~valid.bool()[None], 0.0)
        meta = dict(sample.meta)
        meta["normalization"] = norm
        return sample.replace(image=image, meta=meta)

    # -- results ---------------------------------------------------------------------------------
    def _write(
        self, array: Any, meta: dict[str, Any], out: ResultFile, *, descriptions: Sequence[str | None] | None = None
    ) -> Path:
        """Write ``(H, W)`` or ``(C, H, W)`` as a compressed GeoTIFF with the source CRS, transform and ``nodata``.

        The array is on the source grid (scenes are predicted there) and keeps its dtype, whatever ``kind``;
        ``descriptions`` name the bands (``class_names`` are not stored: a class map has one band).
        """
        if Path(out.path).suffix.lower() not in TIFF_SUFFIXES:
            raise InputError("write GeoTIFF results to a .tif or .tiff path", out.path)
        return write_geotiff(array, meta, out.path, nodata=out.nodata, descriptions=descriptions)

    # -- streamed scenes -------------------------------------------------------------------------
    def open_scene(self, path: str | Path, *, trained_read: Mapping[str, Any] | None = None) -> GeoTiffReader:
        """A :class:`GeoTiffReader` (open once, read windows); a file that does not name its bands is read in
        the band order of the model's training files (``trained_read["bands"]``, e.g. EuroSAT's)."""
        reader = GeoTiffReader(path)
        bands = (trained_read or {}).get("bands")
        if bands is not None and reader.bandset.source == "band_count":
            reader.close()
            reader = GeoTiffReader(path, bands=bands)
        return reader

    def scene_writer(self, like: str | Path, path: str | Path, **settings: Any) -> GeoTiffWriter:
        """A tiled GeoTIFF writer on the grid (CRS, transform) of the input ``like``; ``settings``: ``count``,
        ``dtype``, ``nodata``, ``descriptions``, ``tile`` (see :meth:`DomainPlugin.scene_writer`)."""
        return GeoTiffWriter.like(like, path, **settings)

    def stream_context(self) -> contextlib.AbstractContextManager:
        """GDAL's block cache bounded to 64 MB, so a streamed scene's memory does not grow with its size."""
        import rasterio

        return rasterio.Env(GDAL_CACHEMAX=64 * 2**20)

    # -- display ---------------------------------------------------------------------------------
    def composite(
        self, image: np.ndarray, valid: np.ndarray | None, channels: Sequence[Mapping[str, Any]], name: str
    ) -> np.ndarray:
        """Natural colour (B04/B03/B02) or false colour (B08/B04/B03), bands chosen by wavelength, robustly
        stretched (see :func:`~unimae.domains.multispectral.plotting.rgb_composite`)."""
        if name not in COMPOSITES:
            raise InputError(f"unknown composite {name!r}; known: {', '.join(COMPOSITES)}")
        rgba = rgb_composite(image, valid, [dict(c) for c in channels], composite=name)
        return (np.clip(rgba[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)

    def write_examples(self, dest: Path, *, seed: int, **settings: Any) -> list[Path]:
        """Synthetic Sentinel-2 scenes as GeoTIFF: land cover with a nodata corner, spectral anomalies."""
        return _write_examples(dest, seed=seed, **settings)

    #: the RGB composite (``"natural"`` B04/B03/B02 or ``"false_color"`` B08/B04/B03) with overlay and legend
    #: (:func:`~unimae.domains.multispectral.plotting.plot_sample`, called as it is)
    plot = staticmethod(plot_sample)


def _stats_table_for(names: Sequence[str], modality: str | None) -> str | None:
    """The default statistics table holding every band in ``names`` (the modality's first)."""
    order = list(DEFAULT_BAND_STATS)
    pref = {"sentinel2_l1c": "sentinel2_l1c", "sentinel2_l2a": "sentinel2_l2a", "landsat8": "landsat_sr",
            "landsat9": "landsat_sr", "rgb": "rgb"}.get(modality or "")
    if pref:
        order.remove(pref)
        order.insert(0, pref)
    for t in order:
        if all(n in DEFAULT_BAND_STATS[t] for n in names):
            return t
    return order[0] if pref else None


def _select_bands(sample: Sample, select: Sequence[str]) -> Sample:
    """Keep and reorder the bands named in ``select`` (matched exactly, or as ``"B4"`` -> ``"B04"``)."""
    channels = sample.meta["channels"]
    names = [c["name"] for c in channels]
    idx = []
    for want in select:
        if want in names:
            idx.append(names.index(want))
            continue
        hit = canonical_band(str(want))
        if hit is None or hit[1] not in names:
            raise InputError(f"band {want!r} is not in the image; its bands are {names}", sample.meta.get("path"))
        idx.append(names.index(hit[1]))
    meta = dict(sample.meta)
    meta["channels"] = [dict(channels[i]) for i in idx]
    if idx != list(range(len(names))):
        meta["band_preset"] = None
    norm = meta.get("normalization")
    if norm is not None and norm.get("bands") == names:
        meta["normalization"] = {
            **norm,
            "bands": [names[i] for i in idx],
            "mean": [norm["mean"][i] for i in idx],
            "std": [norm["std"][i] for i in idx],
        }
    if "scale" in meta and isinstance(meta["scale"], list) and len(meta["scale"]) == len(names):
        meta["scale"] = [meta["scale"][i] for i in idx]
        meta["offset"] = [meta["offset"][i] for i in idx]
    return sample.replace(image=sample.image[torch.as_tensor(np.asarray(idx, dtype=np.int64))], meta=meta)
