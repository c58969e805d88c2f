"""The app in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It opens the app, uploads files, runs tasks, checks that the results are visible (overlay image,
legend, slice slider sized to the volume, downloads, an error message for a bad file) and saves
screenshots. Skipped, with the reason, when ``/usr/bin/chromium`` or the ``playwright`` package is
missing (Playwright only drives the system Chromium here: no browser download).

The synthetic-data panels run on the demo models built from synthetic data (never the shipped ones, so their
checks do not depend on what is shipped). The real-data panels (``test_real_*``) run the demo models shipped in
``domains/<domain>/demo/`` on real files from ``../shared/real`` and check the answer against the file's own label
(vessel Dice against the manual DRIVE mask, the EuroSAT class of tiles, the X-ray verdict of normal and pneumonia
films); each skips with the reason when its model or the real data is absent.

Environment:
    UNIMAE_CHROMIUM: the Chromium executable (default: ``chromium`` on the PATH).
    UNIMAE_DEMO_PROFILE: synthetic demo models to serve, ``test`` (default, fast) or ``default`` (the app's own).
    UNIMAE_SCREENSHOT_DIR: also save one screenshot per tab there (the README's come from this test run
        with ``UNIMAE_DEMO_PROFILE=default UNIMAE_SCREENSHOT_DIR=docs/screenshots``; the real-data panels' alone with
        ``UNIMAE_SCREENSHOT_DIR=docs/screenshots pytest tests/test_app_browser.py -k real``).
    UNIMAE_REAL_DATA: the real data folder (default: ``../shared/real`` beside the repository).
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


REAL = Path(os.environ.get("UNIMAE_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "real")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium context (a throw-away profile), or a skip with the reason."""
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (install Debian's `chromium` package or set UNIMAE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` Python package is not installed (pip install playwright; no browser download needed)")
    user_data = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # a persistent context is how Playwright passes --user-data-dir (a throw-away profile here)
        context = pw.chromium.launch_persistent_context(
            str(user_data), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1360, "height": 1000}, device_scale_factor=1,
        )  # fmt: skip
        yield context
        context.close()


