"""Display helpers for the Gradio app: composites, CT slices, overlays, legends. Pure numpy, no Gradio.

Nothing here predicts anything: a :class:`~unimae.apps.predict.Prediction` from the predict layer is
turned into pictures. :func:`prepare_view` does the one-off work after a prediction (reorienting a
volume and its results to RAS for display, building the composite of a scene, shrinking very large
pictures for the screen); :func:`render` draws one frame for the current display settings (opacity,
plane, slice, CT window, composite) and is cheap enough to run on every slider move.

What is domain-specific comes from the prediction's domain plugin: how it is drawn (``display_kind``:
a picture, a scene with band composites, or a volume), the volume's axis order for the slice viewer
(``display_volume``: RAS for CT, so axial and coronal views show the patient's right on the viewer's left,
superior / anterior at the top; sagittal views show anterior on the left) and voxel size
(``display_spacing``: every view keeps the physical aspect ratio), and the scene composites (``composite``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.domains import get_domain

__all__ = [
    "PLANES",
    "ResultView",
    "prepare_view",
    "with_threshold",
    "render",
    "slice_count",
    "middle_slice",
    "start_slice",
    "plane_slice",
    "window_grey",
    "class_colours",
    "hidden_classes",
    "blend_labels",
    "blend_heat",
    "heat_vmax",
    "threshold_top",
    "position_to_threshold",
    "threshold_to_position",
    "legend_html",
    "anomaly_html",
    "heat_colours",
]

PLANES = ("axial", "coronal", "sagittal")
DISPLAY_MAX_SIDE = 1024  # pictures larger than this are shrunk once for the screen (downloads keep full size)
DISPLAY_MIN_SIDE = 448  # small pictures are enlarged by whole factors (nearest) so overlays stay crisp
MASK_EDGE = np.array([0, 255, 255], dtype=np.float32)  # the thresholded anomaly mask outline: cyan

# the predict layer's overlay palette order (class 1 red, 2 green, ...), used for classes without a
# domain colour; index 0 is only drawn when it is a real class (land cover "water")
_PALETTE = np.array(
    [
        (128, 128, 128), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
        (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    ],
    dtype=np.uint8,
)  # fmt: skip
_NAMED_COLOURS = {  # semantic colours where a class name has an obvious one
    "vessel": (0, 230, 255),
    "lesion": (255, 215, 0),
    "water": (31, 95, 191),
    "forest": (27, 110, 32),
    "crop": (201, 217, 59),
    "bare_soil": (160, 112, 60),
    "urban": (214, 39, 40),
    "liver": (170, 90, 60),
    "spleen": (220, 60, 140),
    "kidney_left": (250, 200, 40),
    "kidney_right": (250, 140, 20),
    "lung_left": (60, 150, 255),
    "lung_right": (60, 220, 190),
}
_BACKGROUND_NAMES = ("background", "normal", "none", "bg")


# ------------------------------------------------------------------------------------------------
# colours
# ------------------------------------------------------------------------------------------------
def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """``(K, 3)`` uint8 display colours: a semantic colour for known names, else a fixed palette."""
    out = np.zeros((len(class_names), 3), dtype=np.uint8)
    for i, name in enumerate(class_names):
        named = _NAMED_COLOURS.get(str(name).lower())
        out[i] = named if named is not None else _PALETTE[i % len(_PALETTE)]
    return out


def hidden_classes(class_names: Sequence[str]) -> tuple[int, ...]:
    """Class indices not drawn in overlays: index 0 when it is a background / normal class."""
    return (0,) if class_names and str(class_names[0]).lower() in _BACKGROUND_NAMES else ()


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def heat_colours(values: np.ndarray) -> np.ndarray:
    """The ``inferno`` colour map of values in ``[0, 1]`` as float32 RGB in ``[0, 255]``."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32) * 255.0


