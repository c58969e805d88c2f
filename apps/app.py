"""The UniMAE web app: one Gradio ``Blocks`` app, a tab per domain, the domain's tasks inside each tab.

::

    unimae app                                   # demo models (built on first start), http://127.0.0.1:7860
    unimae app --models runs/ --port 8080        # plus every task checkpoint under runs/
    unimae app --auth alice:secret               # with a login

Every callback calls the shared predict layer (:mod:`unimae.apps.predict`: ``load_predictor``,
``Predictor.predict``, ``Prediction.with_threshold``, ``write_prediction``) and only formats its results
for display (:mod:`unimae.apps.ui_render`). Each domain x task is also a named API endpoint
(``/ct_segment``, ``/fundus_classify``, ``/xray_anomaly``, ``/multispectral_segment`` ...)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    overlay, legend, files, report, status = client.predict(
        handle_file("eye.png"), "demo/fundus_segment", api_name="/fundus_segment")

Errors in what a user sends (a bad or oversized file, another domain's file, a wrong band count) come
back as one readable message and the app keeps serving. Analytics are off, the server binds to
127.0.0.1 unless told otherwise, and nothing is fetched from the network.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
# Gradio and timm pull in huggingface_hub, which sends telemetry and fetches a registry unless told not to; the app
# never downloads anything, so it runs the hub library offline (before huggingface_hub reads its settings)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if "huggingface_hub.constants" in __import__("sys").modules:  # imported already (e.g. by timm): tell it too
    _hub = __import__("sys").modules["huggingface_hub.constants"]
    _hub.HF_HUB_OFFLINE = _hub.HF_HUB_OFFLINE or os.environ["HF_HUB_OFFLINE"] == "1"
    _hub.HF_HUB_DISABLE_TELEMETRY = _hub.HF_HUB_DISABLE_TELEMETRY or os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from unimae.apps.ui_panel import TASK_TITLES, AppSettings, OutputDirs, TaskPanel, device_summary, warm_up  # noqa: E402
from unimae.core.errors import InputError  # noqa: E402

__all__ = [
    "DOMAIN_TABS",
    "TASK_TITLES",
    "AppSettings",
    "OutputDirs",
    "TaskPanel",
    "build_app",
    "launch_app",
    "endpoint_names",
    "add_app_parser",
    "run_app",
    "APP_CSS",
]

log = logging.getLogger("unimae.app")

DOMAIN_TABS: tuple[tuple[str, str], ...] = (
    ("ct", "CT"),
    ("fundus", "Fundus"),
    ("xray", "X-ray"),
    ("multispectral", "Multispectral"),
)
_TASK_ORDER = ("segment", "classify", "anomaly")
DOMAIN_INTRO = {
    "ct": "Computed tomography volumes: **NIfTI** (`.nii`, `.nii.gz`), a single **DICOM** file or a **zipped "
    "DICOM series**. Results come back on the scan's own voxel grid (NIfTI with the source affine).",
    "fundus": "Colour fundus photographs: **PNG**, **JPEG**, **TIFF** or BMP. Results come back on the "
    "photograph's pixel grid.",
    "xray": "Chest radiographs: **DICOM** (MONOCHROME1/2, VOI LUT) or 8/16-bit **PNG** / **JPEG**. Results come "
    "back on the radiograph's pixel grid. Patient fields are never read into the app.",
    "multispectral": "Satellite scenes: **GeoTIFF** (Sentinel-2, Landsat 8/9 or RGB). Results come back as "
    "GeoTIFF with the source CRS, transform and nodata; nodata is shown transparent.",
}
TASK_HELP = {
    "segment": "A class for every {unit}, drawn over the image with a legend. Opacity changes the drawing only.",
    "classify": "Class probabilities for the whole image (independent per finding for multi-label models).",
    "anomaly": "Reconstruction error of a masked autoencoder trained on normal images only: hot where the "
    "image departs from normal. The threshold outlines the flagged area (cyan) without re-running the model.",
}
APP_CSS = """
.unimae-legend {display:flex; flex-wrap:wrap; gap:6px 14px; padding:4px 2px; font-size:0.92em}
.unimae-legend-row {display:flex; align-items:center; gap:6px}
.unimae-swatch {display:inline-block; width:14px; height:14px; border-radius:3px; border:1px solid #0005}
.unimae-frac {color:var(--body-text-color-subdued); margin-left:2px}
.unimae-score {display:flex; flex-direction:column; gap:4px; font-size:0.95em}
.unimae-score-value {font-size:1.1em}
.unimae-verdict {padding:1px 8px; border-radius:10px; background:var(--neutral-200); color:#222}
.unimae-bad {background:#f8b4b4; color:#611}
.unimae-ok {background:#b8e6c1; color:#143}
.unimae-bar {position:relative; height:12px; border-radius:4px; margin-top:6px}
.unimae-marker {position:absolute; top:-3px; width:3px; height:18px; background:#00ffff; border:1px solid #000}
.unimae-bar-labels {display:flex; justify-content:space-between; font-size:0.8em; color:var(--body-text-color-subdued)}
/* uploads: the whole file name, wrapped, never "000… .png" */
.unimae-upload .file-preview td.filename {display:table-cell !important; white-space:normal !important; overflow:visible !important;
  overflow-wrap:anywhere; max-width:none !important}
.unimae-upload .file-preview td.filename .stem, .unimae-upload .file-preview td.filename .ext {display:inline !important;
  white-space:normal !important; overflow:visible !important; text-overflow:clip !important; overflow-wrap:anywhere}
.unimae-upload .file-preview-holder {overflow-x:visible}
/* the threshold scale is positions, the value is typed in the box beside it */
.unimae-scale input[type=number] {display:none}
"""


# ------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------
def endpoint_names(domains: Sequence[str] | None = None) -> list[str]:
    """The API endpoints the app serves: ``/<domain>_<task>`` for every domain and task."""
    from unimae.domains import get_domain

    names = []
    for domain, _ in DOMAIN_TABS:
        if domains is not None and domain not in domains:
            continue
        for task in _TASK_ORDER:
            if task in get_domain(domain).tasks:
                names.append(f"/{domain}_{task}")
    return names


def _task_ui(panel: TaskPanel, file_input: Any, catalog: Any) -> None:
    """The widgets and events of one task tab (inside the current ``gr.Tab``)."""
    import gradio as gr

    domain, task = panel.domain, panel.task
    volume = panel.plugin.spatial_dims == 3
    scene = domain == "multispectral"
    gr.Markdown(TASK_HELP[task].format(unit="voxel of the volume" if volume else "pixel"), elem_classes=["unimae-help"])
    with gr.Row(equal_height=False):
        model = gr.Dropdown(
            choices=catalog.choices(domain, task), value=catalog.default_key(domain, task),
            label="model", allow_custom_value=True, scale=5, elem_id=f"{panel.name}-model",
        )  # fmt: skip
        with gr.Column(scale=1, min_width=170):
            run_btn = gr.Button(f"Run {TASK_TITLES[task].lower()}", variant="primary", elem_id=f"{panel.name}-run")
            refresh = gr.Button("↻ rescan models", size="sm", variant="secondary")
    card = gr.Markdown(panel.card(catalog.default_key(domain, task)), elem_id=f"{panel.name}-card",
                       elem_classes=["unimae-card"])  # fmt: skip
    kw: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3, min_width=360):
            image = gr.Image(label="result", type="numpy", format="png", interactive=False, height=560,
                             buttons=["download", "fullscreen"], elem_id=f"{panel.name}-image")  # fmt: skip
            index = None
            if volume:
                index = gr.Slider(0, 1, value=0, step=1, label="slice", interactive=False, elem_id=f"{panel.name}-slice")
        with gr.Column(scale=2, min_width=300):
            if task == "classify":
                summary = gr.Label(label="class probabilities", num_top_classes=10, elem_id=f"{panel.name}-summary")
            elif task == "segment":
                summary = gr.HTML(label="legend", elem_id=f"{panel.name}-summary")
            else:
                summary = gr.HTML(label="anomaly score", elem_id=f"{panel.name}-summary")
            threshold = scale = None
            if task != "classify":
                kw["opacity"] = gr.Slider(0.0, 1.0, value=0.5 if task == "segment" else 0.6, step=0.05,
                                          label="overlay opacity")  # fmt: skip
            if task == "anomaly":  # a scale with the calibrated threshold in the middle, and the value itself
                scale = gr.Slider(0.0, 1.0, value=0.5, step=0.001, label="threshold scale (middle: calibrated)",
                                  interactive=False, elem_id=f"{panel.name}-threshold-scale",
                                  elem_classes=["unimae-scale"])  # fmt: skip
                threshold = gr.Number(None, label="pixel threshold (no model re-run; type a value and press Enter)",
                                      minimum=0, interactive=False, elem_id=f"{panel.name}-threshold")  # fmt: skip
            if volume:
                windows = list(getattr(panel.plugin, "windows", {}) or {})
                kw["plane"] = gr.Radio(["axial", "coronal", "sagittal"], value="axial", label="view")
                with gr.Row():
                    kw["window"] = gr.Dropdown(windows + ["custom"], value="soft_tissue", label="window preset",
                                               min_width=140)  # fmt: skip
                    kw["center"] = gr.Number(40, label="level / center (HU)", min_width=90)
                    kw["width"] = gr.Number(400, label="width (HU)", minimum=1, min_width=90)
            if scene:
                kw["composite"] = gr.Radio([("natural colour", "natural"), ("false colour (NIR)", "false_color")],
                                           value="natural", label="composite")  # fmt: skip
            status = gr.Markdown(elem_id=f"{panel.name}-status")
            files = gr.File(label="downloads (source geometry)", file_count="multiple", interactive=False,
                            elem_id=f"{panel.name}-files")  # fmt: skip
            with gr.Accordion("report (JSON)", open=False):
                report = gr.JSON(label="report")
    view = gr.State(None, time_to_live=panel.settings.output_ttl_s)

    def run(file: str | None, model: str | None = None, opacity: float = 0.5, plane: str = "axial",
            window: str = "soft_tissue", center: float = 40.0, width: float = 400.0, composite: str = "natural",
            threshold: float | None = None, progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        return panel.run(file, model, opacity, plane, window, center, width, composite, threshold=threshold,
                         progress=progress)  # fmt: skip

    run.__name__ = panel.name
    run.__doc__ = f"{domain} {task}: returns the overlay image, the summary, the downloads, the report and a status line."
    outputs = [image, summary, files, report, status, view]
    run_kw = dict(kw)
    if task == "anomaly":  # API callers may override the calibrated pixel threshold; the page uses its slider
        run_kw["threshold"] = gr.Number(value=None, visible=False, label="threshold")
    event = run_btn.click(
        run, inputs=[file_input, model], inputs_kwargs=run_kw, outputs=outputs, api_name=panel.name,
        concurrency_id="predict", concurrency_limit=panel.settings.concurrency,
    )  # fmt: skip
    plane_in = kw.get("plane")
    after = [x for x in (index, scale, threshold) if x is not None]
    if after:

        def sync(v, plane="axial"):
            s, sc, t = panel.controls(v, plane)
            updates = [u for u, c in ((s, index), (sc, scale), (t, threshold)) if c is not None]
            return updates[0] if len(updates) == 1 else tuple(updates)

        event.then(sync, inputs=[view] + ([plane_in] if plane_in is not None else []), outputs=after,
                   api_visibility="private", show_progress="hidden")  # fmt: skip

    # redraws: display settings only
    draw_kw = dict(kw)
    if index is not None:
        draw_kw["index"] = index

    def redraw(v, opacity=0.5, plane="axial", index=None, window="soft_tissue", center=40.0, width=400.0,
               composite="natural"):  # fmt: skip
        return panel.redraw(v, opacity, plane, index, window, center, width, composite)

    def fire_redraw(trigger: Any) -> None:
        trigger(redraw, inputs=[view], inputs_kwargs=draw_kw, outputs=[image], api_visibility="private",
                show_progress="hidden", trigger_mode="always_last", concurrency_id="display",
                concurrency_limit=4)  # fmt: skip

    if "opacity" in kw:
        fire_redraw(kw["opacity"].release)
    if index is not None:
        fire_redraw(index.input)
        fire_redraw(index.release)
    if scene:
        fire_redraw(kw["composite"].change)
    if volume:

        def on_plane(v, plane="axial"):
            return panel.controls(v, plane)[0]

        kw["plane"].change(on_plane, inputs=[view, kw["plane"]], outputs=[index], api_visibility="private",
                           show_progress="hidden").then(redraw, inputs=[view], inputs_kwargs=draw_kw, outputs=[image],
                                                        api_visibility="private", show_progress="hidden")  # fmt: skip
        windows = getattr(panel.plugin, "windows", {}) or {}

        def on_preset(name):
            if name in windows:
                c, w = windows[name]
                return float(c), float(w)
            return gr.update(), gr.update()

        kw["window"].input(on_preset, inputs=[kw["window"]], outputs=[kw["center"], kw["width"]],
                           api_visibility="private", show_progress="hidden").then(
            redraw, inputs=[view], inputs_kwargs=draw_kw, outputs=[image], api_visibility="private",
            show_progress="hidden")  # fmt: skip
        for box in (kw["center"], kw["width"]):
            box.input(lambda: "custom", outputs=[kw["window"]], api_visibility="private", show_progress="hidden")
            fire_redraw(box.submit)
            fire_redraw(box.blur)
    if threshold is not None and scale is not None:
        # the scale moves the threshold (and the box shows it); a typed threshold applies on Enter or on leaving the
        # box (and the scale follows); the colour bar keeps its maximum, only the flagged outline changes
        def from_scale(v, position, opacity=0.5, plane="axial", index=None, window="soft_tissue", center=40.0,
                       width=400.0, composite="natural"):  # fmt: skip
            if v is None:
                return gr.update(), gr.update(), gr.update(), gr.update(), v, gr.update()
            thr = panel.threshold_from_position(v, position)
            out = panel.rethreshold(v, thr, opacity, plane, index, window, center, width, composite)
            return (*out, thr)

        def from_box(v, value, opacity=0.5, plane="axial", index=None, window="soft_tissue", center=40.0,
                     width=400.0, composite="natural"):  # fmt: skip
            if v is None or value is None or (v.pred.threshold is not None and float(value) == float(v.pred.threshold)):
                # nothing new (e.g. leaving the box after Enter): no second re-threshold racing a later scale move
                return gr.update(), gr.update(), gr.update(), gr.update(), v, gr.update()
            out = panel.rethreshold(v, value, opacity, plane, index, window, center, width, composite)
            return (*out, panel.position_from_threshold(v, float(value)))

        common = dict(inputs_kwargs=draw_kw, api_visibility="private", show_progress="minimal",
                      trigger_mode="always_last", concurrency_id="display", concurrency_limit=4)  # fmt: skip
        scale.release(from_scale, inputs=[view, scale], outputs=[image, summary, files, report, view, threshold],
                      **common)  # fmt: skip
        for trigger in (threshold.submit, threshold.blur):
            trigger(from_box, inputs=[view, threshold], outputs=[image, summary, files, report, view, scale], **common)

    def rescan(key):
        skipped = catalog.refresh()
        if skipped:
            gr.Warning(f"{len(skipped)} checkpoint(s) skipped: " + "; ".join(skipped[:3]))
        return _picker(catalog, panel, key)

    refresh.click(rescan, inputs=[model], outputs=[model, card], api_visibility="private", show_progress="hidden")
    model.change(panel.card, inputs=[model], outputs=[card], api_visibility="private", show_progress="hidden")
    return model, card


def _picker(catalog: Any, panel: TaskPanel, key: str | None) -> tuple[Any, str]:
    """The model picker's choices (models built after start-up appear) and the card of the model picked."""
    import gradio as gr

    keys = [k for _, k in catalog.choices(panel.domain, panel.task)]
    if key not in keys:
        key = catalog.default_key(panel.domain, panel.task)
    return gr.update(choices=catalog.choices(panel.domain, panel.task), value=key), panel.card(key)


def _upload_check(file_input: Any, note: Any, domain: str) -> None:
    """A file the tab cannot read gets a readable line at once (a toast and a note under the upload box) and is
    taken out of the box; a fitting one clears the note."""
    import gradio as gr

    from unimae.apps.ui_panel import check_upload

    def check(path):
        problem = check_upload(path, domain)
        if problem is None:
            return gr.update(), ""
        gr.Warning(problem, title="Not a file for this tab")
        return None, f"⚠️ {problem}"

    file_input.upload(check, inputs=[file_input], outputs=[file_input, note], api_visibility="private",
                      show_progress="hidden")  # fmt: skip


def _models_tab(catalog: Any, settings: AppSettings, cache_note: str) -> None:
    import gradio as gr

    dev, prec = device_summary(settings)
    gr.Markdown(
        f"Models run on **{dev}** ({prec}). Every domain tab lists the models for its tasks. "
        "Add your own: `unimae app --models DIR` lists every task checkpoint (`NAME.json` + `NAME.safetensors`, "
        "from `unimae finetune`) under DIR, labelled from its JSON. " + cache_note
    )
    table = gr.Dataframe(value=catalog.rows(), headers=list(catalog.columns()), interactive=False, wrap=True,
                         label="available models")  # fmt: skip
    btn = gr.Button("↻ rescan the models folder", size="sm")

    def rescan():
        skipped = catalog.refresh()
        if skipped:
            gr.Warning(f"{len(skipped)} checkpoint(s) skipped: " + "; ".join(skipped[:3]))
        return catalog.rows()

    btn.click(rescan, outputs=[table], api_visibility="private")


def build_app(
    catalog: Any,
    examples: Mapping[str, Sequence[str | Path]] | None = None,
    *,
    settings: AppSettings | None = None,
    outputs: OutputDirs | None = None,
    cache_note: str = "",
) -> Any:
    """The ``gr.Blocks`` app (not launched): a tab per domain, a sub-tab per task, a models tab.

    Args:
        catalog: a :class:`~unimae.apps.ui_models.ModelCatalog`.
        examples: ``{domain: [example files]}`` shown under each domain's upload.
        settings: device, precision, concurrency, upload limit (see :class:`AppSettings`).
        outputs: where downloads are written (default: a new :class:`OutputDirs`).
        cache_note: a line about the demo-model cache for the models tab.
    """
    import gradio as gr

    settings = settings or AppSettings()
    outputs = outputs or OutputDirs(settings.output_ttl_s)
    examples = examples or {}
    pickers: list[tuple[TaskPanel, Any, Any]] = []
    with gr.Blocks(title=settings.title, delete_cache=(900, max(900, settings.output_ttl_s))) as demo:
        gr.Markdown(
            "# UniMAE\nSegmentation, classification and anomaly maps from one masked-autoencoder core, for CT, "
            "fundus photographs, chest X-rays and multispectral satellite scenes. Upload a file (or click an "
            "example), pick a task and press **Run**; downloads keep the file's own geometry."
        )
        with gr.Tabs():
            for domain, title in DOMAIN_TABS:
                from unimae.domains import get_domain

                plugin = get_domain(domain)
                with gr.Tab(title, id=domain, elem_id=f"tab-{domain}"):
                    gr.Markdown(DOMAIN_INTRO[domain])
                    with gr.Row():
                        with gr.Column(scale=1, min_width=260):
                            # no file_types filter: the browser would refuse a wrong file silently; check_upload
                            # says at once what is wrong and which tab reads it
                            file_input = gr.File(label=f"{title} file", type="filepath", elem_id=f"{domain}-file",
                                                 elem_classes=["unimae-upload"])  # fmt: skip
                            file_note = gr.Markdown("", elem_id=f"{domain}-file-note")
                            _upload_check(file_input, file_note, domain)
                            ex = [str(p) for p in examples.get(domain, [])]
                            if ex:
                                gr.Examples(examples=[[p] for p in ex], inputs=[file_input], label="examples (synthetic)",
                                            example_labels=[Path(p).name for p in ex], examples_per_page=8)  # fmt: skip
                        with gr.Column(scale=4):
                            with gr.Tabs():
                                for task in _TASK_ORDER:
                                    if task not in plugin.tasks:
                                        continue
                                    with gr.Tab(TASK_TITLES[task], id=f"{domain}-{task}",
                                                elem_id=f"tab-{domain}-{task}"):  # fmt: skip
                                        panel = TaskPanel(domain, task, catalog, outputs, settings)
                                        pickers.append((panel, *_task_ui(panel, file_input, catalog)))
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                _models_tab(catalog, settings, cache_note)

        def on_load(*keys):  # a page opened later sees the demo models built since start-up
            out: list[Any] = []
            for (panel, _, _), key in zip(pickers, keys):
                out.extend(_picker(catalog, panel, key))
            return tuple(out)

        demo.load(on_load, inputs=[m for _, m, _ in pickers], outputs=[c for _, m, card in pickers for c in (m, card)],
                  api_visibility="private", show_progress="hidden")  # fmt: skip
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    demo.unimae_outputs = outputs  # type: ignore[attr-defined]
    demo.unimae_settings = settings  # type: ignore[attr-defined]
    return demo


def launch_app(
    demo: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: tuple[str, str] | None = None,
    share: bool = False,
    allowed_paths: Sequence[str | Path] = (),
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> tuple[Any, str, str]:
    """Launch a built app (localhost, no share, no analytics by default); returns Gradio's ``(app, url, share_url)``."""
    settings: AppSettings = getattr(demo, "unimae_settings", AppSettings())
    outputs: OutputDirs | None = getattr(demo, "unimae_outputs", None)
    warm_up()
    allowed = [str(p) for p in allowed_paths]
    if outputs is not None:
        allowed.append(str(outputs.root))
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=share,
        max_file_size=settings.max_file_size,
        allowed_paths=allowed,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=True,
        footer_links=["api", "settings"],
        css=APP_CSS,
        enable_monitoring=False,
        mcp_server=False,
        pwa=False,
        ssr_mode=False,
        inbrowser=False,
    )


# ------------------------------------------------------------------------------------------------
# the command line: `unimae app`
# ------------------------------------------------------------------------------------------------
def _auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth must be USER:PASS")
    return user, password


def add_app_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``unimae app`` to an argparse ``subparsers`` object; it runs :func:`run_app`."""
    from unimae.apps.commands import add_device_args

    p = subparsers.add_parser(
        "app",
        help="start the web app (segmentation, classification, anomaly maps for all domains)",
        description="Start the UniMAE web app on http://HOST:PORT. Demo models trained on real public data ship with "
        "the project and load at once; the other panels' demo models are built from synthetic data in the "
        "background on first start (under 2 minutes, shown in the terminal) and cached. --models adds every task "
        "checkpoint under a folder.",
    )
    p.add_argument("--models", metavar="DIR", default=None, help="a folder of task checkpoints (NAME.json + NAME.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS", default=None, help="require this login")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--no-demo", action="store_true", help="do not build or load the demo models")
    add_device_args(p)  # --device, --precision
    p.add_argument("--concurrency", type=int, default=2, help="predictions run at once; more wait in the queue")
    p.add_argument("--max-file-size", default="512mb", help="largest upload (e.g. 200mb, 2gb)")
    p.add_argument("--demo-profile", default="default", choices=["default", "test"], help=argparse.SUPPRESS)
    p.set_defaults(func=run_app)
    return p


def _serve_forever(demo: Any) -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("unimae: stopping the app", flush=True)
    finally:
        demo.close()


def _watch_build(proc: Any, root: Path, catalog: Any) -> None:
    """Wait for the child building the synthetic demo models; add them to the catalog when it is done."""
    import threading

    from unimae.apps.demo_models import load_demo

    def wait() -> None:
        code = proc.wait()
        bundle = load_demo(root) if code == 0 else None
        if bundle is None and code in (-2, -15, 130):  # the app is stopping
            return
        if bundle is None:
            reason = f"the build stopped with status {code}" if code else f"no complete build in {root}"
            catalog.build_ended(reason)
            print(f"unimae: demo models were not built ({reason}); run `unimae demo` to see why", flush=True)
            return
        catalog.add_demo(bundle.models)
        print(f"unimae: {len(bundle.models)} demo model(s) built from synthetic data are ready "
              "(a reloaded page lists them)", flush=True)  # fmt: skip

    threading.Thread(target=wait, name="unimae-demo-build", daemon=True).start()


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager stopping the app) ends it like Ctrl-C: through ``finally`` blocks."""
    import signal
    import threading

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt("stopped by SIGTERM")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def run_app(args: argparse.Namespace) -> int:
    """Run ``unimae app``: load the shipped demo models, load or start building (in a child process) the synthetic
    ones, scan ``--models``, serve until Ctrl-C."""
    from unimae.apps.demo_models import start_background_build
    from unimae.apps.ui_models import ModelCatalog

    logging.basicConfig(level=logging.INFO, format="unimae: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    auth = _auth(args.auth)
    if args.concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {args.concurrency}")
    demo_models: dict[str, Path] = {}
    examples: dict[str, list[Path]] = {}
    note = ""
    builder = None
    pending: tuple[str, ...] = ()
    allowed: list[Path] = []
    if not args.no_demo:
        bundle, builder = start_background_build(getattr(args, "demo_profile", "default"))
        demo_models, examples, pending, allowed = bundle.models, bundle.examples, bundle.pending, bundle.paths
        note = f"Demo models built from synthetic data are cached in `{bundle.root}`."
        if bundle.shipped:
            note += " Shipped demo models (real data): " + ", ".join(f"`{k}`" for k in sorted(bundle.shipped)) + "."
        if pending:
            print(f"unimae: building {len(pending)} demo model(s) from synthetic data in the background (first start "
                  "only); their panels say so until they are ready", flush=True)  # fmt: skip
    elif args.models is None:
        raise InputError("--no-demo needs --models DIR (there would be no model to run)")
    catalog = ModelCatalog(demo_models, args.models, pending=pending)
    if builder is not None:
        _watch_build(builder, bundle.root, catalog)
        _stop_on_sigterm()  # so that `finally` below stops the child build too
    for reason in catalog.skipped:
        print(f"unimae: note: skipped checkpoint {reason}", flush=True)
    try:
        settings = AppSettings(device=args.device, precision=args.precision, concurrency=args.concurrency,
                               max_file_size=args.max_file_size)  # fmt: skip
        device_summary(settings)  # a device this machine lacks: say so now, not at the first request
        demo = build_app(catalog, examples, settings=settings, cache_note=note)
        _, url, share_url = launch_app(demo, host=args.host, port=args.port, auth=auth, share=bool(args.share),
                                       allowed_paths=allowed, prevent_thread_lock=True, quiet=True)  # fmt: skip
        n = len(catalog.entries())
        print(f"unimae: app ready in {time.perf_counter() - t0:.1f} s with {n} model(s): {url}", flush=True)
        if share_url:
            print(f"unimae: public link: {share_url}", flush=True)
        _serve_forever(demo)
    finally:
        if builder is not None and builder.poll() is None:
            builder.terminate()  # `unimae demo` stops as on Ctrl-C: nothing half-built is kept; the next start builds again
            try:
                builder.wait(timeout=30)
            except Exception:  # noqa: BLE001
                builder.kill()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unimae.apps.app [options]`` (the same as ``unimae app``)."""
    parser = argparse.ArgumentParser(prog="unimae app")
    sub = parser.add_subparsers(dest="command")
    add_app_parser(sub)
    args = parser.parse_args(["app", *(argv or [])] if argv is not None else ["app", *sys.argv[1:]])
    try:
        return run_app(args)
    except InputError as err:
        print(f"unimae: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
