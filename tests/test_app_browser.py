"""The app in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It opens the app, uploads files, runs tasks, checks that the results are visible (overlay image,
legend, slice slider sized to the volume, downloads, an error message for a bad file) and saves
screenshots. Skipped, with the reason, when ``/usr/bin/chromium`` or the ``playwright`` package is
missing (Playwright only drives the system Chromium here: no browser download).

Environment:
    UNIMAE_CHROMIUM: the Chromium executable (default: ``chromium`` on the PATH).
    UNIMAE_DEMO_PROFILE: demo models to serve, ``test`` (default, fast) or ``default`` (the app's own).
    UNIMAE_SCREENSHOT_DIR: also save one screenshot per tab there (the README's come from this test run
        with ``UNIMAE_DEMO_PROFILE=default UNIMAE_SCREENSHOT_DIR=docs/screenshots``).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
TAB_TITLES = {"ct": "CT", "fundus": "Fundus", "xray": "X-ray", "multispectral": "Multispectral"}
TASK_TITLES = {"segment": "Segmentation", "classify": "Classification", "anomaly": "Anomaly map"}
TIMEOUT_MS = 120_000


def _chromium() -> str | None:
    exe = os.environ.get("UNIMAE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return exe if exe and Path(exe).exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser_app(tmp_path_factory):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (install Debian's `chromium` package or set UNIMAE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` Python package is not installed (pip install playwright; no browser download needed)")
    from unimae.apps.app import AppSettings, build_app, launch_app
    from unimae.apps.demo_models import ensure_demo
    from unimae.apps.ui_models import ModelCatalog

    profile = os.environ.get("UNIMAE_DEMO_PROFILE", "test")
    root = tmp_path_factory.getbasetemp() / "unimae-demo-test" if profile == "test" else None
    bundle = ensure_demo(root, profile=profile, progress=False)
    demo = build_app(ModelCatalog(bundle.models), bundle.examples, settings=AppSettings(device="cpu"))
    _, url, _ = launch_app(demo, port=_free_port(), allowed_paths=[bundle.root], prevent_thread_lock=True, quiet=True)
    user_data = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # a persistent context is how Playwright passes --user-data-dir (a throw-away profile here)
        context = pw.chromium.launch_persistent_context(
            str(user_data), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1360, "height": 1000}, device_scale_factor=1,
        )  # fmt: skip
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#tab-ct", state="attached")
        yield {"page": page, "bundle": bundle, "url": url}
        context.close()
    demo.close()


def _open(page, domain: str, task: str) -> None:
    page.reload()  # a fresh page: no result or message of an earlier test
    page.wait_for_selector("#tab-ct", state="attached")
    page.get_by_role("tab", name=TAB_TITLES[domain], exact=True).click()
    page.locator(f"#tab-{domain}").get_by_role("tab", name=TASK_TITLES[task], exact=True).click()


def _upload(page, domain: str, path: Path) -> None:
    box = page.locator(f"#{domain}-file")
    clear = box.get_by_label("Clear")
    if clear.count():
        clear.first.click()
    box.locator("input[type=file]").set_input_files(str(path))
    box.get_by_label(path.name, exact=True).first.wait_for()  # the name cell (its text is split and elided)


def _run(page, domain: str, task: str) -> None:
    name = f"{domain}_{task}"
    page.locator(f"#{name}-run").click()
    page.locator(f"#{name}-files").get_by_text(".json").first.wait_for()  # the downloads come last
    page.locator(f"#{name}-image img").first.wait_for(state="visible")


def _wait_redrawn(page, name: str, before: str | None) -> None:
    """Wait until the result image of panel ``name`` shows another picture than ``before`` (its old src)."""
    page.wait_for_function(
        f"(old) => {{ const i = document.querySelector('#{name}-image img'); return i && i.src !== old; }}", arg=before
    )


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.png"
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000
    target = os.environ.get("UNIMAE_SCREENSHOT_DIR")
    if target:
        from PIL import Image

        Path(target).mkdir(parents=True, exist_ok=True)
        with Image.open(out) as im:  # lossless, recompressed (README screenshots stay well under 300 KB)
            im.convert("RGB").save(Path(target) / f"{name}.png", optimize=True)
    return out


def _example(bundle, domain: str, suffix: str) -> Path:
    return next(p for p in bundle.examples[domain] if p.name.endswith(suffix))


def test_fundus_segmentation_in_the_browser(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "fundus", "segment")
    _upload(page, "fundus", _example(bundle, "fundus", "lesions.png"))
    _run(page, "fundus", "segment")
    legend = page.locator("#fundus_segment-summary")
    assert "vessel" in legend.inner_text()
    downloads = page.locator("#fundus_segment-files").inner_text().split()
    assert "fundus_lesions_seg" in downloads and "fundus_lesions_overlay" in downloads
    img = page.locator("#fundus_segment-image img").first
    box = img.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100
    assert page.evaluate("(el) => el.naturalWidth", img.element_handle()) >= 128
    _screenshot(page, tmp_path, "fundus")


def test_ct_slice_viewer_in_the_browser(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "ct", "segment")
    src = _example(bundle, "ct", ".nii.gz")
    _upload(page, "ct", src)
    _run(page, "ct", "segment")
    slider = page.locator("#ct_segment-slice")
    slider.get_by_text("axial slice (of").wait_for()  # the slider is sized to the volume
    before = page.locator("#ct_segment-image img").first.get_attribute("src")
    page.locator("#tab-ct-segment").get_by_label("coronal").check()
    slider.get_by_text("coronal slice (of").wait_for()
    _wait_redrawn(page, "ct_segment", before)
    assert "liver" in page.locator("#ct_segment-summary").inner_text()
    _screenshot(page, tmp_path, "ct")


def test_xray_classification_and_error_message(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "xray", "classify")
    _upload(page, "xray", _example(bundle, "xray", ".dcm"))
    _run(page, "xray", "classify")
    label = page.locator("#xray_classify-summary")
    text = label.inner_text()
    assert "cardiomegaly" in text and "%" in text
    assert "SYNTHETIC" not in page.content()  # the DICOM's patient fields are never shown
    _screenshot(page, tmp_path, "xray")
    bad = tmp_path / "not_an_xray.png"
    bad.write_text("plain text, not a PNG")
    _upload(page, "xray", bad)
    page.locator("#xray_classify-run").click()
    page.get_by_text("not_an_xray.png:").first.wait_for()  # the readable error, as a toast


def test_multispectral_segmentation_composites_in_the_browser(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "multispectral", "segment")
    _upload(page, "multispectral", _example(bundle, "multispectral", "landcover.tif"))
    _run(page, "multispectral", "segment")
    legend = page.locator("#multispectral_segment-summary").inner_text()
    assert "water" in legend and "forest" in legend  # land cover has no background: every class is drawn
    downloads = page.locator("#multispectral_segment-files").inner_text().split()
    assert "s2_landcover_seg" in downloads and ".tif" in downloads
    _screenshot(page, tmp_path, "multispectral")
    before = page.locator("#multispectral_segment-image img").first.get_attribute("src")
    page.locator("#tab-multispectral-segment").get_by_label("false colour (NIR)").check()
    _wait_redrawn(page, "multispectral_segment", before)


def test_fundus_anomaly_threshold_in_the_browser(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "fundus", "anomaly")
    _upload(page, "fundus", _example(bundle, "fundus", "lesions.png"))
    _run(page, "fundus", "anomaly")
    summary = page.locator("#fundus_anomaly-summary")
    assert "image score" in summary.inner_text()
    box = page.locator("#fundus_anomaly-threshold input[type=number]")
    box.wait_for()
    page.wait_for_function("() => { const b = document.querySelector('#fundus_anomaly-threshold input[type=number]');"
                           " return b && parseFloat(b.value) > 0; }")  # set to the calibrated threshold
    _screenshot(page, tmp_path, "fundus_anomaly")
    before = page.locator("#fundus_anomaly-image img").first.get_attribute("src")
    slider = page.locator("#fundus_anomaly-threshold input[type=range]")
    slider.focus()
    page.keyboard.press("End")  # the highest threshold: nothing flagged
    slider.dispatch_event("pointerup")
    slider.dispatch_event("mouseup")
    _wait_redrawn(page, "fundus_anomaly", before)
    page.get_by_text("flagged area: 0.0 %").first.wait_for()
