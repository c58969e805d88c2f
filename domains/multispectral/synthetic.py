"""Synthetic land-cover scenes with per-band reflectance spectra, already in model space.

Each scene is a mosaic of smooth random regions of five land-cover classes (``water``, ``forest``,
``crop``, ``bare_soil``, ``urban``), each with a typical top-of-atmosphere reflectance spectrum
(:data:`CLASS_SPECTRA`) plus class texture, illumination and sensor noise. There is **no background
class**: index 0 is water. Sample ``i`` depends only on ``(seed, i)``, is generated on access and is
normalised with the band preset's default statistics, exactly as ``read`` + ``preprocess`` would.

Targets by ``task``:

* ``"segment"``: ``mask`` = land-cover class map ``(H, W)`` (indices into :data:`LAND_COVER_CLASSES`);
* ``"classify"``: ``label`` = the dominant class of the scene (most pixels);
* ``"anomaly"``: small patches with an atypical spectrum (burn scar, oil slick, bright cloud) with
  probability ``lesion_prob`` per scene; ``mask`` = anomaly mask (0/1), ``label`` = 0/1.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from unimae.core.tasks import get_task
from unimae.domains.base import Sample, SyntheticSamples, sample_index
from unimae.domains.multispectral.bands import BAND_PRESETS, SENSOR_BANDS, get_preset, preset_channels
from unimae.domains.multispectral.stats import normalization_for

__all__ = ["LAND_COVER_CLASSES", "CLASS_SPECTRA", "ANOMALY_SPECTRA", "SyntheticScenes", "spectrum_for"]

LAND_COVER_CLASSES: tuple[str, ...] = ("water", "forest", "crop", "bare_soil", "urban")

_S2 = BAND_PRESETS["sentinel2_l1c"]["bands"]

#: class -> TOA reflectance at the 13 Sentinel-2 L1C bands (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10
#: B11 B12). Water: brightest in blue, near zero in NIR/SWIR. Vegetation: red trough, red-edge rise, NIR
#: plateau (crops brighter and with more SWIR than forest). Bare soil: rising towards SWIR. Urban: bright
#: and flat. B09 (water vapour) and B10 (cirrus) are atmospheric absorption bands: low for every surface.
CLASS_SPECTRA: dict[str, tuple[float, ...]] = {
    "water":     (0.100, 0.075, 0.055, 0.035, 0.030, 0.025, 0.022, 0.020, 0.018, 0.008, 0.0010, 0.012, 0.008),
    "forest":    (0.110, 0.080, 0.065, 0.040, 0.065, 0.180, 0.230, 0.240, 0.260, 0.060, 0.0010, 0.110, 0.045),
    "crop":      (0.120, 0.090, 0.085, 0.060, 0.100, 0.250, 0.310, 0.330, 0.350, 0.085, 0.0015, 0.190, 0.095),
    "bare_soil": (0.130, 0.110, 0.120, 0.140, 0.165, 0.190, 0.210, 0.225, 0.240, 0.070, 0.0020, 0.310, 0.250),
    "urban":     (0.150, 0.130, 0.130, 0.140, 0.150, 0.165, 0.175, 0.185, 0.190, 0.060, 0.0025, 0.210, 0.180),
}

#: anomaly kind -> TOA reflectance at the same 13 bands: a fresh burn scar (NIR collapses, SWIR rises),
#: an oil slick (darker and flatter than water) and a thick bright cloud (cirrus band lit up).
ANOMALY_SPECTRA: dict[str, tuple[float, ...]] = {
    "burn_scar": (0.095, 0.065, 0.055, 0.060, 0.070, 0.080, 0.085, 0.085, 0.090, 0.030, 0.0010, 0.190, 0.170),
    "oil":       (0.060, 0.040, 0.028, 0.018, 0.015, 0.012, 0.010, 0.009, 0.008, 0.004, 0.0008, 0.006, 0.004),
    "cloud":     (0.480, 0.470, 0.460, 0.470, 0.480, 0.490, 0.490, 0.500, 0.500, 0.260, 0.0600, 0.400, 0.300),
}

_TASKS = ("segment", "classify", "anomaly")
_DEFAULT_LESION_PROB = 0.5


def spectrum_for(values: Sequence[float], bands: Sequence[str], wavelengths: Sequence[float | None]) -> np.ndarray:
    """Resample a 13-band Sentinel-2 spectrum to another band set.

    Sentinel-2 band names are taken directly; other bands are interpolated by wavelength over the
    Sentinel-2 surface bands (B09/B10, the absorption bands, excluded).
    """
    s2 = dict(zip(_S2, values))
    surf = [b for b in _S2 if b not in ("B09", "B10")]
    xs = np.array([SENSOR_BANDS["sentinel2"][b][0] for b in surf])
    ys = np.array([s2[b] for b in surf])
    out = []
    for name, wl in zip(bands, wavelengths):
        if name in s2:
            out.append(s2[name])
        elif wl is not None:
            out.append(float(np.interp(wl, xs, ys)))
        else:
            raise ValueError(f"band {name!r} has no wavelength to resample a spectrum to")
    return np.asarray(out, dtype=np.float32)


@lru_cache(maxsize=4)
def _crs_wkt(epsg: int) -> str:
    from rasterio.crs import CRS

    return CRS.from_epsg(epsg).to_wkt()


def _smooth_field(rng: np.random.Generator, cells: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A smooth random field in about [-1, 1]: bicubic upsampling of a coarse Gaussian grid."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


class SyntheticScenes(SyntheticSamples):
    """A deterministic, lazily generated dataset of synthetic multispectral scenes (see module docstring).

    Parameters
    ----------
    n:           number of samples.
    seed:        dataset seed; sample ``i`` is drawn from ``np.random.default_rng([seed, i])``.
    size:        scene size in pixels, an int or ``(height, width)``.
    task:        ``"segment"``, ``"classify"`` or ``"anomaly"``.
    lesion_prob: chance a scene has anomalies (task ``"anomaly"`` only; default 0.5; 0 gives normal
                 scenes for anomaly training).
    bands:       band preset of the generated bands (``"sentinel2_l1c"``, ``"sentinel2_l2a"``, ``"eurosat"``,
                 ``"landsat8"``, ``"landsat9"``, ``"rgb"``).
    """

    all_band_names: tuple[str, ...] = _S2
    rgb_bands: tuple[str, ...] = ("B04", "B03", "B02")
    class_names: tuple[str, ...] = LAND_COVER_CLASSES
    seg_class_names: tuple[str, ...] = LAND_COVER_CLASSES
    anomaly_kinds: tuple[str, ...] = tuple(ANOMALY_SPECTRA)
    pixel_size: float = 10.0  # metres
    epsg: int = 32633  # WGS 84 / UTM zone 33N

    tasks: ClassVar[tuple[str, ...]] = _TASKS
    default_lesion_prob: ClassVar[float] = _DEFAULT_LESION_PROB

    def __init__(self, n: int, *, size: int | Sequence[int] = 96, bands: str = "sentinel2_l1c", **common: Any) -> None:
        super().__init__(n, **common)  # seed, task, lesion_prob
        if isinstance(size, (int, np.integer)):
            self.size = (int(size), int(size))
        else:
            vals = tuple(int(s) for s in size)
            if len(vals) != 2:
                raise ValueError(f"size must be an int or (height, width), got {size!r}")
            self.size = vals
        if min(self.size) < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        preset = get_preset(bands)
        self.bands = bands
        self.channels = preset_channels(bands)
        names = [c["name"] for c in self.channels]
        wls = [c["wavelength"] for c in self.channels]
        self.all_band_names = tuple(names)
        self.rgb_bands = tuple(preset["rgb_bands"])
        self.modality = preset["modality"]
        self._class_spectra = np.stack([spectrum_for(CLASS_SPECTRA[c], names, wls) for c in LAND_COVER_CLASSES])
        self._anomaly_spectra = np.stack([spectrum_for(ANOMALY_SPECTRA[k], names, wls) for k in ANOMALY_SPECTRA])
        self.normalization = normalization_for(names, table=preset["stats"])
        self._mean = np.asarray(self.normalization["mean"], dtype=np.float32)[:, None, None]
        self._std = np.asarray(self.normalization["std"], dtype=np.float32)[:, None, None]

    # -- generation ------------------------------------------------------------------------------
    def _class_map(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.size
        k = len(LAND_COVER_CLASSES)
        cells = (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
        fields = np.stack([_smooth_field(rng, cells, (h, w)) for _ in range(k)])
        fields += rng.uniform(-0.3, 0.3, size=(k, 1, 1)).astype(np.float32)
        fields[int(rng.integers(k))] += rng.uniform(0.4, 1.0)  # one class tends to dominate
        return np.argmax(fields, axis=0).astype(np.int64)

    def _reflectance(self, rng: np.random.Generator, cmap: np.ndarray) -> np.ndarray:
        h, w = self.size
        img = self._class_spectra[cmap].transpose(2, 0, 1).copy()  # (K, C)[H, W] -> (C, H, W)
        # class textures: crop parcels of different vigour (mixing towards bare soil), urban blocks
        parcels = cv2.resize(rng.uniform(0.0, 0.35, (max(2, h // 12), max(2, w // 12))).astype(np.float32),
                             (w, h), interpolation=cv2.INTER_NEAREST)
        crop = cmap == 2
        if crop.any():
            soil = self._class_spectra[3][:, None]
            img[:, crop] = img[:, crop] * (1 - parcels[crop]) + soil * parcels[crop]
        urban = cmap == 4
        if urban.any():
            blocks = cv2.resize(rng.uniform(0.8, 1.25, (max(2, h // 4), max(2, w // 4))).astype(np.float32),
                                (w, h), interpolation=cv2.INTER_NEAREST)
            img[:, urban] *= blocks[urban]
        # smooth brightness texture shared by all bands, scene illumination, per-band sensor noise
        texture = 1.0 + 0.06 * _smooth_field(rng, (max(2, h // 8), max(2, w // 8)), (h, w))
        img *= texture[None] * np.float32(rng.uniform(0.92, 1.08))
        img += rng.normal(0.0, 0.004, size=img.shape).astype(np.float32)
        return img

    def _anomalies(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        h, w = self.size
        mask = np.zeros((h, w), dtype=np.int64)
        if rng.random() >= self.lesion_prob:
            return mask
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rmax = max(2.0, min(h, w) / 12)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
            ry, rx = rng.uniform(2.0, rmax), rng.uniform(2.0, rmax)
            theta = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
            v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
            blob = u * u + v * v <= 1.0
            if not blob.any():
                continue
            kind = int(rng.integers(len(self._anomaly_spectra)))
            spec = self._anomaly_spectra[kind][:, None]
            img[:, blob] = spec * np.float32(rng.uniform(0.9, 1.1)) + rng.normal(
                0.0, 0.004, size=(img.shape[0], int(blob.sum()))
            ).astype(np.float32)
            mask[blob] = 1
        return mask

    def __getitem__(self, index: int) -> Sample:
        i = sample_index(index, self.n)
        rng = np.random.default_rng([self.seed, i])
        h, w = self.size
        cmap = self._class_map(rng)
        img = self._reflectance(rng, cmap)
        label = mask = None
        task = get_task(self.task)
        if task.trains_on_normal:  # anomalies drawn in, their mask the target
            mask = self._anomalies(rng, img)
            label = torch.tensor(int(mask.any()), dtype=torch.long)
            mask_t = torch.from_numpy(mask)
            mask_names: tuple[str, ...] = ("normal", "anomaly")
        else:
            mask_t = torch.from_numpy(cmap) if task.pixel_labels else None
            mask_names = LAND_COVER_CLASSES
            if task.image_labels:
                label = torch.tensor(int(np.bincount(cmap.ravel(), minlength=5).argmax()), dtype=torch.long)
        model = (img - self._mean) / self._std
        x0 = 200_000.0 + 10.0 * float(rng.integers(0, 50_000))
        y0 = 4_500_000.0 + 10.0 * float(rng.integers(0, 100_000))
        px = self.pixel_size
        meta: dict[str, Any] = {
            "spatial_dims": 2,
            "channels": [dict(c) for c in self.channels],
            "spacing": (px, px),
            "spacing_units": "metre",
            "affine": None,
            "crs": _crs_wkt(self.epsg),
            "crs_name": f"EPSG:{self.epsg}",
            "transform": (px, 0.0, x0, 0.0, -px, y0),
            "nodata": None,
            "valid": torch.ones((h, w), dtype=torch.bool),
            "modality": self.modality,
            "path": None,
            "source_shape": (h, w),
            "dtype": "float32",
            "band_preset": self.bands,
            "band_source": "synthetic",
            "units": "reflectance",
            "normalization": dict(self.normalization),
            "synthetic": True,
            "task": self.task,
            "mask_class_names": mask_names if mask_t is not None else None,
        }
        return Sample(image=torch.from_numpy(np.ascontiguousarray(model, dtype=np.float32)), meta=meta,
                      label=label, mask=mask_t)

    def plot(self, index_or_sample: int | Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """A matplotlib Figure of sample ``index`` (or a given sample); see :func:`plot_sample`."""
        from unimae.domains.multispectral.plotting import plot_sample

        sample = self[index_or_sample] if isinstance(index_or_sample, (int, np.integer)) else index_or_sample
        return plot_sample(sample, prediction, **kwargs)
