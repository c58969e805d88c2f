"""Per-band statistics over a dataset (streamed by window) and the per-band normalisation that uses them.

A statistics dict (JSON-serialisable, stored with configs and checkpoints) looks like::

    {"bands": ["B01", ...], "wavelengths": [0.443, ...], "mean": [...], "std": [...],
     "p1": [...], "p99": [...], "min": [...], "max": [...], "pixels": 123456, "files": 10,
     "units": "reflectance", "modality": "sentinel2_l1c"}

All values are in the units ``read`` returns (reflectance after scale/offset), over valid pixels only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path
from unimae.domains.multispectral.bands import DEFAULT_BAND_STATS
from unimae.domains.multispectral.windows import iter_windows

__all__ = [
    "compute_band_stats",
    "save_band_stats",
    "load_band_stats",
    "default_stats",
    "normalization_for",
]

_REQUIRED = ("bands", "mean", "std")


def compute_band_stats(
    paths: str | Path | Sequence[str | Path],
    *,
    bands: str | Sequence[str] | None = None,
    max_pixels_per_file: int = 1_000_000,
    percentile_samples_per_file: int = 100_000,
    tile: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-band mean, std, 1st/99th percentiles, min and max over the valid pixels of ``paths``.

    Files are read window by window (``tile`` pixels square), so a scene is never loaded whole. A file
    larger than ``max_pixels_per_file`` is sampled: a seeded random subset of its windows up to that many
    pixels. Mean and std (population, ``ddof=0``) are exact over the pixels read (merged per window in
    float64); percentiles come from up to ``percentile_samples_per_file`` values per band and file (all
    of them for small files, so the result then equals ``numpy.percentile``). ``bands`` is passed to the
    reader (preset name or band names). Every file must resolve to the same band names.
    """
    from unimae.domains.multispectral.reader import GeoTiffReader

    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InputError("no files given to compute band statistics from")
    if max_pixels_per_file <= 0 or percentile_samples_per_file <= 0:
        raise ValueError("max_pixels_per_file and percentile_samples_per_file must be positive")
    rng = np.random.default_rng(seed)
    names: list[str] | None = None
    wavelengths: list[float | None] = []
    modality = units = None
    n_tot = None
    mean_tot = m2_tot = None
    lo = hi = None
    samples: list[list[np.ndarray]] = []
    for path in paths:
        with GeoTiffReader(path, bands=bands) as reader:
            if names is None:
                names = reader.bandset.names
                wavelengths = reader.bandset.wavelengths
                modality, units = reader.bandset.modality, reader.units
                c = len(names)
                n_tot = 0
                mean_tot, m2_tot = np.zeros(c), np.zeros(c)
                lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
                samples = [[] for _ in range(c)]
            elif reader.bandset.names != names:
                raise InputError(
                    f"bands {reader.bandset.names} differ from {names} of {Path(str(paths[0])).name}", path
                )
            side = max(16, min(tile, int(math.sqrt(max_pixels_per_file))))
            windows = list(iter_windows(reader.height, reader.width, side, edge="clip"))
            if reader.height * reader.width > max_pixels_per_file:
                order = rng.permutation(len(windows))
                picked, budget = [], max_pixels_per_file
                for k in order:
                    w = windows[k]
                    if w.height * w.width > budget:
                        break
                    picked.append(w)
                    budget -= int(w.height * w.width)
                windows = picked or [windows[order[0]]]
            expected = sum(int(w.height * w.width) for w in windows)
            keep = min(1.0, percentile_samples_per_file / max(1, expected))
            for w in windows:
                data, valid = reader.read_array(w, allow_empty=True)
                vals = data[:, valid].astype(np.float64)  # (C, n)
                n = vals.shape[1]
                if n == 0:
                    continue
                m = vals.mean(axis=1)
                m2 = ((vals - m[:, None]) ** 2).sum(axis=1)
                delta = m - mean_tot
                tot = n_tot + n
                mean_tot = mean_tot + delta * (n / tot)
                m2_tot = m2_tot + m2 + delta**2 * (n_tot * n / tot)
                n_tot = tot
                lo, hi = np.minimum(lo, vals.min(axis=1)), np.maximum(hi, vals.max(axis=1))
                if keep >= 1.0:
                    sub = vals
                else:
                    sub = vals[:, rng.random(n) < keep]
                for b in range(len(names)):
                    samples[b].append(sub[b].astype(np.float32))
    if not n_tot:
        raise InputError(f"no valid pixels in {len(paths)} file(s); cannot compute band statistics")
    std = np.sqrt(m2_tot / n_tot)
    p1, p99 = [], []
    for b in range(len(names)):
        vals = np.concatenate(samples[b]).astype(np.float64)
        q = np.percentile(vals, [1.0, 99.0])
        p1.append(float(q[0]))
        p99.append(float(q[1]))
    return {
        "bands": list(names),
        "wavelengths": list(wavelengths),
        "mean": [float(v) for v in mean_tot],
        "std": [float(v) for v in std],
        "p1": p1,
        "p99": p99,
        "min": [float(v) for v in lo],
        "max": [float(v) for v in hi],
        "pixels": int(n_tot),
        "files": len(paths),
        "units": units,
        "modality": modality,
    }


