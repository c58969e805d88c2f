"""Shipped demo models (real data): found in the domain packages, loaded with no build, labelled with their model card.

Every model here is a tiny one trained inside the test (a few steps of the ``test`` demo recipe) and written into a
temporary folder laid out like ``domains/<domain>/demo/``; the loader is pointed there. Nothing is written into the
project's own ``domains/``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unimae.apps import demo_models as dm
from unimae.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

CARD = {
    "trained_on": "real",
    "data": {"name": "NIH ChestX-ray14 (subset)", "source": "NIH Clinical Center", "licence": "no restrictions",
             "citation": "Wang et al. 2017"},
    "metrics": {"split": "patient-wise hold-out", "model": {"auroc": 0.81}, "baseline_cnn": {"auroc": 0.77}},
    "intended_use": "demonstration, not for diagnosis",
    "not_for": "clinical use",
    "caveats": "the pneumonia films of this subset are darker overall",
    "retrain": "python scripts/train_real_demo.py xray classify --data ../shared/real",
}  # fmt: skip


def _spec(name: str, steps: int = 2) -> dm.DemoSpec:
    spec = next(s for s in dm.PROFILES["test"].specs if s.name == name)
    return replace(spec, train={**spec.train, "max_steps": steps, "val_every": steps, "save_every": steps})


def _ship(root: Path, domain: str, task: str, card: dict | None = CARD, fp16: bool = True) -> Path:
    """Train a tiny model and write it as ``root/<domain>/demo/<task>.{json,safetensors}`` (fp16 weights)."""
    from safetensors.torch import load_file, save_file

    work = root.parent / f"train-{domain}-{task}"
    dm._train_one(_spec(f"{domain}_{task}"), work, 0, None)
    meta = json.loads((work / "best.json").read_text())
    if card is not None:
        meta["model_card"] = card
    dest = root / domain / "demo"
    dest.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(work / "best.safetensors"))
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(dest / f"{task}.safetensors"))
    (dest / f"{task}.json").write_text(json.dumps(meta))
    return dest / f"{task}.json"


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory):
    """A folder laid out like ``domains/``: a real-data (by its card) X-ray classifier with fp16 weights."""
    root = tmp_path_factory.mktemp("shipped") / "domains"
    _ship(root, "xray", "classify")
    return root


def test_shipped_models_are_found_where_the_domain_keeps_them(shipped_dir, monkeypatch):
    found, problems = dm.shipped_models(shipped_dir)
    assert found == {"xray_classify": shipped_dir / "xray" / "demo" / "classify.json"} and problems == []
    monkeypatch.setattr(dm, "shipped_root", lambda: shipped_dir)
    prof, shipped, build = dm._plan("default", None)  # the app's plan: this one is not built
    assert shipped == found and "xray_classify" not in build and len(build) == len(dm.DEMO_TASKS) - 1
    assert dm._plan("test", None)[1] == {}  # the test profile builds everything unless told otherwise
    assert dm.demo_cache_dir("default", build=build) != dm.demo_cache_dir("default")  # another set, another cache


def test_the_real_shipped_folder_is_the_domain_package():
    assert dm.shipped_root() == (ROOT / "domains").resolve()
    found, problems = dm.shipped_models()
    assert problems == [], problems  # what is committed in domains/*/demo/ must load
    for name, path in found.items():
        domain, task = name.split("_")
        assert path == dm.shipped_root() / domain / "demo" / f"{task}.json"


def test_fp16_shipped_weights_load_as_fp32(shipped_dir):
    from safetensors.torch import load_file

    from unimae.apps.predict import load_predictor

    path = shipped_dir / "xray" / "demo" / "classify.json"
    stored = load_file(str(path.with_suffix(".safetensors")))
    assert any(t.dtype == torch.float16 for t in stored.values())
    predictor = load_predictor(path, device="cpu", precision="fp32")
    dtypes = {p.dtype for p in predictor.model.parameters()}
    assert dtypes == {torch.float32}


def test_a_broken_shipped_model_is_reported_not_used(tmp_path):
    root = tmp_path / "domains"
    good = _ship(root, "xray", "classify")
    meta = json.loads(good.read_text())
    no_card = root / "fundus" / "demo"
    no_card.mkdir(parents=True)
    (no_card / "classify.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "model_card"}))
    (no_card / "classify.safetensors").write_bytes(good.with_suffix(".safetensors").read_bytes())
    wrong_place = root / "xray" / "demo" / "segment.json"  # an X-ray classifier where the segmenter belongs
    wrong_place.write_text(good.read_text())
    wrong_place.with_suffix(".safetensors").write_bytes(good.with_suffix(".safetensors").read_bytes())
    half = {**meta, "model_card": {k: v for k, v in CARD.items() if k != "retrain"}}
    (root / "xray" / "demo" / "anomaly.json").write_text(json.dumps(half))  # no weights either
    found, problems = dm.shipped_models(root)
    assert list(found) == ["xray_classify"]
    text = " | ".join(problems)
    assert "no model_card" in text and "in the place of xray segment" in text and "anomaly.safetensors missing" in text
    with pytest.raises(InputError, match="lacks retrain"):
        dm.check_model_card(half["model_card"])
    with pytest.raises(InputError, match="trained_on"):
        dm.check_model_card({**CARD, "trained_on": "both"})


def test_shipped_model_skips_its_build_and_carries_its_card_into_the_app(shipped_dir, tmp_path, monkeypatch):
    from unimae.apps.ui_models import ModelCatalog
    from unimae.apps.ui_panel import AppSettings, OutputDirs, TaskPanel

    test = dm.PROFILES["test"]
    two = replace(test, specs=tuple(s for s in test.specs if s.name in ("xray_classify", "fundus_classify")))
    monkeypatch.setitem(dm.PROFILES, "test", two)
    shipped = {"xray_classify": shipped_dir / "xray" / "demo" / "classify.json"}
    bundle = dm.ensure_demo(tmp_path / "cache" / "demo", profile="test", progress=False, shipped=shipped)
    assert bundle.shipped == shipped and bundle.models["xray_classify"] == shipped["xray_classify"]
    assert list(bundle.manifest["models"]) == ["fundus_classify"]  # the only model built
    built = json.loads(bundle.models["fundus_classify"].read_text())["model_card"]
    assert built["trained_on"] == "synthetic" and dm.check_model_card(built)
    assert bundle.examples["xray"] and all(p.is_file() for ps in bundle.examples.values() for p in ps)

    catalog = ModelCatalog(bundle.models)
    real = catalog.resolve(None, "xray", "classify")
    synthetic = catalog.resolve(None, "fundus", "classify")
    assert (real.trained_on, synthetic.trained_on) == ("real", "synthetic")
    assert "real data (NIH ChestX-ray14 (subset))" in real.label and "synthetic data" in synthetic.label
    assert ["real", "synthetic"] == sorted(row[5] for row in catalog.rows())

    outputs = OutputDirs(60, root=tmp_path)
    settings = AppSettings(device="cpu", precision="fp32")
    xray = TaskPanel("xray", "classify", catalog, outputs, settings)
    card = xray.card("demo/xray_classify")
    for text in ("Model card", "NIH ChestX-ray14", "no restrictions", "Wang et al. 2017", "auroc 0.81",
                 "baseline_cnn", "0.77", "not for diagnosis", "scripts/train_real_demo.py",
                 "caveats: the pneumonia films of this subset are darker overall"):  # fmt: skip
        assert text in card, text
    assert "not meaningful" not in card
    src = next(p for p in bundle.examples["xray"] if p.suffix == ".png")
    _, summary, files, report, status, _ = xray.run(str(src))
    assert report["trained_on"] == "real" and report["model_data"] == "NIH ChestX-ray14 (subset)"
    assert "not for diagnosis" in status and "not meaningful" not in status
    assert sorted(summary) == sorted(json.loads(shipped["xray_classify"].read_text())["class_names"])

    fundus = TaskPanel("fundus", "classify", catalog, outputs, settings)
    notice = "demo model trained on synthetic images: its output on real images is not meaningful"
    assert notice in fundus.card(None)  # before a run
    src = next(p for p in bundle.examples["fundus"] if p.suffix == ".png")
    _, _, files, report, status, _ = fundus.run(str(src))
    assert notice in status and report["trained_on"] == "synthetic"  # after a run
    on_disk = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert on_disk["trained_on"] == "synthetic"


def test_panels_of_models_still_being_built_say_so(shipped_dir):
    from unimae.apps.ui_models import ModelCatalog

    shipped = {"xray_classify": shipped_dir / "xray" / "demo" / "classify.json"}
    catalog = ModelCatalog(shipped, pending=["fundus_classify", "xray_classify"])
    assert catalog.pending == {"fundus_classify"}  # a shipped model is never pending
    with pytest.raises(InputError, match="still being built"):
        catalog.resolve(None, "fundus", "classify")
    with pytest.raises(InputError, match="still being built"):
        catalog.resolve("demo/fundus_classify", "fundus", "classify")
    catalog.build_ended("the build stopped with status 1")
    with pytest.raises(InputError, match="could not be built .*status 1"):
        catalog.resolve(None, "fundus", "classify")
    catalog.add_demo({"fundus_classify": shipped["xray_classify"]})  # any checkpoint will do for the bookkeeping
    assert catalog.pending == set() and "demo/fundus_classify" in [e.key for e in catalog.entries()]


def test_pyproject_ships_the_demo_models_as_package_data():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = conf.get("package-data", {})
    for domain in ("ct", "fundus", "xray", "multispectral"):
        package = f"unimae.domains.{domain}"
        assert package in conf["packages"]
        assert {"demo/*.safetensors", "demo/*.json"} <= set(data.get(package, [])), package


def test_a_model_its_card_marks_not_reliable_gets_no_verdict_in_the_app_and_a_warning_from_predict(tmp_path, capsys):
    """``reliable: false`` on the card (the benchmark found the recipe does not work): the app shows the anomaly map
    but withholds the calibrated verdict and outline until the user types a threshold; ``unimae predict`` warns.
    The same model with the key absent keeps both."""
    from unimae.apps.cli import main
    from unimae.apps.ui_models import ModelCatalog
    from unimae.apps.ui_panel import AppSettings, OutputDirs, TaskPanel

    caveat = "ranks pneumonia films below normal ones on 7 of 10 seeds"
    flagged = _ship(tmp_path / "flagged" / "domains", "xray", "anomaly", card={**CARD, "caveats": caveat, "reliable": False})
    meta = json.loads(flagged.read_text())
    assert meta["anomaly"]["image_threshold"] is not None and meta["anomaly"]["pixel_threshold"] is not None
    plain = tmp_path / "plain.json"  # the same weights, the card without the key
    plain.write_text(json.dumps({**meta, "model_card": CARD}))
    (tmp_path / "plain.safetensors").write_bytes(flagged.with_suffix(".safetensors").read_bytes())
    _, examples = dm.ensure_examples("test", tmp_path / "examples")
    src = next(p for p in examples["xray"] if p.suffix == ".png")
    outputs, settings = OutputDirs(60, root=tmp_path), AppSettings(device="cpu", precision="fp32")

    panel = TaskPanel("xray", "anomaly", ModelCatalog({"xray_anomaly": flagged}), outputs, settings)
    assert "Not reliable" in panel.card(None) and caveat in panel.card(None)
    _, summary, files, report, status, view = panel.run(str(src))
    assert view.pred.heatmap is not None and view.mask is None and view.pred.anomaly_mask is None
    assert report["is_anomalous"] is None and caveat in report["verdict_withheld"]
    assert "no verdict: this model is marked not reliable" in summary and "anomalous<" not in summary
    assert "NOT RELIABLE" in status and not any("anomaly_mask" in f for f in files)
    _, scale, box = panel.controls(view)
    assert scale["value"] == 1.0  # the scale's right end: nothing flagged, as drawn
    thr = float(view.pred.heatmap.min())  # the user's own threshold still outlines the map
    _, summary2, files2, _, view2 = panel.rethreshold(view, thr)
    assert view2.pred.anomaly_mask is not None and view2.pred.anomaly_mask.any() and view2.mask is not None
    assert "no verdict" in summary2 and any("anomaly_mask" in f for f in files2)

    kept = TaskPanel("xray", "anomaly", ModelCatalog({"xray_anomaly": plain}), outputs, settings)
    _, summary, _, report, status, view = kept.run(str(src))
    assert report["is_anomalous"] is not None and "verdict_withheld" not in report and view.pred.threshold is not None
    assert "no verdict" not in summary and "NOT RELIABLE" not in status
    assert "Not reliable" not in kept.card(None)

    capsys.readouterr()
    for ckpt, warned in ((flagged, True), (plain, False)):
        rc = main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / f"pred-{warned}"),
                   "--device", "cpu", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 0 and ("NOT RELIABLE" in err and caveat in err) == warned, err


def test_a_card_whose_reliable_is_not_a_boolean_is_refused():
    with pytest.raises(InputError, match="reliable must be true or false"):
        dm.check_model_card({**CARD, "reliable": "no"})
    assert dm.check_model_card({**CARD, "reliable": False})["reliable"] is False


def test_the_card_of_a_model_trained_on_every_image_says_its_figures_are_cross_validated():
    from types import SimpleNamespace

    from unimae.apps.ui_panel import card_markdown

    metrics = {"metric": "accuracy", "estimate": "5-fold cross-validation, seeds [0]", "unimae": 0.75, "baseline_value": 0.76}
    text = card_markdown(SimpleNamespace(trained_on="real", model_card={**CARD, "metrics": metrics}))
    assert "cross-validated (5-fold cross-validation, seeds [0]; trained on all the images)" in text and "held-out" not in text
    assert "held-out: split: patient-wise hold-out" in card_markdown(SimpleNamespace(trained_on="real", model_card=CARD))
