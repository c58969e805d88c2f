"""The real-data benchmark's folds and metrics (the training itself is benchmarks/real_data.py's job)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"


def _bench():
    spec = importlib.util.spec_from_file_location("real_data", ROOT / "benchmarks" / "real_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_folds_keep_groups_together_and_spread_classes():
    bench = _bench()
    rng = np.random.default_rng(0)
    groups = [f"p{int(i)}" for i in rng.integers(0, 60, 200)]
    labels = [int(g[1:]) % 2 for g in groups]  # a patient's images share a label
    folds = bench.stratified_folds(labels, 5, seed=0, groups=groups)
    for g in set(groups):
        assert len({int(f) for f, gg in zip(folds, groups) if gg == g}) == 1, g
    for f in range(5):
        ys = [y for y, ff in zip(labels, folds) if ff == f]
        assert 0.2 < np.mean(ys) < 0.8 and len(ys) > 20


def test_auroc_and_dice():
    bench = _bench()
    assert bench.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert bench.auroc([1, 1, 1, 1], [False, True, False, True]) == pytest.approx(0.5)  # ties count half
    assert bench.auroc([3, 2, 1], [True, False, False]) == pytest.approx(1.0)
    pred = np.zeros((4, 4), int)
    pred[1, :] = 1
    truth = pred.copy()
    truth[2, 0] = 1
    fov = np.ones((4, 4), bool)
    assert bench.dice(pred, truth, fov) == pytest.approx(2 * 4 / 9)
    fov[2, :] = False  # outside the field of view does not count
    assert bench.dice(pred, truth, fov) == pytest.approx(1.0)


@pytest.mark.skipif(not (REAL / "xray" / "manifest.csv").is_file(), reason="../shared/real (real training data) is absent")
def test_real_xray_folds_are_patient_disjoint():
    bench = _bench()
    with open(REAL / "xray" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    folds = bench.stratified_folds([int(r["label"]) for r in rows], 5, groups=[r["patient_id"] for r in rows])
    by_patient: dict[str, set[int]] = {}
    for r, f in zip(rows, folds):
        by_patient.setdefault(r["patient_id"], set()).add(int(f))
    assert all(len(s) == 1 for s in by_patient.values())
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]


@pytest.mark.skipif(not (REAL / "multispectral" / "manifest.csv").is_file(), reason="../shared/real (real training data) is absent")
def test_pretraining_arms_run_pretrain_then_fine_tune_from_it(capsys: pytest.CaptureFixture) -> None:
    """``--pretrain-epochs``: MAE pretraining on the fold's training tiles, fine-tuning from it (its encoder
    loaded), and the scratch recipe stretched to the same wall time, each scored on the held-out fold."""
    bench = _bench()
    assert bench.main(["--quick", "--sets", "multispectral", "--pretrain-epochs", "0.5", "--threads", "1",
                       "--set", "data.tta=dihedral", "--json"]) == 0
    out, err = capsys.readouterr()
    import json

    result = json.loads(out)["results"][0]
    fold = result["per_fold"][0]
    for tag in ("unimae", "reference", "pretrained", "scratch_equal", "unimae_plain", "reference_tta"):
        assert 0.0 <= fold[tag]["metric"] <= 1.0 and fold[tag]["seconds"] > 0, tag  # EuroSAT: with and without TTA
    pre = fold["pretrained"]
    assert pre["pretrain_seconds"] > 0 and pre["seconds"] >= pre["pretrain_seconds"] + pre["finetune_seconds"] - 1e-6
    assert fold["scratch_equal"]["stretch"] > 0
    assert "init: the encoder of a MaskedAutoencoder" in err  # the fine-tune started from the pretraining run


def test_the_model_card_gives_both_models_with_and_without_test_time_augmentation() -> None:
    bench = _bench()
    spec = bench.REAL_SETS["fundus"]
    text = bench.card_summary(spec, 0.80, 0.79, 4, {"mode": "mirror", "unimae_without": 0.78, "baseline_with": 0.805})
    assert "0.800 with test-time augmentation (mirror)" in text and "beats the baseline there, by 0.010" in text
    assert "Without the test-time augmentation this model scores 0.780" in text
    assert "the baseline with the same averaging scores 0.805" in text
    assert "test-time" not in bench.card_summary(spec, 0.78, 0.79, 4) and "does NOT beat" in bench.card_summary(spec, 0.78, 0.79, 4)


@pytest.mark.skipif(not (REAL / "multispectral" / "manifest.csv").is_file(), reason="../shared/real (real training data) is absent")
def test_each_seed_trains_both_arms_again_on_the_same_folds(capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """``--seeds 0,1``: every fold once per seed; UniMAE's config and the reference both get that seed."""
    import json

    bench = _bench()
    seen: dict[str, list] = {"unimae": [], "reference": []}
    run_unimae, train_reference = bench.run_unimae, bench.train_reference

    def unimae(config, overrides, out_dir):
        seen["unimae"].append([o for o in overrides if o.startswith("seed=")])
        return run_unimae(config, overrides, out_dir)

    def reference(*args, **kwargs):
        seen["reference"].append(bench.TRAINING["seed"])
        return train_reference(*args, **kwargs)

    monkeypatch.setattr(bench, "run_unimae", unimae)
    monkeypatch.setattr(bench, "train_reference", reference)
    assert bench.main(["--quick", "--sets", "multispectral", "--seeds", "0,1", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert seen == {"unimae": [["seed=0"], ["seed=1"]], "reference": [0, 1]}
    assert [(r["fold"], r["seed"]) for r in result["per_fold"]] == [(0, 0), (0, 1)] and result["seeds"] == [0, 1]
    runs = [r["unimae"]["metric"] for r in result["per_fold"]]
    assert result["unimae"]["fold_means"]["folds"] == [round(float(np.mean(runs)), 4)]
    ensemble = result["seed_ensemble"]  # both seeds' held-out probabilities averaged, per arm
    runs = result["per_fold"]
    for tag in ("unimae", "reference"):
        mean = np.mean([r[tag]["probs"] for r in runs], 0)
        expected = np.mean([runs[0]["classes"][i] == t for i, t in zip(mean.argmax(1), runs[0]["truth"])])
        assert ensemble[tag]["folds"] == [round(float(expected), 4)]
    for r in runs:  # the third arm: each channel's statistics and a small MLP, scored on the same held-out tiles
        assert np.asarray(r["channel_stats"]["probs"]).shape == (len(r["truth"]), len(r["classes"]))
    assert len(result["channel_stats"]["metric"]["folds"]) == 2
    assert bench.TRAINING["seed"] == 0  # left as it was
    with pytest.raises(SystemExit):
        bench.main(["--sets", "multispectral", "--seeds", "a,b"])


def test_channel_statistics_baseline_reads_the_spectrum_inside_the_valid_pixels() -> None:
    """The per-channel statistics arm: mean, std and percentiles over valid pixels only, and an MLP on them
    that separates two spectra it has not seen, the same way for the same seed."""
    bench = _bench()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 16, 16))
    valid = np.zeros((16, 16), bool)
    valid[:8] = True
    image[:, ~valid] = 1e6  # nodata values must not leak in
    f = bench.channel_statistics(image, valid)
    inside = image[:, valid]
    np.testing.assert_allclose(f[:3], inside.mean(1))
    np.testing.assert_allclose(f[3:6], inside.std(1))
    np.testing.assert_allclose(f[9:12], np.median(inside, 1))
    assert np.allclose(bench.channel_statistics(image, np.zeros_like(valid))[:3], image.reshape(3, -1).mean(1))

    def tiles(n: int, bright: int) -> np.ndarray:  # class 1 is brighter in channel 0 only
        x = rng.normal(size=(n, 3, 8, 8))
        x[:, 0] += bright
        return np.stack([bench.channel_statistics(t) for t in x])

    feats = np.concatenate([tiles(20, 0), tiles(20, 2)])
    labels = [0] * 20 + [1] * 20
    proba, run = bench.train_statistics_classifier(feats, labels, 2, steps=100, seed=3)
    test = proba(np.concatenate([tiles(10, 0), tiles(10, 2)]))
    assert test.shape == (20, 2) and np.allclose(test.sum(1), 1)
    assert (test.argmax(1) == np.repeat([0, 1], 10)).all()
    assert run["samples"] == 100 * 40 and run["seconds"] >= 0
    again, _ = bench.train_statistics_classifier(feats, labels, 2, steps=100, seed=3)
    np.testing.assert_allclose(again(feats), proba(feats))


