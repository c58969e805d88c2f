"""Band tables (data, not code) and band-name resolution for multispectral files.

Three tables:

* :data:`SENSOR_BANDS` -- every band UniMAE knows, per sensor family: centre wavelength (µm), ground
  sampling distance (m) and the STAC ``eo`` common name.
* :data:`BAND_PRESETS` -- named band *orders* as files usually hold them, with the digital-number (DN)
  to reflectance rule for integer files and the name of the default statistics table.
* :data:`DEFAULT_BAND_STATS` -- approximate per-band reflectance mean/std used by ``preprocess`` when no
  dataset statistics are given (see ``compute_band_stats`` for your own).

Preset choices (documented quirks)
----------------------------------
``sentinel2_l1c``  13 bands B01..B12 with B8A after B08 (ESA order), top-of-atmosphere reflectance,
                   ``DN / 10000``. Processing baseline 04.00 (products since 25 Jan 2022) adds a
                   radiometric offset of +1000 DN: read such files with ``offset=-0.1`` (or keep the
                   ``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET`` band tags, which are honoured).
``sentinel2_l2a``  the L1C set without the cirrus band B10 (12 bands), bottom-of-atmosphere, ``DN / 10000``.
``eurosat``        EuroSAT-MS order: B01..B08, B09, B10, B11, B12, **B8A last** (13 bands, L1C). A 13-band
                   file with no band descriptions is read as ``sentinel2_l1c``; pass ``bands="eurosat"``
                   for EuroSAT tiles.
``landsat8/9``     the seven 30 m OLI reflective bands of a Collection 2 Level-2 surface-reflectance
                   product, ``SR_B1``..``SR_B7`` (coastal, blue, green, red, NIR, SWIR1, SWIR2). The
                   panchromatic B8, cirrus B9 and thermal B10/B11 are not part of SR products and are not
                   in the preset. Integer files are scaled with the C2 L2 rule ``DN * 2.75e-5 - 0.2``.
``rgb``            R, G, B; integer files are divided by the dtype maximum (255 for 8-bit).

Any integer file stored as ``uint8`` is divided by 255 whatever its preset (8-bit quick-looks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from unimae.core.errors import InputError, look_up
from unimae.domains.base import channel_list

__all__ = [
    "SENSOR_BANDS",
    "BAND_PRESETS",
    "DEFAULT_BAND_STATS",
    "preset_names",
    "preset_channels",
    "band_wavelength",
    "match_band",
    "canonical_band",
    "BandSet",
    "resolve_bands",
]

# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------

#: sensor -> band name -> (centre wavelength µm, ground sampling distance m, STAC common name)
SENSOR_BANDS: dict[str, dict[str, tuple[float, float | None, str]]] = {
    "sentinel2": {
        "B01": (0.443, 60.0, "coastal"),
        "B02": (0.490, 10.0, "blue"),
        "B03": (0.560, 10.0, "green"),
        "B04": (0.665, 10.0, "red"),
        "B05": (0.705, 20.0, "rededge1"),
        "B06": (0.740, 20.0, "rededge2"),
        "B07": (0.783, 20.0, "rededge3"),
        "B08": (0.842, 10.0, "nir"),
        "B8A": (0.865, 20.0, "nir08"),
        "B09": (0.945, 60.0, "nir09"),
        "B10": (1.375, 60.0, "cirrus"),
        "B11": (1.610, 20.0, "swir16"),
        "B12": (2.190, 20.0, "swir22"),
    },
    "landsat": {
        "SR_B1": (0.443, 30.0, "coastal"),
        "SR_B2": (0.482, 30.0, "blue"),
        "SR_B3": (0.562, 30.0, "green"),
        "SR_B4": (0.655, 30.0, "red"),
        "SR_B5": (0.865, 30.0, "nir08"),
        "SR_B6": (1.609, 30.0, "swir16"),
        "SR_B7": (2.201, 30.0, "swir22"),
    },
    "rgb": {
        "R": (0.665, None, "red"),
        "G": (0.560, None, "green"),
        "B": (0.490, None, "blue"),
    },
}

_S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

#: preset name -> band order and reading rules (see the module docstring)
BAND_PRESETS: dict[str, dict[str, Any]] = {
    "sentinel2_l1c": {
        "sensor": "sentinel2",
        "bands": _S2_L1C,
        "modality": "sentinel2_l1c",
        "dn_scale": 1e-4,
        "dn_offset": 0.0,
        "stats": "sentinel2_l1c",
        "rgb_bands": ("B04", "B03", "B02"),
    },
    "sentinel2_l2a": {
        "sensor": "sentinel2",
        "bands": tuple(b for b in _S2_L1C if b != "B10"),
        "modality": "sentinel2_l2a",
        "dn_scale": 1e-4,
        "dn_offset": 0.0,
        "stats": "sentinel2_l2a",
        "rgb_bands": ("B04", "B03", "B02"),
    },
    "eurosat": {
        "sensor": "sentinel2",
        "bands": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"),
        "modality": "sentinel2_l1c",
        "dn_scale": 1e-4,
        "dn_offset": 0.0,
        "stats": "sentinel2_l1c",
        "rgb_bands": ("B04", "B03", "B02"),
    },
    "landsat8": {
        "sensor": "landsat",
        "bands": ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"),
        "modality": "landsat8",
        "dn_scale": 2.75e-5,
        "dn_offset": -0.2,
        "stats": "landsat_sr",
        "rgb_bands": ("SR_B4", "SR_B3", "SR_B2"),
    },
    "landsat9": {
        "sensor": "landsat",
        "bands": ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"),
        "modality": "landsat9",
        "dn_scale": 2.75e-5,
        "dn_offset": -0.2,
        "stats": "landsat_sr",
        "rgb_bands": ("SR_B4", "SR_B3", "SR_B2"),
    },
    "rgb": {
        "sensor": "rgb",
        "bands": ("R", "G", "B"),
        "modality": "rgb",
        "dn_scale": None,  # integer data: divide by the dtype maximum
        "dn_offset": 0.0,
        "stats": "rgb",
        "rgb_bands": ("R", "G", "B"),
    },
}

#: band count -> preset used for files whose bands are not described
COUNT_PRESETS: dict[int, str] = {13: "sentinel2_l1c", 12: "sentinel2_l2a", 7: "landsat8", 3: "rgb"}

#: stats table -> band -> (mean, std) of reflectance. APPROXIMATE defaults for cloud-free land scenes:
#: ``sentinel2_l1c`` from the published EuroSAT-MS (L1C, Europe) band statistics, rounded; B10's std is
#: widened from ~0.0005 to 0.005 so that cirrus does not explode to z > 100. ``sentinel2_l2a`` and
#: ``landsat_sr`` are typical surface-reflectance values; ``rgb`` is the ImageNet mean/std (R, G, B).
#: Compute your own with :func:`compute_band_stats` for anything else.
DEFAULT_BAND_STATS: dict[str, dict[str, tuple[float, float]]] = {
    "sentinel2_l1c": {
        "B01": (0.1354, 0.0246),
        "B02": (0.1118, 0.0333),
        "B03": (0.1043, 0.0395),
        "B04": (0.0948, 0.0594),
        "B05": (0.1199, 0.0566),
        "B06": (0.2000, 0.0861),
        "B07": (0.2369, 0.1087),
        "B08": (0.2297, 0.1118),
        "B8A": (0.2594, 0.1232),
        "B09": (0.0732, 0.0405),
        "B10": (0.0012, 0.0050),
        "B11": (0.1819, 0.1003),
        "B12": (0.1119, 0.0761),
    },
    "sentinel2_l2a": {
        "B01": (0.075, 0.055),
        "B02": (0.080, 0.060),
        "B03": (0.100, 0.065),
        "B04": (0.100, 0.080),
        "B05": (0.135, 0.080),
        "B06": (0.210, 0.095),
        "B07": (0.240, 0.110),
        "B08": (0.255, 0.115),
        "B8A": (0.265, 0.120),
        "B09": (0.270, 0.120),
        "B11": (0.210, 0.110),
        "B12": (0.150, 0.095),
    },
    "landsat_sr": {
        "SR_B1": (0.050, 0.050),
        "SR_B2": (0.065, 0.055),
        "SR_B3": (0.095, 0.060),
        "SR_B4": (0.100, 0.075),
        "SR_B5": (0.250, 0.110),
        "SR_B6": (0.210, 0.110),
        "SR_B7": (0.150, 0.095),
    },
    "rgb": {
        "R": (0.485, 0.229),
        "G": (0.456, 0.224),
        "B": (0.406, 0.225),
    },
}

# --------------------------------------------------------------------------------------------------
# look-ups
# --------------------------------------------------------------------------------------------------


def preset_names() -> list[str]:
    return list(BAND_PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    """The preset entry for ``name``; an unknown name lists the known ones (InputError)."""
    return BAND_PRESETS[look_up(str(name), BAND_PRESETS, what="band preset")]


def preset_channels(name: str) -> list[dict]:
    """``meta['channels']`` for a preset: ``[{"name": "B01", "wavelength": 0.443}, ...]``."""
    p = get_preset(name)
    table = SENSOR_BANDS[p["sensor"]]
    return channel_list(p["bands"], [table[b][0] for b in p["bands"]])


def band_wavelength(name: str) -> float | None:
    """Centre wavelength (µm) of a canonical band name from any sensor, or None."""
    for table in SENSOR_BANDS.values():
        if name in table:
            return table[name][0]
    return None


def _norm(label: str) -> str:
    return re.sub(r"[\s_\-.]+", "", str(label).strip().upper())


def _build_aliases() -> dict[str, dict[str, str]]:
    """sensor -> normalised alias -> canonical band name."""
    out: dict[str, dict[str, str]] = {}
    for sensor, table in SENSOR_BANDS.items():
        al: dict[str, str] = {}
        for name, (_, _, common) in table.items():
            al[_norm(name)] = name
            al[_norm(common)] = name
            m = re.fullmatch(r"(?:SR_)?B0?(\d+)(A?)", name)
            if m and sensor != "rgb":
                num, a = m.group(1), m.group(2)
                forms = [f"B{num}{a}", f"B{int(num):02d}{a}"]
                if sensor == "landsat":  # "Band 4" is a Landsat band number; for Sentinel-2 it is ambiguous
                    forms += [f"BAND{num}", f"BAND{int(num):02d}"]  # with the index in a 12/13-band file
                for form in forms:
                    al[_norm(form)] = name
                    for prefix in (("SR", "TOA", "S2") if sensor == "sentinel2" else ("SR", "TOA", "L8", "L9")):
                        al[_norm(prefix + form)] = name
        if sensor == "sentinel2":
            al.update({"REDEDGE": "B05", "NIRNARROW": "B8A", "NARROWNIR": "B8A", "WATERVAPOR": "B09",
                       "WATERVAPOUR": "B09", "SWIR1": "B11", "SWIR2": "B12", "AEROSOL": "B01",
                       "COASTALAEROSOL": "B01", "REDEDGE4": "B8A"})
        elif sensor == "landsat":
            al.update({"NIR": "SR_B5", "SWIR1": "SR_B6", "SWIR2": "SR_B7", "COASTALAEROSOL": "SR_B1",
                       "AEROSOL": "SR_B1"})
        else:
            al.update({"RED": "R", "GREEN": "G", "BLUE": "B"})
        out[sensor] = al
    return out


_ALIASES = _build_aliases()


def match_band(label: str | None, sensor: str) -> str | None:
    """The canonical name of ``label`` in ``sensor``'s table (``"B4"`` -> ``"B04"``), or None."""
    if label is None or not str(label).strip():
        return None
    return _ALIASES[sensor].get(_norm(label))


