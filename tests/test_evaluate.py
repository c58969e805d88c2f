"""``unimae evaluate`` end to end on tiny random task models: synthetic data and real-format files.

Real-format datasets are written into ``tmp_path``. Their ground truth is built from what the model
predicts ("oracle" labels/masks), so the expected scores are known exactly whatever the random weights:
this checks that evaluation compares the predict layer's output with the truth on the same (source) grid
and only inside the valid region.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimae.apps.evaluate import EVAL_SEED, add_evaluate_parser, evaluate, run_evaluate
from unimae.apps.predict import clear_predictor_cache, load_predictor
from unimae.core.checkpoint import save_checkpoint
from unimae.core.errors import InputError
from unimae.core.inference import make_contract, task_metadata
from unimae.core.mae import MaskedAutoencoder
from unimae.core.models import MAEClassifier, MAESegmenter
from unimae.domains import get_domain

ENC = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8)
SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    clear_predictor_cache()


def make_checkpoint(path: Path, domain: str, task: str, *, class_names=None, anomaly=None, seed: int = 0) -> Path:
    """A tiny randomly initialised task model saved with save_checkpoint + the task metadata."""
    plugin = get_domain(domain)
    sample = plugin.synthetic(1, seed=0, size=SIZE, task=task)[0]
    ch, sd = sample.meta["channels"], plugin.spatial_dims
    torch.manual_seed(seed)
    if task == "classify":
        names = list(class_names or plugin.class_names)
        model = MAEClassifier(len(names), multi_label=plugin.multi_label, spatial_dims=sd, in_chans=len(ch),
                              channels=ch, **ENC)  # fmt: skip
    elif task == "segment":
        names = list(class_names or plugin.seg_class_names)
        model = MAESegmenter(len(names), feature_size=4, spatial_dims=sd, in_chans=len(ch), channels=ch, **ENC)
    else:
        names = ["normal", "anomaly"]
        model = MaskedAutoencoder(spatial_dims=sd, in_chans=len(ch), channels=ch, decoder_dim=16, decoder_depth=1,
                                  decoder_heads=2, **ENC)  # fmt: skip
    contract = make_contract(domain=domain, spatial_dims=sd, channels=ch, patch_size=8, input_size=SIZE,
                             normalization=sample.meta["normalization"])  # fmt: skip
    meta = task_metadata(task=task, domain=domain, class_names=names, contract=contract,
                         multi_label=plugin.multi_label and task == "classify", anomaly=anomaly)  # fmt: skip
    save_checkpoint(path, model, **meta)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(out: Path, result: dict, n: int, plots: list[str]) -> dict:
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == result
    for key in ("task", "domain", "checkpoint", "data", "counts", "metrics", "files"):
        assert key in saved
    assert saved["counts"]["cases"] == n
    assert len(read_rows(out / "per_case.csv")) == n
    assert sorted(saved["files"]["plots"]) == sorted(plots)
    for name in plots:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    return saved


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "domain,task,plots,keys",
    [
        ("fundus", "classify", ["confusion_matrix.png", "roc.png"],
         ["accuracy", "balanced_accuracy", "macro_f1", "auroc", "macro_auroc", "quadratic_kappa", "confusion_matrix"]),
        ("xray", "classify", ["confusion_matrix.png", "roc.png"],
         ["accuracy", "exact_match", "balanced_accuracy", "macro_f1", "auroc", "macro_auroc", "confusion"]),
        ("multispectral", "segment", ["dice.png"], ["dice", "iou", "mean_dice", "mean_iou", "background", "pooled"]),
        ("xray", "anomaly", ["roc.png"], ["image_auroc", "pixel_auroc", "aupro", "sensitivity", "specificity"]),
        ("ct", "segment", ["dice.png"], ["dice", "iou", "mean_dice", "mean_iou", "background", "pooled"]),
    ],
)  # fmt: skip
def test_evaluate_synthetic(tmp_path, domain, task, plots, keys):
    anomaly = {"k": 2, "image_threshold": 0.5, "pixel_threshold": 0.5} if task == "anomaly" else None
    ckpt = make_checkpoint(tmp_path / "model", domain, task, anomaly=anomaly)
    n = 2 if domain == "ct" else 6
    out = tmp_path / "eval"
    result = evaluate(ckpt, "synthetic", out, device="cpu", num_samples=n)
    saved = check_outputs(out, result, n, plots)
    assert saved["task"] == task and saved["domain"] == domain
    assert saved["data"]["source"] == "synthetic" and saved["data"]["seed"] == EVAL_SEED
    assert EVAL_SEED not in (0, 100_003)  # fresh: not fine-tuning's default train / val seeds
    for key in keys:
        assert key in saved["metrics"], key
    rows = read_rows(out / "per_case.csv")
    plugin = get_domain(domain)
    data = plugin.synthetic(n, seed=EVAL_SEED, size=SIZE, task=task)
    if task == "classify":
        names = list(plugin.class_names)
        for i, row in enumerate(rows):
            label = data[i].label
            truth = "|".join(nm for nm, v in zip(names, label.tolist()) if v) if label.ndim else names[int(label)]
            assert row["truth"] == truth
            if label.ndim == 0:  # softmax probabilities
                assert sum(float(row[f"p_{nm}"]) for nm in names) == pytest.approx(1.0, abs=1e-4)
    elif task == "anomaly":
        assert [int(r["label"]) for r in rows] == [int(data[i].label) for i in range(n)]
        assert saved["counts"]["cases_with_mask"] == n
    else:
        names = list(plugin.seg_class_names)
        scored = names if domain == "multispectral" else names[1:]  # land-cover class 0 (water) is a real class
        assert list(saved["metrics"]["dice"]) == scored
        assert (saved["metrics"]["background"] is None) == (domain == "multispectral")
        dice = [float(r[f"dice_{names[0]}"]) for r in rows]
        assert all(0.0 <= d <= 1.0 for d in dice)


def test_synthetic_seed_changes_the_data(tmp_path):
    ckpt = make_checkpoint(tmp_path / "model", "fundus", "classify")
    a = evaluate(ckpt, "synthetic", tmp_path / "a", device="cpu", num_samples=4)
    b = evaluate(ckpt, "synthetic", tmp_path / "b", device="cpu", num_samples=4, seed=5)
    c = evaluate(ckpt, "synthetic", tmp_path / "c", device="cpu", num_samples=4, seed=5)
    ra, rb, rc = (read_rows(tmp_path / x / "per_case.csv") for x in "abc")
    assert rb == rc and b["metrics"] == c["metrics"]  # deterministic
    assert [r["p_grade0"] for r in ra] != [r["p_grade0"] for r in rb]
    assert a["data"]["seed"] == EVAL_SEED and b["data"]["seed"] == 5


# ------------------------------------------------------------------------------------------------
# real-format files
# ------------------------------------------------------------------------------------------------
def write_fundus(path: Path, rng: np.random.Generator, h: int = 44, w: int = 52) -> Path:
    """A fundus-like RGB PNG: a bright textured disc on black (the corners are outside the field of view)."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    rgb = np.zeros((h, w, 3), np.uint8)
    base = np.array([180, 90, 40]) + rng.integers(-30, 30, (h, w, 3))
    rgb[disc] = np.clip(base[disc], 0, 255)
    Image.fromarray(rgb).save(path)
    return path


