"""The widgets and events of the app's tabs: one task tab (model picker, result, display controls), the upload
check of a domain tab, and the models tab. :func:`unimae.apps.app.build_app` lays them out, a tab per
registered domain; what a domain's tab offers comes from its plugin (``display_kind``, ``windows``,
``composites``), what happens on a click from :class:`~unimae.apps.ui_panel.TaskPanel`.
"""

from __future__ import annotations

from typing import Any

from unimae.apps.ui_panel import TASK_TITLES, AppSettings, TaskPanel, device_summary
from unimae.core.tasks import app_order

__all__ = ["TASK_HELP", "task_tab", "picker", "upload_check", "models_tab"]

#: each task's help line (:attr:`~unimae.core.tasks.base.Task.help`), by name (kept for old imports)
TASK_HELP = {t.name: t.help for t in app_order()}

def task_tab(panel: TaskPanel, file_input: Any, catalog: Any) -> tuple[Any, Any]:
    """The widgets and events of one task tab (inside the current ``gr.Tab``)."""
    import gradio as gr

    domain, task, plugin = panel.domain, panel.task, panel.plugin
    task_def = panel.task_def
    volume = plugin.display_kind == "volume"
    composites = dict(plugin.composites)  # a scene viewer's band composites (e.g. natural / false colour)
    windows = dict(plugin.windows)  # a volume viewer's intensity windows (e.g. CT's HU presets)
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
            if task_def.image_labels:
                summary = gr.Label(label=task_def.summary_label, num_top_classes=10, elem_id=f"{panel.name}-summary")
            else:
                summary = gr.HTML(label=task_def.summary_label, elem_id=f"{panel.name}-summary")
            threshold = scale = None
            if task_def.overlay_opacity is not None:
                kw["opacity"] = gr.Slider(0.0, 1.0, value=task_def.overlay_opacity, step=0.05, label="overlay opacity")
            if task_def.calibrated:  # a scale with the calibrated threshold in the middle, and the value itself
                scale = gr.Slider(0.0, 1.0, value=0.5, step=0.001, label="threshold scale (middle: calibrated)",
                                  interactive=False, elem_id=f"{panel.name}-threshold-scale",
                                  elem_classes=["unimae-scale"])  # fmt: skip
                threshold = gr.Number(None, label="pixel threshold (no model re-run; type a value and press Enter)",
                                      minimum=0, interactive=False, elem_id=f"{panel.name}-threshold")  # fmt: skip
            if volume:
                kw["plane"] = gr.Radio(["axial", "coronal", "sagittal"], value="axial", label="view")
            if volume and windows:
                first = plugin.default_window if plugin.default_window in windows else next(iter(windows))
                unit = f" ({plugin.window_unit})" if plugin.window_unit else ""
                with gr.Row():
                    kw["window"] = gr.Dropdown([*windows, "custom"], value=first, label="window preset",
                                               min_width=140)  # fmt: skip
                    kw["center"] = gr.Number(windows[first][0], label=f"level / center{unit}", min_width=90)
                    kw["width"] = gr.Number(windows[first][1], label=f"width{unit}", minimum=1, min_width=90)
            if composites:
                kw["composite"] = gr.Radio([(label, name) for name, label in composites.items()],
                                           value=next(iter(composites)), label="composite")  # fmt: skip
            tta_box = None
            if task_def.symmetric:  # tasks that can average over the domain's symmetries at inference
                tta_box = gr.Checkbox(True, label="test-time augmentation, where the model records one (off: one pass, faster)",
                                      elem_id=f"{panel.name}-tta")  # fmt: skip
            status = gr.Markdown(elem_id=f"{panel.name}-status")
            files = gr.File(label="downloads (source geometry)", file_count="multiple", interactive=False,
                            elem_id=f"{panel.name}-files")  # fmt: skip
            with gr.Accordion("report (JSON)", open=False):
                report = gr.JSON(label="report")
    view = gr.State(None, time_to_live=panel.settings.output_ttl_s)

    def run(file: str | None, model: str | None = None, opacity: float = 0.5, plane: str = "axial",
            window: str = "soft_tissue", center: float = 40.0, width: float = 400.0, composite: str = "natural",
            threshold: float | None = None, tta: bool = True, progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        return panel.run(file, model, opacity, plane, window, center, width, composite, threshold=threshold,
                         progress=progress, tta=bool(tta))  # fmt: skip

    run.__name__ = panel.name
    run.__doc__ = f"{domain} {task}: returns the overlay image, the summary, the downloads, the report and a status line."
    outputs = [image, summary, files, report, status, view]
    run_kw = dict(kw)
    if task_def.calibrated:  # API callers may override the calibrated pixel threshold; the page uses its slider
        run_kw["threshold"] = gr.Number(value=None, visible=False, label="threshold")
    if tta_box is not None:
        run_kw["tta"] = tta_box
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
    if "composite" in kw:
        fire_redraw(kw["composite"].change)
    if "plane" in kw:

        def on_plane(v, plane="axial"):
            return panel.controls(v, plane)[0]

        kw["plane"].change(on_plane, inputs=[view, kw["plane"]], outputs=[index], api_visibility="private",
                           show_progress="hidden").then(redraw, inputs=[view], inputs_kwargs=draw_kw, outputs=[image],
                                                        api_visibility="private", show_progress="hidden")  # fmt: skip
    if "window" in kw:

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
        return picker(catalog, panel, key)

    refresh.click(rescan, inputs=[model], outputs=[model, card], api_visibility="private", show_progress="hidden")
    model.change(panel.card, inputs=[model], outputs=[card], api_visibility="private", show_progress="hidden")
    return model, card


def picker(catalog: Any, panel: TaskPanel, key: str | None) -> tuple[Any, str]:
    """The model picker's choices (models built after start-up appear) and the card of the model picked."""
    import gradio as gr

    keys = [k for _, k in catalog.choices(panel.domain, panel.task)]
    if key not in keys:
        key = catalog.default_key(panel.domain, panel.task)
    return gr.update(choices=catalog.choices(panel.domain, panel.task), value=key), panel.card(key)


def upload_check(file_input: Any, note: Any, domain: str) -> None:
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


def models_tab(catalog: Any, settings: AppSettings, cache_note: str) -> None:
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