def save_band_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Write ``stats`` as JSON (atomically) and return the path."""
    _validate(stats, path)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return path


def load_band_stats(path: str | Path) -> dict[str, Any]:
    """Read statistics saved by :func:`save_band_stats`; a malformed file raises :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError("band statistics file not found", path)
    try:
        stats = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"not a JSON band statistics file: {err}", path) from err
    _validate(stats, path)
    return stats


def _validate(stats: Any, path=None) -> None:
    if not isinstance(stats, dict):
        raise InputError("band statistics must be a JSON object", path)
    missing = [k for k in _REQUIRED if k not in stats]
    if missing:
        raise InputError(f"band statistics lack {', '.join(missing)}", path)
    n = len(stats["bands"])
    for k in ("mean", "std", "p1", "p99", "min", "max", "wavelengths"):
        if k in stats and len(stats[k]) != n:
            raise InputError(f"band statistics have {n} bands but {len(stats[k])} values of {k!r}", path)
    for k in ("mean", "std"):
        vals = np.asarray(stats[k], dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            raise InputError(f"band statistics {k!r} hold non-finite values", path)
    if np.any(np.asarray(stats["std"], dtype=np.float64) <= 0):
        raise InputError("band statistics hold a std <= 0", path)


def default_stats(table: str) -> dict[str, Any]:
    """The built-in approximate statistics table ``table`` in the stats-dict layout."""
    t = DEFAULT_BAND_STATS[table]
    return {"bands": list(t), "mean": [v[0] for v in t.values()], "std": [v[1] for v in t.values()]}


def normalization_for(
    names: Sequence[str],
    *,
    stats: dict[str, Any] | None = None,
    table: str | None = None,
    path=None,
) -> dict[str, Any]:
    """The ``meta['normalization']`` record (per-band mean/std by name) for bands ``names``.

    Uses ``stats`` when given, else the built-in table ``table``. A band missing from either raises
    :class:`InputError` that says how to supply statistics.
    """
    if stats is not None:
        _validate(stats, path)
        lookup = dict(zip(stats["bands"], zip(stats["mean"], stats["std"])))
        source = "stats"
    elif table is not None:
        lookup = dict(DEFAULT_BAND_STATS[table])
        source = f"default:{table}"
    else:
        lookup, source = {}, "none"
    missing = [n for n in names if n not in lookup]
    if missing:
        where = "the given statistics" if stats is not None else (
            f"the default {table!r} statistics" if table else "any default statistics table"
        )
        raise InputError(
            f"no statistics for band(s) {', '.join(missing)} in {where}; compute them with "
            "compute_band_stats() and pass stats=",
            path,
        )
    return {
        "kind": "meanstd",
        "bands": list(names),
        "mean": [float(lookup[n][0]) for n in names],
        "std": [float(lookup[n][1]) for n in names],
        "source": source,
        "units": "reflectance",
    }