def balance_vessel_logit(ckpt: Path, images: list[Path]) -> None:
    """Shift the random segmenter's vessel bias by the median logit margin its predictor sees on ``images``, so
    that it labels about half of the pixels vessel: both classes occur and each Dice below is defined."""
    from unimae.core.checkpoint import load_tensors, save_tensors

    predictor = load_predictor(ckpt, device="cpu")
    margins = []
    hook = predictor.model.register_forward_hook(lambda m, i, out: margins.append((out[:, 1] - out[:, 0]).flatten()))
    try:
        for img in images:
            predictor.predict(img)
    finally:
        hook.remove()
    tensors, meta = load_tensors(ckpt)
    tensors["decoder.out.conv.conv.bias"][1] -= torch.cat(margins).median()
    save_tensors(ckpt.with_suffix(""), tensors, meta)
    clear_predictor_cache()


def test_fundus_segmentation_manifest_scores_inside_the_field_of_view(tmp_path):
    ckpt = make_checkpoint(tmp_path / "seg", "fundus", "segment")
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    images = [write_fundus(tmp_path / "img" / f"eye{i}.png", rng) for i in range(3)]
    balance_vessel_logit(ckpt, images)
    predictor = load_predictor(ckpt, device="cpu")
    rows = []
    for i, img in enumerate(images):
        pred = predictor.predict(img)
        valid = pred.meta["valid"].numpy()
        assert not valid.all()  # the black corners are outside the FOV
        mask = pred.label_map.astype(np.uint8)
        assert 0 < mask[valid].sum() < valid.sum()  # both classes inside the FOV (the balanced bias)
        mask[~valid] = 1 - mask[~valid]  # wrong everywhere outside the FOV: must not count
        Image.fromarray(mask * 255).save(tmp_path / "gt" / f"eye{i}.png")
        rows.append(f"img/eye{i}.png,gt/eye{i}.png")
    (tmp_path / "data.csv").write_text("image,mask\n" + "\n".join(rows) + "\n")
    out = tmp_path / "eval"
    result = evaluate(ckpt, tmp_path / "data.csv", out, device="cpu")
    saved = check_outputs(out, result, 3, ["dice.png"])
    m = saved["metrics"]
    assert m["background"]["dice"] == pytest.approx(1.0)
    assert m["pooled"]["dice"]["background"] == pytest.approx(1.0)
    assert m["dice"]["vessel"] == pytest.approx(1.0) and m["mean_dice"] == pytest.approx(1.0)
    assert m["pooled"]["dice"]["vessel"] == pytest.approx(1.0)
    per_case = read_rows(out / "per_case.csv")
    assert [r["id"] for r in per_case] == [f"img/eye{i}.png" for i in range(3)]
    assert all(float(r["dice_background"]) == pytest.approx(1.0) for r in per_case)
    assert all(float(r["dice_vessel"]) == pytest.approx(1.0) for r in per_case)
    assert saved["data"]["layout"] == "csv" and saved["data"]["has_masks"]

    # the same data with the truth inverted inside the FOV: every scored pixel is wrong
    for i in range(3):
        gt = np.asarray(Image.open(tmp_path / "gt" / f"eye{i}.png")) // 255
        Image.fromarray(((1 - gt) * 255).astype(np.uint8)).save(tmp_path / "gt" / f"eye{i}.png")
    worse = evaluate(ckpt, tmp_path / "data.csv", tmp_path / "eval2", device="cpu")["metrics"]
    assert worse["pooled"]["dice"] == {"background": 0.0, "vessel": 0.0}
    assert worse["pooled"]["pixels"] == m["pooled"]["pixels"]
    assert worse["background"]["dice"] == 0.0 and worse["dice"]["vessel"] == 0.0


