"""Multispectral example files for the app: synthetic Sentinel-2 L1C scenes as 13-band uint16 GeoTIFFs
(reflectance x 10000, UTM CRS, nodata 0 in a corner), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimae.core.fileio import atomic_path

__all__ = ["write_scene_geotiff", "write_examples"]


def write_scene_geotiff(
    path: str | Path, *, seed: int, index: int, size: int | Sequence[int], task: str = "segment",
    lesion_prob: float | None = None, nodata_corner: int = 0,
) -> Path:  # fmt: skip
    """A synthetic Sentinel-2 L1C scene as a 13-band uint16 GeoTIFF (reflectance x 10000) with its CRS.

    ``nodata_corner`` pixels square in the top-left corner are set to the nodata value 0 (as at a
    swath edge), so the app shows them transparent.
    """
    import rasterio
    from rasterio.transform import Affine

    from unimae.domains.multispectral.synthetic import SyntheticScenes

    ds = SyntheticScenes(int(index) + 1, seed=seed, size=size, task=task, lesion_prob=lesion_prob)
    scene = ds[int(index)]
    norm = scene.meta["normalization"]
    refl = scene.image.numpy() * np.asarray(norm["std"])[:, None, None] + np.asarray(norm["mean"])[:, None, None]
    data = np.clip(np.round(refl * 10000.0), 1, 65535).astype(np.uint16)
    if nodata_corner > 0:
        n = int(nodata_corner)
        yy, xx = np.mgrid[: data.shape[1], : data.shape[2]]
        data[:, (yy + xx) < n] = 0  # a triangular swath edge
    a, b, c, d, e, f = scene.meta["transform"]
    names = [ch["name"] for ch in scene.meta["channels"]]
    path = Path(path)
    with atomic_path(path) as tmp:
        with rasterio.open(
            tmp, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype="uint16",
            crs=scene.meta["crs_name"], transform=Affine(a, b, c, d, e, f), nodata=0, compress="deflate",
        ) as out:  # fmt: skip
            out.write(data)
            for i, name in enumerate(names, start=1):
                out.set_band_description(i, name)
    return path


def write_examples(dest: Path, *, seed: int, size: int | Sequence[int], nodata_corner: int = 0) -> list[Path]:
    """The app's scenes: land cover with a nodata corner, and one with spectral anomalies."""
    dest.mkdir(parents=True, exist_ok=True)
    return [
        write_scene_geotiff(dest / "s2_landcover.tif", seed=seed, index=0, size=size, nodata_corner=nodata_corner),
        write_scene_geotiff(dest / "s2_anomalies.tif", seed=seed, index=1, size=size, task="anomaly", lesion_prob=1.0),
    ]
