"""The UniMAE web app: one Gradio ``Blocks`` app, a tab per registered domain, the domain's tasks inside each tab.

::

    unimae app                                   # demo models (built on first start), http://127.0.0.1:7860
    unimae app --models runs/ --port 8080        # plus every task checkpoint under runs/
    unimae app --auth alice:secret               # with a login

The tabs and endpoints come from the domain registry (:mod:`unimae.domains`): a domain registered through
the ``unimae.domains`` entry points or ``register_domain`` gets its tab, its title and introduction, its
display controls and its endpoints with no change here (the widgets are in :mod:`unimae.apps.ui_tabs`).
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
from unimae.apps.ui_tabs import TASK_HELP, models_tab, picker, task_tab, upload_check  # noqa: E402
from unimae.core.errors import InputError  # noqa: E402
from unimae.core.tasks import app_order  # noqa: E402

__all__ = [
    "DOMAIN_TABS",
    "TASK_TITLES",
    "TASK_HELP",
    "domain_tabs",
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

_TASK_ORDER = tuple(t.name for t in app_order())  # the tabs' order (the task layer's app_rank)
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
def domain_tabs(domains: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(domain, tab title)`` of every registered domain (or of ``domains``), in registry order."""
    from unimae.domains import domain_names, get_domain

    return [(name, get_domain(name).label) for name in domain_names() if domains is None or name in domains]


def endpoint_names(domains: Sequence[str] | None = None) -> list[str]:
    """The API endpoints the app serves: ``/<domain>_<task>`` for every registered domain and its tasks."""
    from unimae.domains import get_domain

    names = []
    for domain, _ in domain_tabs(domains):
        for task in _TASK_ORDER:
            if task in get_domain(domain).tasks:
                names.append(f"/{domain}_{task}")
    return names


def __getattr__(name: str) -> Any:
    """``DOMAIN_TABS`` and ``DOMAIN_INTRO`` (earlier module constants): from the registry, when asked for."""
    if name == "DOMAIN_TABS":
        return tuple(domain_tabs())
    if name == "DOMAIN_INTRO":
        from unimae.domains import get_domain

        return {domain: get_domain(domain).description for domain, _ in domain_tabs()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    from unimae.domains import get_domain

    settings = settings or AppSettings()
    outputs = outputs or OutputDirs(settings.output_ttl_s)
    examples = examples or {}
    tabs = domain_tabs()
    pickers: list[tuple[TaskPanel, Any, Any]] = []
    with gr.Blocks(title=settings.title, delete_cache=(900, max(900, settings.output_ttl_s))) as demo:
        gr.Markdown(
            "# UniMAE\nSegmentation, classification and anomaly maps from one masked-autoencoder core, a tab per kind "
            f"of image ({', '.join(title for _, title in tabs)}). Upload a file (or click an example), pick a task "
            "and press **Run**; downloads keep the file's own geometry."
        )
        with gr.Tabs():
            for domain, title in tabs:
                plugin = get_domain(domain)
                with gr.Tab(title, id=domain, elem_id=f"tab-{domain}"):
                    gr.Markdown(plugin.description or f"{title} files ({', '.join(plugin.extensions)}).")
                    with gr.Row():
                        with gr.Column(scale=1, min_width=260):
                            # no file_types filter: the browser would refuse a wrong file silently; check_upload
                            # says at once what is wrong and which tab reads it
                            file_input = gr.File(label=f"{title} file", type="filepath", elem_id=f"{domain}-file",
                                                 elem_classes=["unimae-upload"])  # fmt: skip
                            file_note = gr.Markdown("", elem_id=f"{domain}-file-note")
                            upload_check(file_input, file_note, domain)
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
                                        pickers.append((panel, *task_tab(panel, file_input, catalog)))
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                models_tab(catalog, settings, cache_note)

        def on_load(*keys):  # a page opened later sees the demo models built since start-up
            out: list[Any] = []
            for (panel, _, _), key in zip(pickers, keys):
                out.extend(picker(catalog, panel, key))
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