def _serve(context, catalog, examples, allowed):
    from unimae.apps.app import AppSettings, build_app, launch_app

    demo = build_app(catalog, examples, settings=AppSettings(device="cpu"))
    _, url, _ = launch_app(demo, port=_free_port(), allowed_paths=allowed, prevent_thread_lock=True, quiet=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.unimae_requests = []  # every URL the page asks for: the app must never send the browser elsewhere
    page.on("request", lambda request: page.unimae_requests.append(request.url))
    page.goto(url)
    page.wait_for_selector("#tab-ct", state="attached")
    return demo, page, url


@pytest.fixture(scope="module")
def browser_app(browser, tmp_path_factory):
    from unimae.apps.demo_models import ensure_demo
    from unimae.apps.ui_models import ModelCatalog

    profile = os.environ.get("UNIMAE_DEMO_PROFILE", "test")
    root = tmp_path_factory.getbasetemp() / "unimae-demo-test" if profile == "test" else None
    bundle = ensure_demo(root, profile=profile, progress=False, shipped={})  # the synthetic-data models only
    demo, page, url = _serve(browser, ModelCatalog(bundle.models), bundle.examples, bundle.paths)
    yield {"page": page, "bundle": bundle, "url": url}
    page.close()
    demo.close()


@pytest.fixture(scope="module")
def real_app(browser):
    """The app on the shipped real-data demo models alone, and the real data folder."""
    from unimae.apps.demo_models import shipped_models
    from unimae.apps.ui_models import ModelCatalog

    if not REAL.is_dir():
        pytest.skip(f"no real data at {REAL} (set UNIMAE_REAL_DATA; see ../shared/real/README.md)")
    shipped, problems = shipped_models()
    assert not problems, problems  # a shipped model that does not load is a defect, not a reason to skip
    if not shipped:
        pytest.skip("no demo model trained on real data is shipped yet (domains/<domain>/demo/<task>.json)")
    demo, page, url = _serve(browser, ModelCatalog(shipped), {}, [])
    yield {"page": page, "shipped": shipped, "url": url}
    page.close()
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


def test_the_page_loads_nothing_from_the_network(browser_app):
    from urllib.parse import urlparse

    page = browser_app["page"]
    _open(page, "multispectral", "segment")
    page.wait_for_load_state("load")  # (never "networkidle": the page keeps its event stream to the server open)
    assert page.evaluate("document.fonts.ready.then(() => document.fonts.size >= 0)")  # fonts fetched, if any
    assert page.unimae_requests, "no request was recorded"
    outside = sorted({u for u in page.unimae_requests if urlparse(u).scheme not in ("data", "blob")
                      and urlparse(u).hostname not in ("127.0.0.1", "localhost", "::1")})  # fmt: skip
    assert outside == [], outside


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


def _bar_max(page, name: str) -> str:
    return page.locator(f"#{name}-summary .unimae-bar-labels span").last.inner_text()


def test_fundus_anomaly_threshold_in_the_browser(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "fundus", "anomaly")
    _upload(page, "fundus", _example(bundle, "fundus", "lesions.png"))
    _run(page, "fundus", "anomaly")
    summary = page.locator("#fundus_anomaly-summary")
    assert "image score" in summary.inner_text()
    box = page.locator("#fundus_anomaly-threshold input")
    box.wait_for()
    page.wait_for_function("() => { const b = document.querySelector('#fundus_anomaly-threshold input');"
                           " return b && parseFloat(b.value) > 0; }")  # set to the calibrated threshold
    calibrated = float(box.input_value())
    scale = page.locator("#fundus_anomaly-threshold-scale input[type=range]")
    assert float(scale.input_value()) == pytest.approx(0.5, abs=0.01)  # the calibrated value sits mid-scale
    top = _bar_max(page, "fundus_anomaly")
    _screenshot(page, tmp_path, "fundus_anomaly")
    # a typed threshold applies on Enter
    before = page.locator("#fundus_anomaly-image img").first.get_attribute("src")
    box.fill("1000000")
    box.press("Enter")
    _wait_redrawn(page, "fundus_anomaly", before)
    page.get_by_text("flagged area: 0.0 %").first.wait_for()
    page.get_by_text("pixel threshold: 1e+06").first.wait_for()
    page.wait_for_function("() => parseFloat(document.querySelector('#fundus_anomaly-threshold-scale "
                           "input[type=range]').value) > 0.99")  # the scale follows the typed value
    assert _bar_max(page, "fundus_anomaly") == top  # the colour bar keeps its maximum
    # the scale moves the threshold, and the box shows it
    before = page.locator("#fundus_anomaly-image img").first.get_attribute("src")
    scale.focus()
    page.keyboard.press("Home")  # threshold 0: every scored pixel flagged
    scale.dispatch_event("pointerup")
    scale.dispatch_event("mouseup")
    _wait_redrawn(page, "fundus_anomaly", before)
    page.wait_for_function("() => parseFloat(document.querySelector('#fundus_anomaly-threshold input').value) === 0")
    summary.get_by_text("pixel threshold: 0", exact=True).wait_for()
    assert "flagged area: 0.0 %" not in summary.inner_text() and _bar_max(page, "fundus_anomaly") == top
    assert calibrated > 0


def test_wrong_file_on_a_tab_gets_a_message_at_once(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "ct", "segment")
    png = tmp_path / "chest_film_000123.png"
    png.write_bytes(_example(bundle, "xray", "normal.png").read_bytes())
    page.locator("#ct-file input[type=file]").set_input_files(str(png))
    note = page.locator("#ct-file-note")
    note.get_by_text("not something the CT tab reads").wait_for()  # no run needed
    assert "chest_film_000123.png" in note.inner_text() and "X-ray" in note.inner_text()
    assert page.locator("#ct-file .stem").count() == 0  # taken out of the upload box


def test_long_upload_names_are_shown_in_full(browser_app, tmp_path):
    page, bundle = browser_app["page"], browser_app["bundle"]
    _open(page, "fundus", "segment")
    long = tmp_path / ("000123_" + "right_eye_macula_centred_photograph_" * 3 + "final.png")
    long.write_bytes(_example(bundle, "fundus", "healthy.png").read_bytes())
    _upload(page, "fundus", long)
    stem = page.locator("#fundus-file .stem").first
    assert stem.inner_text() == long.stem
    clipped = page.evaluate("(el) => el.scrollWidth > el.clientWidth + 1", stem.element_handle())
    assert not clipped  # wrapped, not cut to "000… .png"
    assert page.locator("#fundus_segment-card").get_by_text("not meaningful").count() == 1  # before a run


# ------------------------------------------------------------------------------------------------
# the real-data panels on real files (shipped models, ../shared/real)
# ------------------------------------------------------------------------------------------------
def _need(real_app, name: str) -> Path:
    if name not in real_app["shipped"]:
        pytest.skip(f"no shipped real-data demo model {name} yet (domains/{name.replace('_', '/demo/', 1)}.json)")
    return real_app["shipped"][name]


def _card(name: str) -> dict:
    import json

    from unimae.apps.demo_models import shipped_models

    return json.loads(shipped_models()[0][name].read_text())["model_card"]


def _held_out(card: dict) -> set[str]:
    """Files (relative to the real data folder) the model card names as held out, if it names any."""
    found: set[str] = set()

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if "held_out" in str(k) and isinstance(v, (list, tuple)):
                    found.update(str(p) for p in v)
                else:
                    walk(v)

    walk(card)
    return found


def _rows(domain: str) -> list[dict]:
    import csv

    with open(REAL / domain / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _prefer_held_out(rows: list[dict], key: str, card: dict, domain: str) -> list[dict]:
    held = _held_out(card)
    return sorted(rows, key=lambda r: (f"{domain}/{r[key]}" not in held and r[key] not in held, r[key]))


def _predicted(page, name: str) -> str:
    status = page.locator(f"#{name}-status")
    status.get_by_text("predicted:").wait_for()
    return status.inner_text().split("predicted:")[1].strip().splitlines()[0].strip()


def _card_shown(page, name: str) -> None:
    card = page.locator(f"#{name}-card")
    card.get_by_text("Model card").wait_for()
    text = card.inner_text()
    assert "licence" in text and ("held-out" in text or "cross-validated" in text) and "intended use" in text


def _download(page, name: str, suffix: str) -> bytes:
    link = page.locator(f"#{name}-files tr").filter(has_text=suffix).locator("a").first
    href = link.get_attribute("href")
    url = href if href.startswith("http") else page.url.rstrip("/") + "/" + href.lstrip("/")
    return page.request.get(url).body()


def test_real_fundus_vessels_match_the_manual_mask(real_app, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    _need(real_app, "fundus_segment")
    page = real_app["page"]
    row = _prefer_held_out(_rows("fundus"), "image", _card("fundus_segment"), "fundus")[0]
    image = REAL / "fundus" / row["image"]
    _open(page, "fundus", "segment")
    _card_shown(page, "fundus_segment")
    _upload(page, "fundus", image)
    _run(page, "fundus", "segment")
    assert "vessel" in page.locator("#fundus_segment-summary").inner_text()
    seg = np.asarray(Image.open(io.BytesIO(_download(page, "fundus_segment", "_seg")))) > 0
    truth = np.asarray(Image.open(REAL / "fundus" / row["mask"]).convert("L")) > 127
    fov = np.asarray(Image.open(REAL / "fundus" / row["fov_mask"]).convert("L")) > 127
    assert seg.shape == truth.shape  # on the photograph's own grid
    seg, truth = seg & fov, truth & fov
    dice = 2.0 * float((seg & truth).sum()) / max(float(seg.sum() + truth.sum()), 1.0)
    assert dice > 0.6, f"vessel Dice {dice:.3f} on {row['image']}"
    _screenshot(page, tmp_path, "fundus_real")


def test_real_eurosat_tiles_get_their_class(real_app, tmp_path):
    _need(real_app, "multispectral_classify")
    page = real_app["page"]
    rows = _prefer_held_out(_rows("multispectral"), "path", _card("multispectral_classify"), "multispectral")
    picks: dict[str, dict] = {}
    for r in rows:  # one tile of each of four distinct classes
        if r["class_name"] not in picks:  # one held-out tile of each of the ten classes
            picks[r["class_name"]] = r
    _open(page, "multispectral", "classify")
    _card_shown(page, "multispectral_classify")
    wrong = []
    for cls, r in sorted(picks.items()):
        _open(page, "multispectral", "classify")  # a fresh page per tile: no state of the previous one
        _upload(page, "multispectral", REAL / "multispectral" / r["path"])
        before = page.locator("#multispectral_classify-status").inner_text()
        page.locator("#multispectral_classify-run").click()
        page.wait_for_function("([old, name]) => { const s = document.querySelector('#multispectral_classify-status');"
                               " return s && s.innerText !== old && s.innerText.includes('predicted:')"
                               " && s.innerText.includes(name); }", arg=[before, Path(r["path"]).name])  # fmt: skip
        got = _predicted(page, "multispectral_classify")
        if got != cls:
            wrong.append(f"{r['path']}: {got}")
        if cls == "Forest":
            _screenshot(page, tmp_path, "multispectral_real")
    # chance is 1 in 10. A model of 4 folds is shown its held-out tiles (its held-out accuracy is about 0.73:
    # at most 5 wrong); the shipped model is trained on every tile (accuracy 0.96 on them through the predictor,
    # cross-validated 0.73), so at most 3 wrong: a band-order or scaling fault on the app's path brings it to chance
    limit = 5 if _held_out(_card("multispectral_classify")) else 3
    assert len(picks) == 10 and len(wrong) <= limit, f"EuroSAT tiles classified wrongly: {wrong}"


def _xray_films(n: int, model: str = "xray_classify") -> dict[str, list[dict]]:
    """``n`` films per label, those ``model``'s card names as held out first."""
    rows = _prefer_held_out(_rows("xray"), "path", _card(model), "xray")
    return {label: [r for r in rows if r["label"] == label][:n] for label in ("0", "1")}


def test_real_xray_verdicts_of_normal_and_pneumonia_films(real_app, tmp_path):
    path = _need(real_app, "xray_classify")
    import json

    classes = json.loads(path.read_text())["class_names"]
    assert len(classes) == 2, classes  # the real demo is a binary no-finding vs pneumonia classifier
    pneumonia = next(c for c in classes if "pneumonia" in c.lower())
    page = real_app["page"]
    _open(page, "xray", "classify")
    _card_shown(page, "xray_classify")
    verdicts: dict[str, list[str]] = {"0": [], "1": []}
    for label, films in _xray_films(8).items():
        for r in films:
            _open(page, "xray", "classify")  # a fresh page per film: no state of the previous one
            _upload(page, "xray", REAL / "xray" / r["path"])
            before = page.locator("#xray_classify-status").inner_text()
            page.locator("#xray_classify-run").click()
            page.wait_for_function("(old) => { const s = document.querySelector('#xray_classify-status');"
                                   " return s && s.innerText !== old && s.innerText.includes('predicted:'); }",
                                   arg=before)  # fmt: skip
            verdicts[label].append(_predicted(page, "xray_classify"))
            if label == "1" and len(verdicts[label]) == 1:
                _screenshot(page, tmp_path, "xray_real")
    normal_ok = sum(v != pneumonia for v in verdicts["0"])
    pneumonia_ok = sum(v == pneumonia for v in verdicts["1"])
    # 8 films per class (chance: 8 of 16 right). A model of 4 folds is shown its held-out films (AUROC about 0.84,
    # leaning to pneumonia at the 0.5 cut): at least 9 right. The shipped model is trained on every film and gets
    # 12 of these 16 right through the predictor (it underfits: AUROC 0.83 on its own training films): at least 10
    need = 9 if _held_out(_card("xray_classify")) else 10
    assert normal_ok + pneumonia_ok >= need and min(normal_ok, pneumonia_ok) >= 2, (
        f"verdicts: normal films {verdicts['0']}, pneumonia films {verdicts['1']}")


def test_real_xray_anomaly_is_not_inverted(real_app, tmp_path):
    import re

    _need(real_app, "xray_anomaly")
    page = real_app["page"]
    _open(page, "xray", "anomaly")
    _card_shown(page, "xray_anomaly")
    scores: dict[str, list[float]] = {"0": [], "1": []}
    for label, films in _xray_films(8, "xray_anomaly").items():
        for r in films:
            _open(page, "xray", "anomaly")  # a fresh page per film: no state of the previous one
            _upload(page, "xray", REAL / "xray" / r["path"])
            before = page.locator("#xray_anomaly-status").inner_text()
            summary_before = page.locator("#xray_anomaly-summary").inner_text()
            page.locator("#xray_anomaly-run").click()
            page.wait_for_function("([old, name]) => { const s = document.querySelector('#xray_anomaly-status');"
                                   " return s && s.innerText !== old && s.innerText.includes(name); }",
                                   arg=[before, Path(r["path"]).name])  # fmt: skip
            page.locator("#xray_anomaly-summary").get_by_text("image score").wait_for()
            page.wait_for_function("(old) => { const s = document.querySelector('#xray_anomaly-summary');"
                                   " return s && s.innerText !== old; }", arg=summary_before)  # a fresh summary
            text = page.locator("#xray_anomaly-summary").inner_text()
            # the card marks this model not reliable: the map and score are shown, the verdict is withheld
            assert "no verdict" in text and "within normal range" not in text, text
            assert "NOT RELIABLE" in page.locator("#xray_anomaly-status").inner_text()
            found = re.search(r"image score\s*([0-9.eE+-]+)", text)
            assert found, f"no image score in the summary: {text!r}"
            scores[label].append(float(found.group(1)))
            if label == "1" and len(scores[label]) == 1:
                _screenshot(page, tmp_path, "xray_anomaly_real")
    # not inverted: over 8 x 8 held-out pairs, pneumonia films score higher than normal ones in most pairs (the
    # model's held-out image AUROC is about 0.8; an inverted score would give about 0.2)
    pairs = [(p > q) + 0.5 * (p == q) for p in scores["1"] for q in scores["0"]]
    assert sum(pairs) / len(pairs) > 0.6, f"pneumonia films do not score above normal ones: {scores}"
