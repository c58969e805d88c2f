"""Multispectral (satellite) domain: Sentinel-2, Landsat 8/9 and RGB GeoTIFFs through rasterio.

Public API
----------
* :class:`MultispectralPlugin` -- the domain plugin (``read``/``preprocess``/``augment``/``synthetic``/
  ``write``/``plot``).
* Band tables: :data:`BAND_PRESETS`, :data:`SENSOR_BANDS`, :data:`DEFAULT_BAND_STATS`,
  :func:`preset_channels`.
* Streaming: :class:`GeoTiffReader` (open once, read windows), :func:`iter_windows`,
  :class:`GeoTiffWriter` (write windows on the source grid, atomically).
* Statistics: :func:`compute_band_stats`, :func:`save_band_stats`, :func:`load_band_stats`.
* Synthetic data: :class:`SyntheticScenes`, :data:`LAND_COVER_CLASSES`, :data:`CLASS_SPECTRA`.
"""

from unimae.domains.multispectral.augment import SceneAugment
from unimae.domains.multispectral.bands import (
    BAND_PRESETS,
    DEFAULT_BAND_STATS,
    SENSOR_BANDS,
    band_wavelength,
    preset_channels,
    resolve_bands,
)
from unimae.domains.multispectral.plotting import plot_sample, rgb_composite
from unimae.domains.multispectral.plugin import MultispectralPlugin
from unimae.domains.multispectral.reader import GeoreferenceWarning, GeoTiffReader, read_class_map, read_geotiff
from unimae.domains.multispectral.stats import compute_band_stats, load_band_stats, save_band_stats
from unimae.domains.multispectral.synthetic import (
    ANOMALY_SPECTRA,
    CLASS_SPECTRA,
    LAND_COVER_CLASSES,
    SyntheticScenes,
)
from unimae.domains.multispectral.windows import iter_windows
from unimae.domains.multispectral.writer import GeoTiffWriter, write_geotiff

__all__ = [
    "MultispectralPlugin",
    "BAND_PRESETS",
    "SENSOR_BANDS",
    "DEFAULT_BAND_STATS",
    "preset_channels",
    "band_wavelength",
    "resolve_bands",
    "GeoTiffReader",
    "GeoreferenceWarning",
    "read_geotiff",
    "read_class_map",
    "iter_windows",
    "GeoTiffWriter",
    "write_geotiff",
    "compute_band_stats",
    "save_band_stats",
    "load_band_stats",
    "SceneAugment",
    "SyntheticScenes",
    "LAND_COVER_CLASSES",
    "CLASS_SPECTRA",
    "ANOMALY_SPECTRA",
    "plot_sample",
    "rgb_composite",
]