def canonical_band(label: str) -> tuple[str, str] | None:
    """``(sensor, canonical name)`` for a band label from any sensor (Sentinel-2 first), or None."""
    for sensor in SENSOR_BANDS:
        name = match_band(label, sensor)
        if name is not None:
            return sensor, name
    return None


# --------------------------------------------------------------------------------------------------
# resolution of a file's bands
# --------------------------------------------------------------------------------------------------


class BandSet:
    """The resolved bands of a file.

    Attributes: ``names`` (canonical or given), ``wavelengths`` (µm or None), ``sensor``
    (``"sentinel2"``/``"landsat"``/``"rgb"``/None), ``preset`` (preset name or None when the bands are a
    custom set), ``modality``, ``stats`` (default-statistics table name or None) and ``source``
    (``"user"``, ``"descriptions"``, ``"wavelength_tags"`` or ``"band_count"``).
    """

    def __init__(self, names, wavelengths, *, sensor, preset, modality, stats, source) -> None:
        self.names = [str(n) for n in names]
        self.wavelengths = [None if w is None else float(w) for w in wavelengths]
        self.sensor = sensor
        self.preset = preset
        self.modality = modality
        self.stats = stats
        self.source = source

    @property
    def channels(self) -> list[dict]:
        return channel_list(self.names, self.wavelengths)

    def dn_rule(self, dtype: str) -> tuple[float | None, float]:
        """``(scale, offset)`` turning integer DN of ``dtype`` into reflectance, or ``(None, 0)`` for none."""
        import numpy as np

        dt = np.dtype(dtype)
        if not np.issubdtype(dt, np.integer):
            return None, 0.0
        if dt == np.uint8:
            return 1.0 / 255.0, 0.0
        rule = BAND_PRESETS[_family_preset(self)] if self.sensor is not None else None
        if rule is None:
            return None, 0.0
        if rule["dn_scale"] is None:
            return 1.0 / float(np.iinfo(dt).max), 0.0
        return float(rule["dn_scale"]), float(rule["dn_offset"])

    def __repr__(self) -> str:
        return f"BandSet({self.names}, preset={self.preset!r}, source={self.source!r})"