def write_xray(path: Path, rng: np.random.Generator, h: int = 40, w: int = 36) -> Path:
    arr = (rng.random((h, w)) * 200 + 20).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path)
    return path


def test_xray_multilabel_manifest(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cls", "xray", "classify")
    predictor = load_predictor(ckpt, device="cpu")
    names = list(predictor.class_names)
    rng = np.random.default_rng(1)
    lines, truths = ["image,label"], []
    for i in range(5):
        img = write_xray(tmp_path / f"cxr{i}.png", rng)
        predicted = predictor.predict(img).predicted  # the oracle: truth = prediction
        truths.append(predicted)
        lines.append(f"cxr{i}.png,{'|'.join(predicted)}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    result = evaluate(ckpt, tmp_path / "labels.csv", out, device="cpu")
    saved = check_outputs(out, result, 5, ["confusion_matrix.png", "roc.png"])
    m = saved["metrics"]
    assert m["multi_label"] and m["accuracy"] == pytest.approx(1.0) and m["exact_match"] == pytest.approx(1.0)
    assert set(m["auroc"]) == set(names)
    per_case = read_rows(out / "per_case.csv")
    assert [r["truth"] for r in per_case] == ["|".join(t) for t in truths]
    assert all(r["predicted"] == r["truth"] for r in per_case)


def test_fundus_grading_class_folders_uses_the_checkpoint_class_order(tmp_path):
    ckpt = make_checkpoint(tmp_path / "grade", "fundus", "classify")
    predictor = load_predictor(ckpt, device="cpu")
    rng = np.random.default_rng(2)
    (tmp_path / "stage").mkdir()
    truth = {}
    for i in range(4):
        img = write_fundus(tmp_path / "stage" / f"f{i}.png", rng)
        truth[f"f{i}.png"] = predictor.predict(img).predicted[0]
    data = tmp_path / "graded"
    for name, grade in truth.items():
        (data / grade).mkdir(parents=True, exist_ok=True)
        (tmp_path / "stage" / name).rename(data / grade / name)
    # a single class folder would read as an unlabelled folder: add an empty-but-real second class
    other = next(g for g in predictor.class_names if g not in truth.values())
    (data / other).mkdir()
    write_fundus(data / other / "extra.png", rng)
    truth["extra.png"] = other
    result = evaluate(ckpt, data, tmp_path / "eval", device="cpu")
    rows = read_rows(tmp_path / "eval" / "per_case.csv")
    assert {Path(r["id"]).name: r["truth"] for r in rows} == truth
    assert result["data"]["layout"] == "class_folders"
    # the four oracle cases are right; the extra one is right only if the model predicts its grade
    assert sum(r["predicted"] == r["truth"] for r in rows) >= 4
    assert result["metrics"]["support"][other] == 1


def test_xray_anomaly_manifest_with_labels_and_masks(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ano", "xray", "anomaly", anomaly={"k": 2})
    predictor = load_predictor(ckpt, device="cpu")
    rng = np.random.default_rng(3)
    scores, heats, lines = [], [], ["image,label,mask"]
    for i in range(4):
        img = write_xray(tmp_path / f"a{i}.png", rng)
        pred = predictor.predict(img)
        heats.append((pred.heatmap, pred.meta["valid"].numpy()))
        scores.append(pred.score)
        lines.append(f"a{i}.png,{{}},a{i}_mask.png")
    # oracle regions: the hottest 10 % of the valid pixels of all images (pixel metrics pool the images)
    cut = np.quantile(np.concatenate([h[v] for h, v in heats]), 0.9)
    for i, (heat, valid) in enumerate(heats):
        Image.fromarray(((heat > cut) & valid).astype(np.uint8) * 255).save(tmp_path / f"a{i}_mask.png")
    order = np.argsort(scores)
    labels = ["normal"] * 4
    for j in order[2:]:
        labels[j] = "anomaly"  # the two highest scores are the anomalous images
    text = "\n".join([lines[0]] + [ln.format(lab) for ln, lab in zip(lines[1:], labels)])
    (tmp_path / "ano.csv").write_text(text + "\n")
    out = tmp_path / "eval"
    result = evaluate(ckpt, tmp_path / "ano.csv", out, device="cpu")
    saved = check_outputs(out, result, 4, ["roc.png"])
    m = saved["metrics"]
    assert m["image_auroc"] == pytest.approx(1.0)
    assert m["pixel_auroc"] == pytest.approx(1.0)
    assert m["aupro"] == pytest.approx(1.0)
    assert m["num_regions"] >= 4 and "sensitivity" not in m  # no calibrated image threshold
    assert saved["counts"] == {"cases": 4, "normal": 2, "anomalous": 2, "cases_with_mask": 4}
    rows = read_rows(out / "per_case.csv")
    assert [int(r["label"]) for r in rows] == [int(lab == "anomaly") for lab in labels]
    assert [float(r["score"]) for r in rows] == pytest.approx(scores, abs=1e-5)


def test_ct_nifti_segmentation_on_the_source_grid(tmp_path):
    nib = pytest.importorskip("nibabel")
    ckpt = make_checkpoint(tmp_path / "ct", "ct", "segment")
    predictor = load_predictor(ckpt, device="cpu")
    # an LPS-like oblique-free affine with anisotropic voxels: preprocessing reorients and resamples
    aff = np.array([[-1.2, 0, 0, 30], [0, -1.0, 0, 20], [0, 0, 2.0, -10], [0, 0, 0, 1.0]])
    rng = np.random.default_rng(4)
    hu = rng.normal(40, 30, (22, 26, 12)).astype(np.float32)
    hu[:, :, :2] = -2048  # padding below -1500 HU: outside the valid region
    nib.save(nib.Nifti1Image(hu, aff), str(tmp_path / "case.nii.gz"))
    pred = predictor.predict(tmp_path / "case.nii.gz")
    assert pred.label_map.shape == hu.shape
    nib.save(nib.Nifti1Image(pred.label_map.astype(np.uint8), aff), str(tmp_path / "case_seg.nii.gz"))
    (tmp_path / "ct.csv").write_text("image,mask\ncase.nii.gz,case_seg.nii.gz\n")
    result = evaluate(ckpt, tmp_path / "ct.csv", tmp_path / "eval", device="cpu")
    m = result["metrics"]
    assert m["background"]["dice"] in (None, pytest.approx(1.0))
    assert all(v is None or v == pytest.approx(1.0) for v in m["dice"].values())
    assert m["pooled"]["pixels"] == int(pred.meta["valid"].sum()) < hu.size


def test_multispectral_geotiff_segmentation_streamed_with_nodata(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine

    ckpt = make_checkpoint(tmp_path / "lc", "multispectral", "segment")
    predictor = load_predictor(ckpt, device="cpu")
    rng = np.random.default_rng(5)
    h, w = 36, 44
    dn = rng.integers(200, 4000, (13, h, w)).astype(np.uint16)
    dn[:, :, :6] = 0  # nodata strip: outside the valid region
    transform = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_200_000.0)
    profile = dict(driver="GTiff", height=h, width=w, count=13, dtype="uint16", crs="EPSG:32633",
                   transform=transform, nodata=0)  # fmt: skip
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as ds:
        ds.write(dn)
    pred = predictor.predict(tmp_path / "scene.tif")
    valid = pred.meta["valid"].numpy()
    assert pred.label_map.shape == (h, w) and not valid[:, :6].any() and valid[:, 6:].all()
    truth = pred.label_map.astype(np.uint8)
    truth[:, :6] = 4 - truth[:, :6]  # wrong in the nodata strip only: not scored
    mprof = dict(profile, count=1, dtype="uint8", nodata=None)
    with rasterio.open(tmp_path / "scene_gt.tif", "w", **mprof) as ds:
        ds.write(truth[None])
    (tmp_path / "scenes.csv").write_text("image,mask\nscene.tif,scene_gt.tif\n")
    result = evaluate(ckpt, tmp_path / "scenes.csv", tmp_path / "eval", device="cpu")
    m = result["metrics"]
    assert m["background"] is None  # land cover: class 0 (water) is a real class
    assert m["pooled"]["pixels"] == int(valid.sum()) == h * (w - 6)
    assert all(v == pytest.approx(1.0) for v in m["pooled"]["dice"].values() if v is not None)
    assert m["mean_dice"] == pytest.approx(1.0)


def test_split_selection(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cls", "fundus", "classify")
    rng = np.random.default_rng(6)
    for i in range(3):
        write_fundus(tmp_path / f"f{i}.png", rng)
    (tmp_path / "m.csv").write_text("image,label,split\nf0.png,grade0,train\nf1.png,grade3,train\nf2.png,grade1,val\n")
    default = evaluate(ckpt, tmp_path / "m.csv", tmp_path / "a", device="cpu")  # no test rows: val
    assert default["data"]["split"] == "val" and default["counts"]["cases"] == 1
    assert [r["truth"] for r in read_rows(tmp_path / "a" / "per_case.csv")] == ["grade1"]
    train = evaluate(ckpt, tmp_path / "m.csv", tmp_path / "b", device="cpu", split="train", num_samples=1)
    assert train["data"]["split"] == "train" and train["counts"]["cases"] == 1
    # a real problem in the test rows is reported, not skipped over by the val fallback
    (tmp_path / "m.csv").write_text("image,label,split\nf0.png,grade0,val\nlost.png,grade1,test\n")
    with pytest.raises(InputError, match="lost.png"):
        evaluate(ckpt, tmp_path / "m.csv", tmp_path / "c", device="cpu")


# ------------------------------------------------------------------------------------------------
# bad input: one-line errors
# ------------------------------------------------------------------------------------------------
def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_checkpoint(tmp_path):
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "nope", "synthetic", tmp_path / "out", device="cpu")
    assert "not found" in one_line(err)


def test_checkpoint_without_task(tmp_path):
    mae = MaskedAutoencoder(in_chans=3, decoder_dim=16, decoder_depth=1, decoder_heads=2, **ENC)
    save_checkpoint(tmp_path / "pretrain", mae, contract={"domain": "fundus", "spatial_dims": 2, "input_size": [32, 32]})
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "pretrain", "synthetic", tmp_path / "out", device="cpu")
    assert "no 'task'" in one_line(err) and "finetune" in str(err.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_manifest_with_missing_file(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cls", "fundus", "classify")
    write_fundus(tmp_path / "ok.png", np.random.default_rng(0))
    (tmp_path / "m.csv").write_text("image,label\nok.png,grade0\ngone.png,grade1\n")
    with pytest.raises(InputError) as err:
        evaluate(ckpt, tmp_path / "m.csv", tmp_path / "out", device="cpu")
    assert "gone.png" in one_line(err) and "not found" in str(err.value)


def test_segmentation_model_needs_masks(tmp_path):
    ckpt = make_checkpoint(tmp_path / "seg", "fundus", "segment")
    write_fundus(tmp_path / "a.png", np.random.default_rng(0))
    (tmp_path / "m.csv").write_text("image,label\na.png,grade0\n")
    with pytest.raises(InputError) as err:
        evaluate(ckpt, tmp_path / "m.csv", tmp_path / "out", device="cpu")
    assert "masks" in one_line(err)


def test_classifier_needs_labels(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cls", "xray", "classify")
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_xray(folder / "a.png", np.random.default_rng(0))
    with pytest.raises(InputError) as err:
        evaluate(ckpt, folder, tmp_path / "out", device="cpu")
    assert "labels" in one_line(err)


def test_anomaly_model_needs_labels_or_masks(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ano", "xray", "anomaly")
    folder = tmp_path / "plain"
    folder.mkdir()
    write_xray(folder / "a.png", np.random.default_rng(0))
    with pytest.raises(InputError) as err:
        evaluate(ckpt, folder, tmp_path / "out", device="cpu")
    assert "labels" in one_line(err) and "masks" in str(err.value)


def test_mask_of_the_wrong_size_and_unknown_class(tmp_path):
    ckpt = make_checkpoint(tmp_path / "seg", "xray", "segment")
    write_xray(tmp_path / "a.png", np.random.default_rng(0))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "m.csv").write_text("image,mask\na.png,small.png\n")
    with pytest.raises(InputError) as err:
        evaluate(ckpt, tmp_path / "m.csv", tmp_path / "out", device="cpu")
    assert "small.png" in one_line(err)
    bad = np.zeros((40, 36), np.uint8)
    bad[:3, :3] = 7  # class 7 of a 3-class model
    Image.fromarray(bad).save(tmp_path / "seven.png")
    (tmp_path / "m.csv").write_text("image,mask\na.png,seven.png\n")
    with pytest.raises(InputError) as err:
        evaluate(ckpt, tmp_path / "m.csv", tmp_path / "out", device="cpu")
    assert "class index 7" in one_line(err) and "--ignore-index" in str(err.value)
    # declared as an ignore label, those pixels are simply not scored
    result = evaluate(ckpt, tmp_path / "m.csv", tmp_path / "out", device="cpu", ignore_index=7)
    assert result["metrics"]["pooled"]["pixels"] == 40 * 36 - 9


def test_synthetic_with_other_classes_and_bad_count(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cls", "fundus", "classify", class_names=["healthy", "sick"])
    with pytest.raises(InputError) as err:
        evaluate(ckpt, "synthetic", tmp_path / "out", device="cpu")
    assert "synthetic data have 4" in one_line(err)
    with pytest.raises(InputError) as err:
        evaluate(ckpt, "synthetic", tmp_path / "out", device="cpu", num_samples=0)
    assert "num_samples" in one_line(err)


# ------------------------------------------------------------------------------------------------
# the CLI command
# ------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unimae")
    add_evaluate_parser(p.add_subparsers(dest="command"))
    return p


def test_cli_runs_and_reports(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m", "xray", "segment")
    args = parser().parse_args(["evaluate", "--checkpoint", str(ckpt), "--data", "synthetic", "--out",
                                str(tmp_path / "ev"), "--num-samples", "3", "--seed", "7", "--device", "cpu",
                                "--no-progress"])  # fmt: skip
    assert args.func.__name__ == "run_evaluate"  # imported when it runs (the CLI parser stays torch-free)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "3 cases (xray segment): mean Dice" in out
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["data"]["seed"] == 7 and saved["data"]["num_samples"] == 3


def test_cli_bad_input_prints_one_line_and_returns_2(tmp_path, capsys):
    args = parser().parse_args(["evaluate", "--checkpoint", str(tmp_path / "missing"), "--data", "synthetic",
                                "--out", str(tmp_path / "ev"), "--device", "cpu"])  # fmt: skip
    assert run_evaluate(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unimae: error: ") and "\n" not in err and "not found" in err