def test_shipped_classifiers_carry_what_the_benchmark_found_against_them() -> None:
    """The EuroSAT and chest X-ray demo models' cards say what the benchmarks found (the band-statistics
    baseline; the darker pneumonia films; anomaly maps that miss the radiologists' boxes), the same words
    ``--save-demo`` writes."""
    import json

    bench = _bench()
    for name in ("multispectral", "xray", "xray_anomaly"):
        spec = bench.REAL_SETS[name]
        card = json.loads((ROOT / "domains" / spec.domain / "demo" / f"{spec.task}.json").read_text())["model_card"]
        assert spec.caveat and card["caveats"] == spec.caveat
        assert card.get("reliable", True) is spec.reliable  # written only when False
    assert not bench.REAL_SETS["xray_anomaly"].reliable  # 0.505 +- 0.212 over 15 runs: the app withholds its verdict


@pytest.mark.skipif(not (REAL / "xray" / "manifest.csv").is_file(), reason="../shared/real (real training data) is absent")
def test_the_anomaly_set_scores_both_references_on_the_held_out_patients(capsys: pytest.CaptureFixture) -> None:
    """``xray_anomaly``: UniMAE's image score, the 5-NN distance of 32 px normal films and the 5-NN distance of
    the films' intensity statistics (no pixel arrangement), each an AUROC over the same held-out films."""
    import json

    bench = _bench()
    assert bench.main(["--quick", "--sets", "xray_anomaly", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    fold = result["per_fold"][0]
    assert fold["n_test"] > 50
    for tag in ("unimae", "reference", "channel_stats"):
        assert 0.0 <= fold[tag]["metric"] <= 1.0 and fold[tag]["seconds"] > 0, tag
        assert result[tag]["metric"]["folds"] == [round(fold[tag]["metric"], 4)]
    # the statistics reference is a real one: global intensity alone ranks these pneumonia films well above chance
    assert fold["channel_stats"]["metric"] > 0.6


def _checkpoint(tmp_path: Path) -> Path:
    """A stand-in for a trained model's ``best.{safetensors,json}``: what ``save_demo`` copies, not a model."""
    import json

    import torch
    from safetensors.torch import save_file

    stem = tmp_path / "run" / "best"
    stem.parent.mkdir(parents=True)
    save_file({"w": torch.ones(2, 3), "n": torch.tensor([3])}, str(stem) + ".safetensors")
    (tmp_path / "run" / "best.json").write_text(json.dumps(
        {"contract": {"tta": "none"}, "config": {"data": {"train": "/home/me/data.csv"}, "out_dir": "/home/me/run"},
         "run_config": {"x": 1}, "data_source": "/home/me/data.csv", "out_dir": "/home/me/run"}))
    return stem


def test_save_demo_writes_a_held_out_fold_card_or_a_cross_validation_card_for_a_model_of_every_image(tmp_path) -> None:
    """``--save-demo`` (fold): the fold's model, its card giving that fold's held-out figures and files;
    ``--save-demo all``: a model of every image, its card giving the same run's cross-validation and no held-out
    file. Both cards pass the app's check, carry no path of this machine and keep the weights in fp16."""
    import json

    from safetensors.torch import load_file

    from unimae.apps.demo_models import check_model_card

    bench = _bench()
    stem = _checkpoint(tmp_path)
    fold = {"fold": 0, "n_test": 44, "unimae": {"metric": 0.74}, "reference": {"metric": 0.70},
            "held_out": ["multispectral/a.tif", "multispectral/b.tif"]}  # fmt: skip
    path = bench.save_demo("multispectral", stem, fold, 5, tmp_path / "domains")
    meta = json.loads(path.read_text())
    card = check_model_card(meta["model_card"])
    assert path == tmp_path / "domains" / "multispectral" / "demo" / "classify.json"
    assert card["metrics"]["held_out_fold"] == 0 and card["metrics"]["unimae"] == 0.74 and card["metrics"]["beats_baseline"]
    assert card["held_out"] == fold["held_out"] and "--run-folds 0 --save-demo" in card["retrain"]
    assert "fold 0 held out, 44 images" in card["data"]["used"] and "beats the baseline there, by 0.040" in card["summary"]
    vessel_fold = {"fold": 0, "n_test": 4, "reference": {"metric": 0.79, "conditions": {"as is": 0.79, "FOV 1.8x": 0.75}},
                   "unimae": {"metric": 0.8, "conditions": {"as is": 0.8, "FOV 1.8x": 0.79123456}}}  # fmt: skip
    vessel_card = json.loads(bench.save_demo("fundus", stem, vessel_fold, 5, tmp_path / "fold").read_text())["model_card"]
    assert vessel_card["metrics"]["acquisition_shifts"] == {"FOV 1.8x": 0.7912}  # not the headline figure again
    assert vessel_card["metrics"]["baseline_acquisition_shifts"] == {"FOV 1.8x": 0.75}

    cv = {"folds": 5, "folds_run": [0, 1, 2, 3, 4], "seeds": [0], "unimae": {"metric": {"mean": 0.75, "std": 0.04, "folds": [0.7, 0.8, 0.75, 0.72, 0.78]}},
          "reference": {"metric": {"mean": 0.76, "std": 0.05, "folds": [0.72, 0.79, 0.70, 0.80, 0.79]}},
          "channel_stats": {"metric": {"mean": 0.77, "std": 0.02, "folds": [0.77] * 5}}}  # fmt: skip
    path = bench.save_demo("multispectral", stem, {}, 5, tmp_path / "domains", cv=cv, n_images=216)
    meta = json.loads(path.read_text())
    card = check_model_card(meta["model_card"])
    m = card["metrics"]
    assert (m["unimae"], m["unimae_std"], m["baseline_value"], m["channel_statistics"]) == (0.75, 0.04, 0.76, 0.77)
    assert m["unimae_folds"] == cv["unimae"]["metric"]["folds"] and m["beats_baseline"] is False
    assert "held_out_fold" not in m and card["held_out"] == [] and card["retrain"].split("#")[0].endswith("--save-demo all   ")
    assert card["data"]["used"].startswith("all 216 images") and "Trained on all 216 images" in card["summary"]
    assert "does NOT beat the baseline on average (-0.010)" in card["summary"] and "better in 2 of 5 runs" in card["summary"]
    assert "(5 runs; seeds 0)" in card["summary"] and m["estimate"] == "5-fold cross-validation (every fold), seeds [0]"
    one = {**cv, "folds_run": [0], "unimae": {"metric": {"mean": 0.8, "std": 0.0, "folds": [0.8]},
                                               "conditions": {"as is": {"mean": 0.8, "std": 0.0, "folds": [0.8]},
                                                              "FOV 0.6x": {"mean": 0.77, "std": 0.0, "folds": [0.77]}}},
           "reference": {"metric": {"mean": 0.79, "std": 0.0, "folds": [0.79]}},
           "unimae_plain": {"metric": {"mean": 0.79, "std": 0.0, "folds": [0.79]}},
           "reference_tta": {"metric": {"mean": 0.795, "std": 0.0, "folds": [0.795]}}}  # fmt: skip
    vessels = bench.save_demo("fundus", stem, {}, 5, tmp_path / "domains", cv=one, n_images=20)
    vessels = json.loads(vessels.read_text())["model_card"]
    assert "(folds 0 only, 1 run; seeds 0)" in vessels["summary"] and "better in 1 of 1 runs" in vessels["summary"]
    assert vessels["metrics"]["estimate"] == "5-fold cross-validation (folds [0]), seeds [0]"
    assert vessels["metrics"]["acquisition_shifts"] == {"FOV 0.6x": 0.77}  # the unshifted photographs are the headline
    assert "baseline_acquisition_shifts" not in vessels["metrics"]  # this run scored the baseline on no shift
    assert vessels["metrics"]["test_time_augmentation"] == {"mode": "none", "unimae_without": 0.79, "baseline_with": 0.795}
    assert card["caveats"] == bench.REAL_SETS["multispectral"].caveat
    assert "/home/me" not in path.read_text() and "run_config" not in meta and "(all of it)" in meta["config"]["data"]["train"]
    weights = load_file(str(path.with_suffix(".safetensors")))
    assert weights["w"].dtype.is_floating_point and str(weights["w"].dtype) == "torch.float16" and weights["n"].tolist() == [3]


def test_acquisition_shifts_copy_the_image_changed_as_another_camera_or_site_would(tmp_path) -> None:
    """Every shift a set names exists, writes a PNG beside the work files (the original untouched), keeps the
    mode, and changes the image the way its name says; the zooms change the size, nothing else does."""
    from PIL import Image

    bench = _bench()
    for spec in bench.REAL_SETS.values():
        assert set(spec.shifts) <= set(bench.SHIFTS) and bench.UNSHIFTED not in spec.shifts
    rng = np.random.default_rng(0)
    grey = (rng.random((40, 48)) * 100 + 60).astype(np.uint8)
    grey[10:30, 10:30] = 200  # an edge for the blur to soften
    rgb = np.stack([grey, grey // 2, grey // 3], -1)
    Image.fromarray(grey).save(tmp_path / "film.png")
    Image.fromarray(rgb).save(tmp_path / "photo.tif")
    before = (tmp_path / "film.png").read_bytes()
    for name in bench.SHIFTS:
        for src, like in ((tmp_path / "film.png", grey), (tmp_path / "photo.tif", rgb)):
            out = bench.shifted(src, tmp_path, name)
            a = np.asarray(Image.open(out))
            assert out.parent == tmp_path and out.suffix == ".png" and a.ndim == like.ndim, (name, src)
            if name.startswith("FOV"):
                assert a.shape[0] == round(like.shape[0] * float(name.split()[1][:-1])), name
                continue
            assert a.shape == like.shape, name
            if name == "colour" and like.ndim == 2:
                assert np.array_equal(a, like)  # a grey film has no colour balance
            else:
                assert not np.array_equal(a, like), (name, src)
    assert (tmp_path / "film.png").read_bytes() == before
    copies = bench.shifted_copies([tmp_path / "film.png"], tmp_path, [bench.UNSHIFTED, "blur"])
    assert copies[bench.UNSHIFTED] == [tmp_path / "film.png"] and copies["blur"] == [tmp_path / "film_blur.png"]
    film = lambda name: np.asarray(Image.open(bench.shifted(tmp_path / "film.png", tmp_path, name))).astype(float)  # noqa: E731
    assert film("gamma 0.7").mean() > grey.mean() > film("gamma 1.4").mean() and film("brighter").mean() > grey.mean()
    edge = lambda a: np.abs(np.diff(a[:, 5:35], axis=1)).mean()  # noqa: E731
    assert edge(film("blur")) < edge(grey.astype(float)) and edge(film("half resolution")) < edge(grey.astype(float))