def _family_preset(bs: BandSet) -> str:
    if bs.preset is not None:
        return bs.preset
    return {"sentinel2": bs.modality or "sentinel2_l1c", "landsat": bs.modality or "landsat8", "rgb": "rgb"}[bs.sensor]


def _from_preset(name: str, count: int, source: str, path) -> BandSet:
    try:
        p = get_preset(name)
    except InputError as err:  # add the file name to the message
        raise InputError(str(err), path) from None
    if len(p["bands"]) != count:
        raise InputError(
            f"the file has {count} bands but band preset {name!r} has {len(p['bands'])}; pass bands= a preset "
            f"with {count} bands or a list of {count} band names",
            path,
        )
    table = SENSOR_BANDS[p["sensor"]]
    return BandSet(
        p["bands"], [table[b][0] for b in p["bands"]], sensor=p["sensor"], preset=name,
        modality=p["modality"], stats=p["stats"], source=source,
    )


def _preset_for(sensor: str, names: Sequence[str], hint: str) -> tuple[str | None, str]:
    """``(preset name or None, modality)`` for a described band set of ``sensor``."""
    exact = [k for k, p in BAND_PRESETS.items() if p["sensor"] == sensor and tuple(p["bands"]) == tuple(names)]
    hint_u = hint.upper()
    if sensor == "landsat":
        modality = "landsat9" if ("LANDSAT_9" in hint_u or "LC09" in hint_u or "LANDSAT9" in hint_u) else "landsat8"
        return (modality if exact else None), modality
    if sensor == "rgb":
        return ("rgb" if exact else None), "rgb"
    if "L2A" in hint_u or "BOA" in hint_u:
        modality = "sentinel2_l2a"
    elif "L1C" in hint_u or "TOA" in hint_u or "B10" in names:
        modality = "sentinel2_l1c"
    elif len(names) == 12:
        modality = "sentinel2_l2a"
    else:
        modality = "sentinel2_l1c"
    preset = None
    if exact:
        preset = modality if modality in exact else exact[0]
    return preset, modality


