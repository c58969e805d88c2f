"""The server side of the app's task tabs: run the model, redraw, re-threshold, write the downloads.

:class:`TaskPanel` holds one domain x task. Its methods are the Gradio callbacks minus the widgets: each
calls the shared predict layer (``load_predictor``, ``Predictor.predict``, ``Prediction.with_threshold``,
``write_prediction``) and formats the result with :mod:`unimae.apps.ui_render`. Every failure becomes a
``gr.Error`` with one readable line (:func:`user_errors`), so the app keeps serving.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from unimae.core.errors import InputError
from unimae.core.tasks import Task, app_order, get_task
from unimae.core.tta import views

#: how the status line names the copies a test-time augmentation mode averages
TTA_WORDS = {"mirror": "mirrored", "dihedral": "rotated and mirrored"}

__all__ = [
    "AppSettings",
    "OutputDirs",
    "Display",
    "TaskPanel",
    "TASK_TITLES",
    "user_errors",
    "describe_input",
    "safe_stem",
    "device_summary",
    "warm_up",
    "card_markdown",
    "check_upload",
]

log = logging.getLogger("unimae.app")

#: each task's title (:attr:`~unimae.core.tasks.base.Task.title`), by name in tab order (kept for old imports)
TASK_TITLES = {t.name: t.title for t in app_order()}
_SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm", ".dicom", ".tar.gz")

# ------------------------------------------------------------------------------------------------
# settings and output folders
# ------------------------------------------------------------------------------------------------
@dataclass
class AppSettings:
    """How the app runs.

    Attributes:
        device: ``"auto"`` (the GPU when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"auto"`` (bf16 where the hardware runs it), ``"fp32"`` or ``"bf16"``.
        concurrency: predictions run at the same time (the rest wait in the queue).
        queue_size: most requests waiting in the queue (more are refused with a message).
        max_file_size: largest upload, e.g. ``"512mb"``.
        output_ttl_s: how long downloads are kept on the server.
        title: the browser tab's title.
    """

    device: str = "auto"
    precision: str = "auto"
    concurrency: int = 2
    queue_size: int = 64
    max_file_size: str = "512mb"
    output_ttl_s: int = 3600
    title: str = "UniMAE"


def device_summary(settings: AppSettings) -> tuple[str, str]:
    """``(device, precision)`` the models will run on, checked without loading the predict layer.

    Raises :class:`InputError` for a device this machine does not have (the predict layer checks the
    same when it loads a model; this lets ``unimae app`` say so before it starts serving).
    """
    import torch

    from unimae.core.precision import resolve_precision

    name = str(settings.device or "auto")
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as err:
            raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return str(dev), resolve_precision(settings.precision, dev)


def warm_up() -> threading.Thread:
    """Import the predict layer (MONAI, the models) in a background thread, so the server can answer at once
    and the first prediction does not pay for the imports."""

    def work() -> None:
        import importlib

        t0 = time.perf_counter()
        for name in ("unimae.apps.predict", "unimae.apps.ui_render"):
            importlib.import_module(name)

        log.debug("predict layer imported in %.1f s", time.perf_counter() - t0)

    thread = threading.Thread(target=work, name="unimae-warm-up", daemon=True)
    thread.start()
    return thread


class OutputDirs:
    """Per-request folders for downloads under one temporary root; old ones are pruned, all removed at exit.

    Gradio copies returned files into its own cache (cleaned by ``delete_cache``); these originals are
    removed after ``ttl_s`` seconds and when the app closes.
    """

    def __init__(self, ttl_s: int = 3600, root: str | Path | None = None) -> None:
        self.ttl_s = int(ttl_s)
        self.root = Path(tempfile.mkdtemp(prefix="unimae-app-", dir=root))
        self._lock = threading.Lock()
        atexit.register(self.cleanup)

    def new(self) -> Path:
        """A fresh folder (and prune the ones older than ``ttl_s``)."""
        self.prune()
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.root))

    def prune(self, now: float | None = None) -> int:
        """Remove request folders older than ``ttl_s``; returns how many were removed."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            if not self.root.is_dir():
                return 0
            for child in self.root.iterdir():
                try:
                    if now - child.stat().st_mtime > self.ttl_s:
                        shutil.rmtree(child, ignore_errors=True)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def png(self, image: np.ndarray, name: str = "view.png") -> str:
        """Write a displayed picture as a PNG in a fresh folder (atomically) and return its path.

        The app hands Gradio files rather than arrays: Gradio caches arrays under a hash of the picture
        and rewrites that file in place, so two users shown the same picture at the same moment could
        read it half-written; files are copied into its cache atomically.
        """
        from PIL import Image

        from unimae.core.fileio import atomic_path

        path = self.new() / name
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", compress_level=3)
        return str(path)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn any failure into a ``gr.Error`` with one readable line; the app keeps serving."""
    import gradio as gr

    try:
        yield
    except gr.Error:
        raise
    except InputError as err:
        log.info("%s: refused: %s", what, err)
        raise gr.Error(str(err), title="Cannot use this input", print_exception=False) from None
    except MemoryError:
        log.warning("%s: out of memory", what)
        raise gr.Error("the input is too large to process on this machine", print_exception=False) from None
    except Exception as err:  # noqa: BLE001 - the server must survive anything one request does
        log.exception("%s: unexpected failure", what)
        msg = " ".join(str(err).split())[:300]
        raise gr.Error(f"unexpected error ({type(err).__name__}): {msg}", print_exception=False) from None


def safe_stem(name: str) -> str:
    low = name.lower()
    for ext in _VOLUME_SUFFIXES:
        if low.endswith(ext):
            name = name[: -len(ext)]
            break
    else:
        name = Path(name).stem
    return _SAFE_STEM.sub("_", name).strip("._") or "input"


def describe_input(pred: Any, plugin: Any = None) -> str:
    """One line about the input's geometry (never patient fields); ``plugin``: the prediction's domain plugin
    (default: the registered ``pred.domain``), for the spacing unit and what its channels are called."""
    from unimae.domains import get_domain

    plugin = plugin if plugin is not None else get_domain(pred.domain)
    meta = pred.meta
    shape = meta.get("source_shape") or (pred.source.spatial_shape if pred.source is not None else ())
    parts = ["×".join(str(int(s)) for s in shape)]
    spacing = meta.get("spacing")
    unit = meta.get("spacing_unit") or meta.get("spacing_units") or plugin.spacing_unit or ""
    if spacing is not None and unit not in ("pixel",):
        parts.append("spacing " + "×".join(f"{float(s):.3g}" for s in spacing) + (f" {unit}" if unit else ""))
    if meta.get("orientation"):
        parts.append(f"orientation {meta['orientation']}")
    if meta.get("crs_name"):
        parts.append(str(meta["crs_name"]))
    channels = meta.get("channels") or []
    if plugin.channel_noun and channels:
        parts.append(f"{len(channels)} {plugin.channel_noun}")
    if meta.get("nodata") is not None:
        parts.append(f"nodata {meta['nodata']}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# what a model is (its card) and whether a file fits a tab
# ------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def card_markdown(entry: Any) -> str:
    """What the panel says about its model before a run: the synthetic-data warning, or a real-data model's card
    (data and licence, the held-out metric beside the baseline's, intended use, how to retrain it)."""
    from unimae.apps.demo_models import SYNTHETIC_NOTICE

    if entry is None:
        return ""
    if entry.trained_on == "synthetic":
        return f"⚠️ **{SYNTHETIC_NOTICE}.**"
    card = entry.model_card or {}
    if entry.trained_on != "real" or not card:
        return ""
    data = card.get("data") or {}
    name = data.get("name") or "public images"
    citation = f" ({data['citation']})" if data.get("citation") else ""
    metrics = card.get("metrics") or {}
    held_out = ("; ".join(f"{k}: {_fmt(v)}" for k, v in metrics.items() if k != "estimate")
                if isinstance(metrics, Mapping) else _fmt(metrics))  # fmt: skip
    lines = [
        f"**Model card** · trained on real images: **{name}**{citation}",
        f"licence: {data.get('licence', 'not stated')} · source: {data.get('source', 'not stated')}",
        (f"cross-validated ({metrics['estimate']}; trained on all the images): {held_out}"
         if isinstance(metrics, Mapping) and metrics.get("estimate") else f"held-out: {held_out}") if held_out else "",
        f"intended use: **{card.get('intended_use', 'demonstration, not for diagnosis')}**"
        + (f" · not for: {_fmt(card['not_for'])}" if card.get("not_for") else ""),
        f"caveats: {_fmt(card['caveats'])}" if card.get("caveats") else "",
        f"retrain: `{card['retrain']}`" if card.get("retrain") else "",
    ]
    if card.get("reliable") is False:
        lines.insert(0, "⚠️ **Not reliable** (its benchmark says so, see the caveats): the app shows what it computes "
                        "but withholds its verdict.")
    return "  \n".join(line for line in lines if line)


_KINDS = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".dcm": "DICOM", ".dicom": "DICOM", ".zip": "zipped DICOM series",
          ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF / GeoTIFF", ".tiff": "TIFF / GeoTIFF",
          ".bmp": "BMP", ".ppm": "PPM"}  # fmt: skip


def _suffix(name: str) -> str:
    low = name.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else Path(low).suffix


def check_upload(path: str | Path | None, domain: str) -> str | None:
    """None when a file may be what the ``domain`` tab reads (by its name, or its content as the domain's plugin
    sniffs it: a DICOM file without an extension), else one line saying why not and which tab reads it. Content is
    checked when the model runs."""
    from unimae.domains import domain_names, get_domain

    if not path:
        return None
    path = Path(path)
    name = path.name
    suffix = _suffix(name)
    plugin = get_domain(domain)
    if suffix in plugin.extensions or plugin.accepts(path):
        return None
    try:
        if path.is_file() and plugin.sniff(path) > 0:
            return None
    except InputError:
        return None  # the domain would read it but cannot: the model run says why
    kinds = sorted({f"{_KINDS.get(e, e)} ({e})" for e in plugin.extensions})
    others = [get_domain(d).label for d in domain_names() if d != domain and suffix and suffix in get_domain(d).extensions]
    hint = f"; a {suffix} file belongs on the {' or '.join(others)} tab" if others else ""
    what = f"a {suffix} file" if suffix else "a file without an extension"
    return f"{name}: {what} is not something the {plugin.label} tab reads (it reads {', '.join(kinds)}){hint}"


# ------------------------------------------------------------------------------------------------
# the callbacks of one domain x task
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Display:
    """How a tab draws a result: its display controls, in the order the page passes them."""

    opacity: float = 0.5
    plane: str = "axial"
    index: int | None = None
    window: str | None = "soft_tissue"
    center: float | None = 40.0
    width: float | None = 400.0
    composite: str = "natural"


@dataclass
class TaskPanel:
    """The server side of one task tab: run the model, redraw, re-threshold, write downloads."""

    domain: str
    task: str
    catalog: Any
    outputs: OutputDirs
    settings: AppSettings
    plugin: Any = field(init=False)

    def __post_init__(self) -> None:
        from unimae.domains import get_domain

        self.plugin = get_domain(self.domain)

    @property
    def name(self) -> str:
        return f"{self.domain}_{self.task}"

    @property
    def task_def(self) -> Task:
        return get_task(self.task)

    # -- display -------------------------------------------------------------------------------
    def _window(self, window: str | None, center: float | None, width: float | None) -> tuple[float, float]:
        windows = self.plugin.windows
        if window and window != "custom":
            if window not in windows:
                raise InputError(f"unknown window {window!r}; presets: {', '.join(windows)}, custom")
            c, w = windows[window]
            return float(c), float(w)
        c = 40.0 if center is None else float(center)
        w = 400.0 if width is None else float(width)
        if not np.isfinite(c) or not np.isfinite(w) or w <= 0:
            raise InputError(f"window center {center} / width {width}: the width must be a positive number")
        return c, w

    def draw(self, view: Any, display: Display | None = None, **settings: Any) -> np.ndarray:
        """The picture of ``view`` drawn with ``display`` (or a :class:`Display` of ``settings``)."""
        from unimae.apps.ui_render import render

        d = Display(**settings) if display is None else display
        win = self._window(d.window, d.center, d.width) if view.kind == "volume" else (40.0, 400.0)
        return render(view, opacity=float(d.opacity), plane=d.plane or "axial", index=d.index, window=win,
                      composite=d.composite or "natural")  # fmt: skip

    def summary(self, view: Any) -> Any:
        from unimae.apps.ui_render import anomaly_html, legend_html

        pred = view.pred
        task = get_task(pred.task)
        if task.image_labels:
            return dict(pred.probabilities or {})
        if task.pixel_labels:
            return legend_html(pred.class_names, view.colours, view.hidden, pred.class_fractions)
        return anomaly_html(pred, view.vmax, withheld=bool(view.extra.get("verdict_withheld")))

    def status(self, view: Any, entry: Any, file_name: str, seconds: float, note: str = "") -> str:
        pred = view.pred
        p = getattr(self, "_last_predictor", None)
        device = f"{p.device.type} {p.precision}" if p is not None else ""
        lines = [f"**{file_name}** · {describe_input(pred, self.plugin)}",
                 f"{entry.key} · {seconds:.2f} s{' on ' + device if device else ''}"]  # fmt: skip
        if get_task(pred.task).image_labels:
            chosen = ", ".join(pred.predicted or []) or "none"
            if pred.multi_label:
                lines.append(f"findings above {pred.threshold:g}: **{chosen}**")
            else:
                lines.append(f"predicted: **{chosen}**")
        if p is not None and p.task_def.symmetric and p.tta != "none":
            n = len(views(p.tta, self.plugin.spatial_dims))
            lines.append(f"test-time augmentation: mean of {n} {TTA_WORDS.get(p.tta, p.tta)} copies")
        if note:
            lines.append(note)
        if view.extra.get("verdict_withheld"):
            lines.append("⚠️ **its model card marks this model NOT RELIABLE: no verdict and no outline are drawn** "
                         "(the map is shown for inspection; type a threshold to outline it)")
        if entry.trained_on == "synthetic":
            from unimae.apps.demo_models import SYNTHETIC_NOTICE

            lines.append(f"⚠️ **{SYNTHETIC_NOTICE}.**")
        elif entry.trained_on == "real":
            lines.append("demonstration model trained on real public images: not for diagnosis")
        return "  \n".join(lines)

    def card(self, key: str | None) -> str:
        """What the panel says about the model picked (see :func:`card_markdown`); a model still being built or
        an unknown key gets one line."""
        try:
            entry = self.catalog.resolve(key, self.domain, self.task)
        except InputError as err:
            return f"_{err}_"
        return card_markdown(entry)

    def write(self, pred: Any, file_name: str, opacity: float, extra: Mapping[str, Any] | None = None
              ) -> tuple[list[str], dict]:  # fmt: skip
        """Downloads in the source geometry (the predict layer's writer) and the JSON report (plus ``extra``, e.g.
        what the model was trained on)."""
        from unimae.apps.predict import write_prediction
        from unimae.core.fileio import atomic_path

        out = self.outputs.new()
        files = write_prediction(pred, out, safe_stem(file_name), alpha=float(opacity), plugin=self.plugin)
        report = json.loads(Path(files["report"]).read_text())
        if extra:
            report.update(extra)
            with atomic_path(Path(files["report"])) as tmp:
                tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        order = [k for k in ("seg", "heatmap", "anomaly_mask", "overlay", "report") if files.get(k) is not None]
        order += [k for k in files if k not in order and files[k] is not None]
        return [str(files[k]) for k in order], report

    # -- events --------------------------------------------------------------------------------
    def run(
        self,
        file: str | None,
        model: str | None = None,
        opacity: float = 0.5,
        plane: str = "axial",
        window: str = "soft_tissue",
        center: float = 40.0,
        width: float = 400.0,
        composite: str = "natural",
        threshold: float | None = None,
        progress: Any = None,
        tta: bool = True,
    ) -> tuple[Any, ...]:
        """Run the model on an uploaded file: ``(image, summary, downloads, report, status, view)``.

        ``threshold`` (anomaly models) overrides the calibrated pixel threshold; None keeps it. ``tta`` False
        predicts in one pass instead of with the test-time augmentation the checkpoint records.
        """
        from unimae.apps.predict import load_predictor
        from unimae.apps.ui_render import prepare_view

        with user_errors(self.name):
            if not file:
                raise InputError("no file: upload one or click an example first")
            path = Path(file)
            file_name = path.name
            entry = self.catalog.resolve(model, self.domain, self.task)
            t0 = time.perf_counter()
            if progress is not None:
                progress(0.05, desc="loading the model")
            one_pass = not tta and self.task_def.symmetric
            predictor = load_predictor(entry.path, device=self.settings.device, precision=self.settings.precision,
                                       tta="none" if one_pass else None)  # fmt: skip
            self._last_predictor = predictor
            if progress is not None:
                progress(0.15, desc=f"{self.task_def.title.lower()} of {file_name}")
            if threshold is not None and (not self.task_def.calibrated or not math.isfinite(float(threshold))
                                          or float(threshold) < 0):  # fmt: skip
                raise InputError(f"threshold must be a number >= 0 for an anomaly model, got {threshold!r}")
            pred = predictor.predict(path, threshold=None if threshold is None else float(threshold),
                                     progress=progress is not None and self.plugin.spatial_dims == 3)  # fmt: skip
            withheld = self.task_def.calibrated and threshold is None and bool(predictor.not_reliable)
            if withheld:  # a model its card marks not reliable: the map only, no verdict and no outline
                pred = replace(pred, threshold=None, image_threshold=None, anomaly_mask=None, is_anomalous=None)
            if progress is not None:
                progress(0.85, desc="drawing and writing the results")
            view = prepare_view(pred, self.plugin)
            if self.task_def.calibrated:
                anomaly = predictor.meta.get("anomaly") if isinstance(predictor.meta, Mapping) else None
                cal = (anomaly or {}).get("pixel_threshold") if isinstance(anomaly, Mapping) else None
                view.calibrated = float(cal) if isinstance(cal, (int, float)) and cal > 0 else pred.threshold
            view.extra = {"model": entry.key, "trained_on": entry.trained_on}
            if withheld:
                view.extra["verdict_withheld"] = f"the model card marks this model not reliable: {predictor.not_reliable}"
            if entry.trained_on == "real" and entry.model_card:
                view.extra["model_data"] = (entry.model_card.get("data") or {}).get("name")
            note = ""
            display = Display(opacity, plane, None, window, center, width, composite)
            try:
                image = self.draw(view, display)
            except InputError as err:  # a display choice this input cannot have (e.g. false colour of RGB)
                note = f"note: {err}; showing natural colour"
                image = self.draw(view, replace(display, composite="natural"))
            files, report = self.write(pred, file_name, opacity, view.extra)
            seconds = time.perf_counter() - t0
            log.info("%s: %s input done in %.2f s", self.name, "".join(path.suffixes[-2:]) or "extension-less", seconds)
            status = self.status(view, entry, file_name, seconds, note)
            return self.outputs.png(image), self.summary(view), files, report, status, view

    def redraw(self, view: Any, *display: Any, **named: Any) -> Any:
        """The image again with other display settings (``display``, ``named``: the settings of :class:`Display`; no model run)."""
        import gradio as gr

        if view is None:
            return gr.update()
        with user_errors(f"{self.name} display"):
            return self.outputs.png(self.draw(view, Display(*display, **named)))

    def rethreshold(self, view: Any, threshold: float, *display: Any, **named: Any) -> tuple[Any, ...]:
        """A new anomaly threshold: new mask, image, summary and downloads from the kept heat map (``display``,
        ``named``: the settings of :class:`Display`)."""
        import gradio as gr

        from unimae.apps.ui_render import with_threshold

        if view is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), view
        with user_errors(f"{self.name} threshold"):
            thr = float(threshold)
            if not np.isfinite(thr) or thr < 0:
                raise InputError(f"threshold must be a non-negative number, got {threshold}")
            view = with_threshold(view, thr)
            settings = Display(*display, **named)
            image = self.draw(view, settings)
            name = view.pred.meta.get("path") or "input"
            files, report = self.write(view.pred, Path(str(name)).name, settings.opacity, view.extra)
            return self.outputs.png(image), self.summary(view), files, report, view

    def scale(self, view: Any) -> tuple[float | None, float]:
        """``(calibrated threshold, top)`` of the page's threshold scale for this view."""
        from unimae.apps.ui_render import threshold_top

        heat = view.pred.heatmap
        hot = float(heat.max()) if heat is not None and heat.size else 0.0
        return view.calibrated, threshold_top(hot)

    def threshold_from_position(self, view: Any, position: float) -> float:
        from unimae.apps.ui_render import position_to_threshold

        cal, top = self.scale(view)
        return float(f"{position_to_threshold(position, cal, top):.4g}")

    def position_from_threshold(self, view: Any, threshold: float) -> float:
        from unimae.apps.ui_render import threshold_to_position

        cal, top = self.scale(view)
        return round(threshold_to_position(threshold, cal, top), 4)

    def controls(self, view: Any, plane: str = "axial") -> tuple[Any, Any, Any]:
        """After a run: the slice slider sized to the volume, and for anomaly maps the threshold scale (the calibrated
        threshold in the middle) and the threshold box (the calibrated value)."""
        import gradio as gr

        from unimae.apps.ui_render import slice_count, start_slice

        if view is None:
            return gr.update(), gr.update(), gr.update()
        slice_update = gr.update()
        if view.kind == "volume":
            n = slice_count(view, plane or "axial")
            slice_update = gr.update(minimum=0, maximum=max(n - 1, 1), value=start_slice(view, plane or "axial"),
                                     step=1, interactive=n > 1, label=f"{plane} slice (of {n})")  # fmt: skip
        scale_update, box_update = gr.update(), gr.update()
        pred = view.pred
        if pred.heatmap is not None:  # anomaly
            cal, top = self.scale(view)
            if pred.threshold is not None:
                value = float(pred.threshold)
            else:  # no threshold: the right end (nothing flagged) when the verdict is withheld, else the middle
                value = top if view.extra.get("verdict_withheld") else 0.5 * top
            middle = f"{cal:.4g} (calibrated)" if cal is not None and 0 < cal < top else f"{0.5 * top:.4g}"
            scale_update = gr.update(value=self.position_from_threshold(view, value), interactive=True,
                                     label=f"threshold scale: left 0 · middle {middle} · right {top:.4g} (nothing "
                                     "flagged)")  # fmt: skip
            box_update = gr.update(value=float(f"{value:.4g}"), interactive=True)
        return slice_update, scale_update, box_update