# ------------------------------------------------------------------------------------------------
# blending
# ------------------------------------------------------------------------------------------------
def _check_opacity(opacity: float) -> float:
    value = float(opacity)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"opacity must be between 0 and 1, got {opacity}")
    return value


def blend_labels(
    base: np.ndarray,
    labels: np.ndarray,
    colours: np.ndarray,
    opacity: float,
    hidden: Sequence[int] = (0,),
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a label map onto an ``(H, W, 3)`` uint8 picture: each class in its colour at ``opacity``.

    Classes in ``hidden`` (the background) and pixels outside ``valid`` are left as they are; labels
    beyond the colour table are drawn in the last colour.
    """
    opacity = _check_opacity(opacity)
    idx = np.clip(np.asarray(labels).astype(np.int64), 0, len(colours) - 1)
    draw = np.ones(idx.shape, dtype=bool)
    for h in hidden:
        draw &= idx != int(h)
    if valid is not None:
        draw &= np.asarray(valid, dtype=bool)
    out = base[..., :3].astype(np.float32)
    wgt = (draw.astype(np.float32) * opacity)[..., None]
    out = out * (1.0 - wgt) + colours.astype(np.float32)[idx] * wgt
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def heat_vmax(heat: np.ndarray, threshold: float | None) -> float:
    """The heat value shown at full colour: the map's maximum, and at least 1.5 x the threshold.

    A normal image (all errors well under the threshold) therefore stays dim instead of being
    stretched to full colour.
    """
    top = float(np.max(heat)) if heat.size else 0.0
    if threshold is not None:
        top = max(top, 1.5 * float(threshold))
    return top if top > 0 else 1.0


def threshold_top(heat_max: float) -> float:
    """The top of the threshold scale: a round number just above the hottest pixel (it flags nothing)."""
    hot = max(float(heat_max), 0.0)
    if hot <= 0:
        return 1.0
    top = float(np.format_float_positional(hot * 1.02, precision=3, unique=False, fractional=False, trim="-"))
    return max(top, hot * 1.01)


def position_to_threshold(position: float, calibrated: float | None, top: float) -> float:
    """A pixel threshold from a position in ``[0, 1]`` on the page's threshold scale.

    The calibrated threshold sits in the middle (0.5); below it the scale is linear down to 0, above it geometric
    up to ``top`` (just above the hottest pixel), so both "a bit stricter than calibrated" and "only the very hottest
    spot" are in reach even when the hottest pixel is a hundred times the calibrated value. Without a calibrated
    threshold (or one outside ``(0, top)``) the scale is linear from 0 to ``top``.
    """
    p = float(np.clip(float(position), 0.0, 1.0))
    top = float(top)
    if calibrated is None or not 0.0 < float(calibrated) < top:
        return p * top
    cal = float(calibrated)
    if p <= 0.5:
        return cal * p / 0.5
    return cal * (top / cal) ** ((p - 0.5) / 0.5)


def threshold_to_position(threshold: float, calibrated: float | None, top: float) -> float:
    """The inverse of :func:`position_to_threshold` (clamped to ``[0, 1]``)."""
    t, top = max(float(threshold), 0.0), float(top)
    if calibrated is None or not 0.0 < float(calibrated) < top:
        return float(np.clip(t / top if top > 0 else 0.0, 0.0, 1.0))
    cal = float(calibrated)
    if t <= cal:
        return 0.5 * t / cal
    return float(np.clip(0.5 + 0.5 * np.log(t / cal) / np.log(top / cal), 0.0, 1.0))


def blend_heat(
    base: np.ndarray,
    heat: np.ndarray,
    opacity: float,
    vmax: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a heat map (``inferno``; more opaque where hotter) and a mask outline onto ``(H, W, 3)`` uint8."""
    opacity = _check_opacity(opacity)
    norm = np.clip(np.asarray(heat, dtype=np.float32) / max(float(vmax), 1e-12), 0.0, 1.0)
    wgt = (opacity * np.sqrt(norm))[..., None]
    out = base[..., :3].astype(np.float32) * (1.0 - wgt) + heat_colours(norm) * wgt
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        inner = m.copy()
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        out[m & ~inner] = MASK_EDGE
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def window_grey(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU through a window (``center``, ``width``) as ``(..., 3)`` uint8 grey."""
    width = float(width)
    if not np.isfinite(width) or width <= 0:
        raise InputError(f"window width must be positive, got {width}")
    unit = np.clip((np.asarray(hu, dtype=np.float32) - (float(center) - width / 2.0)) / width, 0.0, 1.0)
    grey = (unit * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


# ------------------------------------------------------------------------------------------------
# volumes
# ------------------------------------------------------------------------------------------------
_PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a RAS ``(R, A, S[, ...])`` volume in display order (row 0 at the top).

    axial (index along S): rows anterior -> posterior, columns patient right -> left;
    coronal (along A): rows superior -> inferior, columns right -> left;
    sagittal (along R): rows superior -> inferior, columns anterior -> posterior.
    Trailing axes (e.g. RGB) are kept.
    """
    plane = look_up(plane, PLANES, what="plane")
    n = volume.shape[_PLANE_AXIS[plane]]
    i = int(np.clip(int(index), 0, n - 1))
    if plane == "axial":
        sl = volume[::-1, :, i]
    elif plane == "coronal":
        sl = volume[::-1, i, :]
    else:
        sl = volume[i, ::-1, :]
    return np.ascontiguousarray(np.swapaxes(sl, 0, 1)[::-1])


def _plane_aspect(plane: str, spacing: Sequence[float]) -> tuple[float, float]:
    """(row spacing, column spacing) of a displayed slice."""
    sr, sa, ss = spacing
    return {"axial": (sa, sr), "coronal": (ss, sr), "sagittal": (ss, sa)}[plane]


# ------------------------------------------------------------------------------------------------
# the view of one prediction
# ------------------------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass
class ResultView:
    """Everything needed to draw a prediction again with other display settings.

    Attributes:
        pred: the prediction (source grid) from the predict layer.
        kind: ``"image"`` (photo / radiograph), ``"scene"`` (band composites) or ``"volume"`` (slices).
        plugin: the prediction's domain plugin (how its data are drawn).
        base: 2D: the picture ``(H, W, 3)`` uint8 (shrunk for the screen when very large).
        composites: scenes: ``{composite: (H, W, 3) uint8}`` made on demand; ``None`` when unavailable.
        valid: the valid region on the displayed grid (scenes: nodata shown transparent).
        labels, heat, mask: the results on the displayed grid (RAS for volumes).
        hu: volumes: HU in RAS order; ``spacing``: its voxel size along R, A, S.
        colours, hidden: label colours and the classes not drawn.
        vmax: heat value at full colour (the colour bar's maximum: fixed for the view, whatever the threshold).
        calibrated: anomaly models: the calibrated pixel threshold (the middle of the page's threshold scale).
        extra: report entries the app adds (e.g. ``trained_on``).
    """

    pred: Any
    kind: str
    plugin: Any = None
    base: np.ndarray | None = None
    composites: dict[str, np.ndarray | None] = field(default_factory=dict)
    source_image: np.ndarray | None = None
    channels: list[dict] = field(default_factory=list)
    valid: np.ndarray | None = None
    labels: np.ndarray | None = None
    heat: np.ndarray | None = None
    mask: np.ndarray | None = None
    hu: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    colours: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    hidden: tuple[int, ...] = ()
    vmax: float = 1.0
    step: int = 1  # display decimation of 2D pictures
    calibrated: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """The displayed grid: ``(H, W)`` for pictures, ``(R, A, S)`` for volumes."""
        if self.kind == "volume":
            return tuple(self.hu.shape)  # type: ignore[union-attr]
        return tuple(self.valid.shape)  # type: ignore[union-attr]


def _shrink(array: np.ndarray, step: int) -> np.ndarray:
    return array if step == 1 else np.ascontiguousarray(array[::step, ::step])


def _shrink_max(heat: np.ndarray, step: int) -> np.ndarray:
    """Decimate a heat map keeping each block's maximum (small hot spots stay visible)."""
    if step == 1:
        return heat
    h, w = heat.shape
    hh, ww = -(-h // step) * step, -(-w // step) * step
    padded = np.zeros((hh, ww), dtype=np.float32)
    padded[:h, :w] = heat
    return padded.reshape(hh // step, step, ww // step, step).max(axis=(1, 3))


def prepare_view(pred: Any, plugin: Any = None) -> ResultView:
    """The display state of a prediction (see :class:`ResultView`); the source must be kept in ``pred``.

    ``plugin``: the prediction's domain plugin (default: the registered ``pred.domain``)."""
    from unimae.apps.predict_render import display_image

    if pred.source is None:
        raise InputError("this prediction kept no source image to display")
    plugin = plugin if plugin is not None else get_domain(pred.domain)
    names = list(pred.class_names)
    colours = class_colours(names)
    hidden = hidden_classes(names) if pred.label_map is not None else ()  # segmentation's legend
    meta = pred.meta
    src = pred.source
    vmax = heat_vmax(pred.heatmap, pred.threshold) if pred.heatmap is not None else 1.0
    if src.image.ndim == 4:  # a volume on its source grid, in the viewer's axis order
        def show(array: Any) -> np.ndarray:
            return plugin.display_volume(array, meta)

        valid = show(_np(meta["valid"]).astype(bool)) if meta.get("valid") is not None else None
        view = ResultView(pred, "volume", plugin, hu=show(_np(src.image[0]).astype(np.float32)), valid=valid,
                          spacing=plugin.display_spacing(meta), colours=colours, hidden=hidden, vmax=vmax)  # fmt: skip
        if pred.label_map is not None:
            view.labels = show(pred.label_map)
        if pred.heatmap is not None:
            view.heat = show(pred.heatmap.astype(np.float32))
        if pred.anomaly_mask is not None:
            view.mask = show(pred.anomaly_mask.astype(bool))
        return view
    h, w = src.spatial_shape
    step = max(1, int(np.ceil(max(h, w) / DISPLAY_MAX_SIDE)))
    valid = _shrink(_np(src.valid).astype(bool), step)
    scene = meta.get("crs") is not None or plugin.display_kind == "scene"
    view = ResultView(pred, "scene" if scene else "image", plugin, valid=valid, colours=colours, hidden=hidden,
                      vmax=vmax, step=step)  # fmt: skip
    if scene:
        view.source_image = _np(src.image).astype(np.float32)[:, ::step, ::step]
        view.channels = [dict(c) for c in meta.get("channels") or []]
    else:
        view.base = _shrink(display_image(src, plugin), step)
    if pred.label_map is not None:
        view.labels = _shrink(pred.label_map, step)
    if pred.heatmap is not None:
        view.heat = _shrink_max(pred.heatmap.astype(np.float32), step)
    if pred.anomaly_mask is not None:
        view.mask = _shrink_max(pred.anomaly_mask.astype(np.float32), step) > 0.5
    return view


def with_threshold(view: ResultView, threshold: float | None) -> ResultView:
    """The view with a new anomaly threshold: the predict layer re-thresholds the kept heat map (no model run).
    The colour scale (``vmax``) stays as it was: only the outline of the flagged area moves."""
    pred = view.pred.with_threshold(threshold)
    out = dc_replace(view, pred=pred)
    if pred.anomaly_mask is None:
        out.mask = None
    elif view.kind == "volume":
        out.mask = view.plugin.display_volume(pred.anomaly_mask.astype(bool), pred.meta)
    else:
        out.mask = _shrink_max(pred.anomaly_mask.astype(np.float32), view.step) > 0.5
    return out


def slice_count(view: ResultView, plane: str) -> int:
    """Number of slices of a volume view along ``plane`` (1 for 2D views)."""
    if view.kind != "volume":
        return 1
    return int(view.hu.shape[_PLANE_AXIS[look_up(plane, PLANES, what="plane")]])  # type: ignore[union-attr]


def middle_slice(view: ResultView, plane: str) -> int:
    return slice_count(view, plane) // 2


def start_slice(view: ResultView, plane: str) -> int:
    """The slice a volume opens at: through the hottest voxel of an anomaly map (where a reader looks first),
    else the middle one."""
    if view.kind == "volume" and view.heat is not None and view.heat.size and float(view.heat.max()) > 0:
        hottest = np.unravel_index(int(np.argmax(view.heat)), view.heat.shape)
        return int(hottest[_PLANE_AXIS[look_up(plane, PLANES, what="plane")]])
    return middle_slice(view, plane)


def _composite(view: ResultView, composite: str) -> np.ndarray:
    """The scene's band composite (the plugin's ``composite``), made once per composite and kept in the view."""
    labels = view.plugin.composites
    look_up(composite, labels, what="composite")
    if composite not in view.composites:
        try:
            view.composites[composite] = view.plugin.composite(view.source_image, view.valid, view.channels, composite)
        except InputError:
            view.composites[composite] = None  # e.g. an RGB scene has no near-infrared band
    rgb = view.composites[composite]
    if rgb is None:
        raise InputError(f"this scene has no bands for a {labels[composite]} composite")
    return rgb


def _enlarge(img: np.ndarray, aspect: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Nearest-neighbour resize to the physical aspect and at least :data:`DISPLAY_MIN_SIDE` pixels."""
    from PIL import Image

    h, w = img.shape[:2]
    ph, pw = h * float(aspect[0]), w * float(aspect[1])
    scale = max(1.0, DISPLAY_MIN_SIDE / max(min(ph, pw), 1e-6))
    scale = min(scale, DISPLAY_MAX_SIDE / max(ph, pw, 1e-6)) if max(ph, pw) * scale > DISPLAY_MAX_SIDE else scale
    th, tw = max(1, int(round(ph * scale))), max(1, int(round(pw * scale)))
    if (th, tw) == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((tw, th), Image.NEAREST))


def render(
    view: ResultView,
    *,
    opacity: float = 0.5,
    plane: str = "axial",
    index: int | None = None,
    window: tuple[float, float] = (40.0, 400.0),
    composite: str = "natural",
    show_result: bool = True,
) -> np.ndarray:
    """One frame: ``(H, W, 3)`` uint8, or ``(H, W, 4)`` for scenes with nodata (transparent there).

    Args:
        view: from :func:`prepare_view`.
        opacity: overlay opacity in ``[0, 1]``.
        plane, index: volumes: the view and slice (default: the middle slice; clamped to the volume).
        window: volumes: ``(center, width)`` in HU.
        composite: scenes: one of the plugin's ``composites`` (``"natural"``, ``"false_color"`` ...).
        show_result: False draws the input alone.
    """
    pred = view.pred
    aspect = (1.0, 1.0)
    if view.kind == "volume":
        plane = look_up(plane, PLANES, what="plane")
        index = start_slice(view, plane) if index is None else int(index)
        base = window_grey(plane_slice(view.hu, plane, index), *window)
        labels = plane_slice(view.labels, plane, index) if view.labels is not None else None
        heat = plane_slice(view.heat, plane, index) if view.heat is not None else None
        mask = plane_slice(view.mask, plane, index) if view.mask is not None else None
        valid = None
        aspect = _plane_aspect(plane, view.spacing)
    else:
        base = _composite(view, composite) if view.kind == "scene" else view.base
        labels, heat, mask = view.labels, view.heat, view.mask
        valid = view.valid if view.kind == "scene" else None
    out = base[..., :3]
    if show_result and labels is not None:  # segmentation
        out = blend_labels(out, labels, view.colours, opacity, view.hidden, valid)
    elif show_result and heat is not None:  # anomaly
        out = blend_heat(out, heat, opacity, view.vmax, mask)
    if valid is not None and not valid.all():
        out = np.concatenate([out, (valid.astype(np.uint8) * 255)[..., None]], axis=-1)
    return _enlarge(np.ascontiguousarray(out), aspect)


# ------------------------------------------------------------------------------------------------
# legends and summaries (HTML for gr.HTML)
# ------------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100.0 * v:.1f} %" if v >= 0.001 or v == 0 else "<0.1 %"


def legend_html(
    class_names: Sequence[str],
    colours: np.ndarray,
    hidden: Sequence[int] = (),
    fractions: Mapping[str, float] | None = None,
) -> str:
    """A colour legend, one swatch per drawn class, with the class's share of the valid area."""
    rows = []
    for i, name in enumerate(class_names):
        if i in hidden:
            continue
        frac = "" if fractions is None else f'<span class="unimae-frac">{_pct(float(fractions.get(name, 0.0)))}</span>'
        rows.append(
            f'<div class="unimae-legend-row"><span class="unimae-swatch" style="background:{_hex(colours[i])}">'
            f"</span><span>{html.escape(str(name))}</span>{frac}</div>"
        )
    return '<div class="unimae-legend">' + "".join(rows) + "</div>"


def _gradient_css() -> str:
    stops = np.linspace(0.0, 1.0, 6)
    cols = heat_colours(stops).astype(int)
    return ", ".join(f"{_hex(c)} {int(100 * s)}%" for c, s in zip(cols, stops))


def anomaly_html(pred: Any, vmax: float, withheld: bool = False) -> str:
    """The image score, its verdict against the image threshold, the pixel threshold and a colour bar
    (``withheld``: no verdict, the model's card marks it not reliable)."""
    score = float(pred.score) if pred.score is not None else float("nan")
    if withheld:
        verdict = '<span class="unimae-verdict unimae-bad">no verdict: this model is marked not reliable (see its card)</span>'
    elif pred.is_anomalous is None:
        verdict = '<span class="unimae-verdict">no calibrated image threshold</span>'
    elif pred.is_anomalous:
        verdict = '<span class="unimae-verdict unimae-bad">anomalous</span>'
    else:
        verdict = '<span class="unimae-verdict unimae-ok">within normal range</span>'
    ithr = "" if pred.image_threshold is None else f" (image threshold {pred.image_threshold:.4g})"
    thr = "none" if pred.threshold is None else f"{pred.threshold:.4g}"
    frac = ""
    if pred.anomaly_mask is not None:
        valid = pred.meta.get("valid")
        v = _np(valid).astype(bool) if valid is not None else np.ones(pred.anomaly_mask.shape, bool)
        n = int(v.sum())
        frac = f"<div>flagged area: {_pct(float((pred.anomaly_mask & v).sum()) / n if n else 0.0)} of the valid region</div>"
    pos = 100.0 * min(1.0, float(pred.threshold or 0.0) / max(vmax, 1e-12)) if pred.threshold is not None else None
    marker = "" if pos is None else f'<span class="unimae-marker" style="left:{pos:.1f}%"></span>'
    return (
        '<div class="unimae-score">'
        f'<div class="unimae-score-value">image score <b>{score:.4g}</b>{ithr}</div>'
        f"<div>{verdict}</div>"
        f"<div>pixel threshold: {thr}</div>{frac}"
        f'<div class="unimae-bar" style="background:linear-gradient(to right, {_gradient_css()})">{marker}</div>'
        f'<div class="unimae-bar-labels"><span>0</span><span>reconstruction error</span><span>{vmax:.3g}</span></div>'
        "</div>"
    )