def resolve_bands(
    count: int,
    *,
    labels: Sequence[Sequence[str]] | None = None,
    wavelengths: Sequence[float | None] | None = None,
    bands: str | Sequence[str] | None = None,
    hint: str = "",
    path=None,
) -> BandSet:
    """Work out the names and wavelengths of a file's ``count`` bands.

    Order of precedence:

    1. ``bands`` (a preset name, or a list of ``count`` band names such as ``["B04", "B03", "B02"]``);
    2. ``labels`` (per band, candidate names from the band description and tags) when every band
       matches one sensor's table (``"B4"``, ``"B04"``, ``"SR_B4"``, ``"red"``, ``"nir08"`` ...);
    3. ``wavelengths`` (per band, from ``wavelength`` tags) when every band has one;
    4. the preset for ``count`` (13 -> sentinel2_l1c, 12 -> sentinel2_l2a, 7 -> landsat8, 3 -> rgb).

    ``hint`` (file name and tag text) picks Landsat 8 vs 9 and L1C vs L2A for described bands.
    A count that matches no preset, or a preset of another size, raises :class:`InputError`.
    """
    if bands is not None:
        if isinstance(bands, str):
            return _from_preset(bands, count, "user", path)
        names_in = [str(b) for b in bands]
        if len(names_in) != count:
            raise InputError(f"the file has {count} bands but bands= lists {len(names_in)} names", path)
        names, wls, sensors = [], [], set()
        for b in names_in:
            hit = canonical_band(b)
            if hit is None:
                known = sorted({n for t in SENSOR_BANDS.values() for n in t})
                try:
                    look_up(b, known, what="band name")
                except InputError as err:  # add the file name to the message
                    raise InputError(str(err), path) from None
            sensors.add(hit[0])
            names.append(hit[1])
            wls.append(band_wavelength(hit[1]))
        _no_duplicates(names, path)
        sensor = sensors.pop() if len(sensors) == 1 else None
        preset, modality = _preset_for(sensor, names, hint) if sensor else (None, None)
        stats = _stats_for(sensor, modality)
        return BandSet(names, wls, sensor=sensor, preset=preset, modality=modality, stats=stats, source="user")

    order = list(SENSOR_BANDS)
    default = COUNT_PRESETS.get(count)
    if default is not None:
        order.remove(BAND_PRESETS[default]["sensor"])
        order.insert(0, BAND_PRESETS[default]["sensor"])
    if labels is not None and any(any(str(c).strip() for c in cands) for cands in labels):
        flat = " ".join(str(c).upper() for cands in labels for c in cands)
        if "SR_B" in flat or any(k in hint.upper() for k in ("LANDSAT", "LC08", "LC09", "LC8", "LC9")):
            order.remove("landsat")
            order.insert(0, "landsat")
        for sensor in order:
            names = []
            for cands in labels:
                hit = next((n for n in (match_band(c, sensor) for c in cands) if n is not None), None)
                if hit is None:
                    break
                names.append(hit)
            else:
                _no_duplicates(names, path)
                preset, modality = _preset_for(sensor, names, hint)
                table = SENSOR_BANDS[sensor]
                return BandSet(
                    names, [table[n][0] for n in names], sensor=sensor, preset=preset, modality=modality,
                    stats=_stats_for(sensor, modality), source="descriptions",
                )
    if wavelengths is not None and len(wavelengths) == count and all(w is not None for w in wavelengths):
        names = []
        for i, cands in enumerate(labels or [[] for _ in range(count)]):
            first = next((str(c).strip() for c in cands if str(c).strip()), None)
            names.append(first or f"band{i + 1}")
        _no_duplicates(names, path)
        return BandSet(names, wavelengths, sensor=None, preset=None, modality=None, stats=None,
                       source="wavelength_tags")
    if default is None:
        sizes = ", ".join(f"{k} ({len(p['bands'])})" for k, p in BAND_PRESETS.items())
        raise InputError(
            f"the file has {count} bands with no recognised band names and no preset has {count} bands "
            f"(presets: {sizes}); pass bands= a preset name or a list of band names",
            path,
        )
    return _from_preset(default, count, "band_count", path)


def _stats_for(sensor: str | None, modality: str | None) -> str | None:
    if sensor is None:
        return None
    if sensor == "landsat":
        return "landsat_sr"
    if sensor == "rgb":
        return "rgb"
    return "sentinel2_l2a" if modality == "sentinel2_l2a" else "sentinel2_l1c"


def _no_duplicates(names: Sequence[str], path) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(f"band {n!r} appears twice in the file's band names {list(names)}", path)
        seen.add(n)
