"""Real datasets in the layouts they are published in, read with no hand-made CSV (issue 13, issue 9 item 5).

Each layout is built with tiny synthetic files named and placed exactly as the dataset publishes them, and
goes ``finetune -> evaluate -> predict`` with a small model and a couple of steps: EuroSAT-MS (a folder per
class of 13-band GeoTIFFs), DRIVE (``training/`` + ``test/`` with ``images/``, ``1st_manual/``, ``mask/``),
CHASE_DB1 and STARE (images and their masks in one folder), NIH ChestX-ray class folders, and a manifest
with train/test splits and patient ids. The checks are about the data: splits, groups, classes, the
normal class, field-of-view masks, masks never predicted on, and the one-line errors before training.
The last test reads ``../shared/real`` as it is (skipped with a reason when absent).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimae.apps.cli import main
from unimae.apps.evaluate import evaluate
from unimae.apps.finetune import build_finetune_data, finetune, load_finetune_config
from unimae.apps.predict import collect_inputs, predict_paths
from unimae.core.checkpoint import read_checkpoint_meta
from unimae.core.errors import InputError
from unimae.domains import get_domain
from unimae.domains.datasets import local_dataset, mask_files_among, normal_class_index

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
QUIET = ["train.precision=fp32", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
         "train.num_workers=0", "train.warmup_steps=1", "train.max_steps=2", "train.batch_size=2", "train.val_every=2",
         "train.save_every=2"]  # fmt: skip
SMALL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.drop_path_rate=0.0"]
DECODER = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(domain: str, task: str, out: Path, *extra: str) -> dict:
    over = [*QUIET, *SMALL, f"out_dir={out}"]
    if task == "anomaly":
        over += DECODER
    if task == "segment":
        over.append("model.feature_size=8")
    cfg = load_finetune_config(ROOT / "configs" / domain / f"{task}.yaml", over + list(extra))
    # a handful of steps whatever schedule the shipped recipe uses; fundus images stay at their own tiny size
    if "epochs" in cfg.get("train", {}):
        cfg["train"]["epochs"] = None
    if "fov_diameter" in cfg.get("data", {}):
        cfg["data"]["fov_diameter"] = 48
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return finetune(cfg)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------
# file writers (as the datasets publish them)
# ------------------------------------------------------------------------------------------------
def grey_png(path: Path, value: float, rng: np.random.Generator, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.clip(rng.normal(value, 25, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def fundus_pair(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """An orange retina-like RGB image with no black surround (so FOV detection takes the whole image) and a
    vessel-like mask of dark lines."""
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    rgb[...] = (190, 95, 45)
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    vessels = np.zeros((size, size), dtype=bool)
    for _ in range(3):
        r = int(rng.integers(4, size - 4))
        vessels[r : r + 2, :] = True
        c = int(rng.integers(4, size - 4))
        vessels[:, c : c + 2] = True
    rgb[vessels] = (120, 40, 25)
    return rgb, vessels


def disc(size: int = 48, radius: float = 0.42) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (size * radius) ** 2


def save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def geotiff(path: Path, values: np.ndarray) -> Path:
    import rasterio
    from rasterio.transform import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = values.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=c, dtype="uint16", crs="EPSG:32632",
                           transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5400000.0)) as dst:  # fmt: skip
            dst.write(values.astype(np.uint16))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_drive(root: Path, n_train: int = 4, n_test: int = 2, seed: int = 0) -> Path:
    """DRIVE: training/ and test/, each with images/NN_training.tif, 1st_manual/NN_manual1.gif, mask/NN_training_mask.gif."""
    rng = np.random.default_rng(seed)
    fov = (disc() * 255).astype(np.uint8)
    for split, first, n in (("training", 21, n_train), ("test", 1, n_test)):
        for k in range(first, first + n):
            rgb, vessels = fundus_pair(rng)
            stem = f"{k:02d}_{split if split == 'training' else 'test'}"
            save(root / split / "images" / f"{stem}.tif", rgb, "TIFF")
            save(root / split / "1st_manual" / f"{k:02d}_manual1.gif", (vessels * 255).astype(np.uint8), "GIF")
            save(root / split / "mask" / f"{stem}_mask.gif", fov, "GIF")
    return root


# ------------------------------------------------------------------------------------------------
# EuroSAT-MS: a folder per class of 13-band GeoTIFFs in EuroSAT band order
# ------------------------------------------------------------------------------------------------
def test_eurosat_ms_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "EuroSAT_MS"
    classes = ["AnnualCrop", "Forest", "SeaLake"]
    for c, name in enumerate(classes):
        for i in range(4):
            base = np.full((13, 16, 16), 800 + 900 * c, dtype=np.float64)
            geotiff(root / name / f"{name}_{i + 1}.tif", base + rng.normal(0, 60, base.shape))
    ms = get_domain("multispectral")
    ds = local_dataset(ms, root, bands="eurosat")
    assert ds.layout == "class_folders" and ds.class_names == tuple(classes) and not ds.multi_label
    assert [c["name"] for c in ds[0].meta["channels"]][-1] == "B8A"  # EuroSAT keeps B8A last

    out = tmp_path / "run"
    result = run("multispectral", "classify", out, f"data.train={root}", "data.bands=eurosat", "data.input_size=16",
                 "data.val_fraction=0.25")  # fmt: skip
    meta = read_checkpoint_meta(out / "best")
    assert meta["class_names"] == classes and meta["multi_label"] is False  # a softmax classifier
    assert result["best_step"] == 2 and math.isfinite(result["best_value"])
    # the hold-out is stratified: every class in validation, none of its tiles in training
    val = local_dataset(ms, root, split="val", val_fraction=0.25)
    train = local_dataset(ms, root, split="train", val_fraction=0.25)
    assert sorted(set(val.labels)) == [0, 1, 2] and set(val.files).isdisjoint(train.files)

    res = evaluate(out / "best", root, tmp_path / "eval", device="cpu")
    assert res["counts"]["cases"] == 12 and set(res["counts"]["per_class"]) == set(classes)
    summary = predict_paths(out / "best", root / "Forest", tmp_path / "pred", device="cpu", progress=False)
    assert summary.ok and len(summary.outputs) == 4


# ------------------------------------------------------------------------------------------------
# DRIVE: training/ + test/ with images/, 1st_manual/ and the field-of-view masks in mask/
# ------------------------------------------------------------------------------------------------
def test_drive_with_fov_masks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_drive(tmp_path / "DRIVE")
    fundus = get_domain("fundus")
    train = local_dataset(fundus, root, split="train")
    assert train.layout == "segmentation" and [m.parent.name for m in train.masks] == ["1st_manual"] * 3
    assert train.fovs is not None and all(f.parent.name == "mask" for f in train.fovs)
    assert train.split_source == "carved" and "carved out of the train split" in " ".join(train.notes)
    val = local_dataset(fundus, root, split="val")
    assert len(val) == 1 and set(val.files).isdisjoint(train.files)
    # the given FOV is the image's valid region (detection would take the whole surround-free image)
    s = val[0]
    assert s.meta["fov_source"] == "file"
    assert int(val.read_source(0).valid.sum()) == int(disc().sum()) < 48 * 48

    out = tmp_path / "run"
    run("fundus", "segment", out, f"data.train={root}", "data.input_size=32")
    said = capsys.readouterr().out
    assert "field of view: the given FOV mask of each image" in said and "validation: 1 images" in said
    assert read_checkpoint_meta(out / "best")["class_names"] == ["background", "vessel"]

    res = evaluate(out / "best", root, tmp_path / "eval", device="cpu")  # test/ by default
    assert res["data"]["split"] == "test" and res["counts"]["cases"] == 2
    assert res["counts"]["valid_pixels"] == 2 * int(disc().sum())  # scored inside the given FOV only
    assert "given FOV mask" in res["data"]["fov"]

    summary = predict_paths(out / "best", root / "test", tmp_path / "pred", device="cpu", progress=False)
    assert summary.ok and sorted(Path(p).name for p in summary.outputs) == ["01_test.tif", "02_test.tif"]
    report = json.loads((tmp_path / "pred" / "01_test.json").read_text())
    assert report["input"]["fov_source"] == "file"  # the report says which field of view was used


def test_drive_folder_with_a_manifest_that_does_not_fit(tmp_path: Path) -> None:
    """A dataset folder's own CSV with other column names and split 'all': the folder's layout wins, with a note."""
    root = make_drive(tmp_path / "DRIVE", n_train=3, n_test=0)
    training = root / "training"
    rows = [[f"images/{k}_training.tif", f"1st_manual/{k}_manual1.gif", f"mask/{k}_training_mask.gif", "all"]
            for k in (21, 22, 23)]  # fmt: skip
    write_csv(training / "manifest.csv", ["image", "vessel_mask", "fov_mask", "split"], rows)
    fundus = get_domain("fundus")
    ds = local_dataset(fundus, training)
    assert ds.layout == "segmentation" and len(ds) == 3 and ds.fovs is not None
    assert ds.notes[0].startswith("manifest.csv does not fit (line 2: unknown split 'all'")
    # the CSV itself, given as the source: the split names are a choice to make, listed in one line
    with pytest.raises(InputError) as err:
        local_dataset(fundus, training / "manifest.csv")
    msg = one_line(err)
    assert "unknown split 'all'" in msg and "data.split_map=all:train" in msg
    # ... and with data.split_map it reads as is: vessel_mask is the mask, fov_mask the field of view
    csv_ds = local_dataset(fundus, training / "manifest.csv", split_map="all:train")
    assert csv_ds.columns == {"image": "image", "mask": "vessel_mask", "fov": "fov_mask", "split": "split"}
    assert any("columns used: image 'image', mask 'vessel_mask', fov 'fov_mask', split 'split'" in n for n in csv_ds.notes)
    assert csv_ds.split_source == "carved" and len(csv_ds) == 2  # no val rows: one image carved out of train


# ------------------------------------------------------------------------------------------------
# CHASE_DB1 and STARE: images and their masks in one folder
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, image, masks",
    [
        ("CHASE_DB1", "Image_{:02d}{}.jpg", ("Image_{:02d}{}_1stHO.png", "Image_{:02d}{}_2ndHO.png")),
        ("STARE", "im{:03d}{}.ppm", ("im{:03d}{}.ah.ppm", "im{:03d}{}.vk.ppm")),
    ],
)
def test_images_and_masks_in_one_folder(tmp_path: Path, name: str, image: str, masks: tuple[str, str]) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / name
    eyes = [(1, "L"), (1, "R"), (2, "L"), (2, "R")] if name == "CHASE_DB1" else [(k, "") for k in (1, 2, 3, 4)]
    for k, eye in eyes:
        rgb, vessels = fundus_pair(rng)
        save(root / image.format(k, eye), rgb, "JPEG" if image.endswith(".jpg") else "PPM")
        for j, pattern in enumerate(masks):
            m = vessels if j == 0 else np.roll(vessels, 1, axis=0)  # the second annotator differs
            arr = (m * 255).astype(np.uint8)
            save(root / pattern.format(k, eye), np.stack([arr] * 3, -1) if pattern.endswith(".ppm") else arr)
    fundus = get_domain("fundus")
    ds = local_dataset(fundus, root, task="segment")
    first = masks[0].split("{}")[-1].split(".", 1)[0] if name == "CHASE_DB1" else ".ah"
    assert ds.layout == "paired" and len(ds) == 4 and ds.masks is not None
    assert all(first.lower() in m.name.lower() for m in ds.masks)  # the first annotator's masks
    assert "not used" in ds.notes[0]  # ... and the second's are named as left out
    s = ds[0]
    assert s.mask.shape == s.image.shape[1:] and 0 < float(s.mask.float().mean()) < 0.5  # vessels, on the image grid

    out = tmp_path / "run"
    run("fundus", "segment", out, f"data.train={root}", "data.input_size=32", "data.val_fraction=0.25")
    res = evaluate(out / "best", root, tmp_path / "eval", device="cpu")
    assert res["counts"]["cases"] == 4 and res["data"]["layout"] == "paired"
    # predict on the published folder: the four images, never their masks
    items, skipped = collect_inputs(root, fundus)
    assert len(items) == 4 and len(skipped) == 8
    summary = predict_paths(out / "best", root, tmp_path / "pred", device="cpu", progress=False)
    assert summary.ok and sorted(Path(p).name for p in summary.outputs) == sorted(image.format(k, e) for k, e in eyes)


def test_predict_skips_the_masks_of_images_beside_them(tmp_path: Path) -> None:
    for f in ("a.png", "a_mask.png", "b.jpg", "b_fov.png", "c.png", "Image_01L.jpg", "Image_01L_1stHO.png",
              "im0001.ppm", "im0001.vk.ppm", "x_mask.png"):  # fmt: skip
        (tmp_path / f).write_bytes(b"")
    masks = {p.name for p in mask_files_among(sorted(tmp_path.iterdir()))}
    # x_mask.png has no image x beside it: an input like any other
    assert masks == {"a_mask.png", "b_fov.png", "Image_01L_1stHO.png", "im0001.vk.ppm"}


# ------------------------------------------------------------------------------------------------
# NIH ChestX-ray14: a folder per class, patient id in the file name
# ------------------------------------------------------------------------------------------------
def make_nih(root: Path, per_class: int = 6, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    for c, (name, value) in enumerate((("No Finding", 90), ("Pneumonia", 170))):
        for i in range(per_class):
            patient = 1000 + c * 100 + i // 2  # two films per patient
            grey_png(root / name / f"{patient:08d}_{i % 2:03d}.png", value, rng)
    return root


def test_nih_class_folders_classify_and_anomaly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_nih(tmp_path / "nih")
    xray = get_domain("xray")
    # a folder per class is single-label (softmax), although the X-ray synthetic findings are multi-label
    ds = local_dataset(xray, root)
    assert ds.class_names == ("No Finding", "Pneumonia") and not ds.multi_label and ds.labels == [0] * 6 + [1] * 6
    # patient-grouped hold-out from the file names: no patient on both sides
    val = local_dataset(xray, root, split="val", val_fraction=0.34, group_by="prefix")
    train = local_dataset(xray, root, split="train", val_fraction=0.34, group_by="prefix")
    assert {f.name[:8] for f in val.files}.isdisjoint({f.name[:8] for f in train.files})
    assert sorted(set(val.labels)) == [0, 1] and len(val) + len(train) == 12

    out = tmp_path / "cls"
    run("xray", "classify", out, f"data.train={root}", "data.input_size=32", "model.patch_size=8",
        "data.val_fraction=0.34", "data.group_by=prefix")  # fmt: skip
    meta = read_checkpoint_meta(out / "best")
    assert meta["multi_label"] is False and meta["class_names"] == ["No Finding", "Pneumonia"]
    res = evaluate(out / "best", root, tmp_path / "eval_cls", device="cpu")
    assert res["metrics"]["multi_label"] is False and res["counts"]["cases"] == 12
    assert predict_paths(out / "best", root / "Pneumonia", tmp_path / "pred_cls", device="cpu", progress=False).ok

    # anomaly: trained on the normal class, whatever it is called ("No Finding")
    ano = tmp_path / "ano"
    capsys.readouterr()
    run("xray", "anomaly", ano, f"data.train={root}", "data.input_size=32", "model.patch_size=8",
        "data.val_fraction=0.34", "data.group_by=prefix")  # fmt: skip
    said = capsys.readouterr().out
    assert "anomaly training on the 4 'No Finding' images" in said and "the class named 'No Finding'" in said
    a = read_checkpoint_meta(ano / "best")["anomaly"]
    assert a["normal_class"] == "No Finding" and a["calibration_images"] == 2
    res = evaluate(ano / "best", root, tmp_path / "eval_ano", device="cpu")
    m = res["metrics"]
    assert m["normal_class"] == "No Finding" and res["counts"] == {"cases": 12, "normal": 6, "anomalous": 6,
                                                                   "cases_with_mask": 0}  # fmt: skip
    assert set(m["per_class"]) == {"No Finding", "Pneumonia"} and m["per_class"]["Pneumonia"]["cases"] == 6
    assert m["per_class"]["Pneumonia"]["auroc_vs_normal"] == pytest.approx(m["image_auroc"])
    rows = list(csv.DictReader(open(tmp_path / "eval_ano" / "per_case.csv")))
    assert {r["class"] for r in rows} == {"No Finding", "Pneumonia"}
    assert predict_paths(ano / "best", root / "No Finding", tmp_path / "pred_ano", device="cpu", progress=False).ok


# ------------------------------------------------------------------------------------------------
# a manifest with train/test splits and patient ids
# ------------------------------------------------------------------------------------------------
def make_manifest(root: Path, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(24):
        label = i % 2
        patient = f"P{i // 2 + (0 if label == 0 else 50):03d}"  # two films per patient, one class per patient
        split = "test" if i >= 18 else "train"
        name = f"images/{'normal' if label == 0 else 'pneumonia'}_{i:02d}.png"
        grey_png(root / name, 90 + 80 * label, rng)
        rows.append([name, str(label), "normal" if label == 0 else "pneumonia", patient, split])
    return write_csv(root / "manifest.csv", ["path", "label", "class_name", "patient_id", "split"], rows)


def test_train_test_manifest_with_patient_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv_path = make_manifest(tmp_path / "cxr")
    xray = get_domain("xray")
    train = local_dataset(xray, csv_path, split="train")
    val = local_dataset(xray, csv_path, split="val")
    test = local_dataset(xray, csv_path, split="test")
    assert train.columns == {"image": "path", "label": "label", "class_name": "class_name", "group": "patient_id",
                             "split": "split"}  # fmt: skip
    assert train.split_source == val.split_source == "carved" and test.split_source == "column"
    assert len(train) + len(val) == 18 and len(test) == 6
    assert set(train.groups).isdisjoint(val.groups)  # a patient on one side only
    assert sorted(set(val.labels)) == [0, 1]  # stratified
    assert "grouped by patient_id" in " ".join(val.notes)

    out = tmp_path / "run"
    result = run("xray", "classify", out, f"data.train={csv_path}", "data.input_size=32", "model.patch_size=8")
    said = capsys.readouterr().out
    assert "columns used: image 'path', label 'label', class_name 'class_name', split 'split', group 'patient_id'" in said
    assert "carved out of the train split (splits present: test, train), stratified by class and grouped by patient_id" in said
    assert result["best_value"] is not None and math.isfinite(result["best_value"])  # validation ran
    res = evaluate(out / "best", csv_path, tmp_path / "eval", device="cpu")
    assert res["data"]["split"] == "test" and res["counts"]["cases"] == 6
    assert predict_paths(out / "best", tmp_path / "cxr" / "images", tmp_path / "pred", device="cpu", progress=False).ok

    # anomaly on the same manifest: normal class by name, calibrated on the carved validation set
    ano = tmp_path / "ano"
    run("xray", "anomaly", ano, f"data.train={csv_path}", "data.input_size=32", "model.patch_size=8")
    a = read_checkpoint_meta(ano / "best")["anomaly"]
    assert a["normal_class"] == "normal" and a.get("image_threshold") is not None
    res = evaluate(ano / "best", csv_path, tmp_path / "eval_ano", device="cpu")
    assert res["counts"]["normal"] == 3 and res["counts"]["anomalous"] == 3
    assert "pneumonia" in res["metrics"]["per_class"]


def test_normal_class_names_and_override() -> None:
    for names, expected in ((["No_findings", "Pneumonia"], 0), (["pneumonia", "No Finding"], 1), (["cat", "healthy"], 1),
                            (["0", "1"], 0), (["Pneumonia", "normal"], 1)):  # fmt: skip
        assert normal_class_index(names)[0] == expected, names
    assert normal_class_index(["a", "b"])[0] is None
    assert normal_class_index(["a", "b"], "b") == (1, "data.normal_class=b")
    assert normal_class_index(["x", "y"], 0)[0] == 0  # an index when no class is called "0"
    with pytest.raises(InputError, match=r"normal class 'c' is not one of the classes \(a, b\)"):
        normal_class_index(["a", "b"], "c")


def test_anomaly_with_unnamed_normal_class_uses_data_normal_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for name, v in (("clear_film", 90), ("opacity", 170)):
        for i in range(4):
            grey_png(tmp_path / "d" / name / f"{i}.png", v, rng)
    plugin = get_domain("xray")
    data = {"train": str(tmp_path / "d"), "val_fraction": 0.25, "input_size": 32}
    with pytest.raises(InputError) as err:
        build_finetune_data(plugin, "anomaly", data, 0)
    assert "data.normal_class=NAME" in one_line(err) and "clear_film, opacity" in str(err.value)
    built = build_finetune_data(plugin, "anomaly", {**data, "normal_class": "clear_film"}, 0)
    assert built.normal_class == "clear_film" and len(built.train) == 3 and built.normal_index == 0


# ------------------------------------------------------------------------------------------------
# bad input and edges: one line naming the file or class, before any training
# ------------------------------------------------------------------------------------------------
def test_bad_input_is_one_line_before_training(tmp_path: Path) -> None:
    xray = get_domain("xray")
    rng = np.random.default_rng(5)
    # a class with one image
    for name, n in (("normal", 4), ("rare", 1)):
        for i in range(n):
            grey_png(tmp_path / "one" / name / f"{name}{i}.png", 100, rng)
    with pytest.raises(InputError) as err:
        build_finetune_data(xray, "classify", {"train": str(tmp_path / "one"), "val_fraction": 0.25}, 0)
    assert "class 'rare' has only one image (rare0.png)" in one_line(err)

    # a split that leaves a class without validation images
    rows = [[f"i{i}.png", "a" if i < 4 else "b", "val" if i in (0, 1) else "train"] for i in range(7)]
    for i in range(7):
        grey_png(tmp_path / "m" / f"i{i}.png", 100, rng)
    bad_split = write_csv(tmp_path / "m" / "split.csv", ["image", "label", "split"], rows)
    with pytest.raises(InputError) as err:
        build_finetune_data(xray, "classify", {"train": str(bad_split)}, 0)
    assert "class 'b' has no validation images in the split column's val rows" in one_line(err)

    # a manifest with a missing file (any split's row)
    missing = write_csv(tmp_path / "m" / "missing.csv", ["image", "label", "split"],
                        [["i0.png", "a", "train"], ["gone.png", "b", "test"]])  # fmt: skip
    with pytest.raises(InputError) as err:
        build_finetune_data(xray, "classify", {"train": str(missing)}, 0)
    assert one_line(err) == "missing.csv: line 3: image file 'gone.png' not found (paths are relative to the CSV)"

    # a mask of another size than its image: the CLI says so in one line and trains nothing
    seg = tmp_path / "seg"
    for i in range(3):
        grey_png(seg / "images" / f"c{i}.png", 100, rng)
        m = np.zeros((40, 40) if i != 1 else (30, 40), np.uint8)
        m[5:15, 5:15] = 1
        save(seg / "masks" / f"c{i}.png", m)
    out = tmp_path / "out"
    code = main(["finetune", "--config", str(ROOT / "configs" / "xray" / "segment.yaml"), *QUIET, *SMALL,
                 f"data.train={seg}", "data.val_fraction=0.3", f"out_dir={out}"])  # fmt: skip
    assert code == 2 and not (out / "metrics.csv").exists()
    with pytest.raises(InputError) as err:
        build_finetune_data(xray, "segment", {"train": str(seg)}, 0)
    assert one_line(err) == "c1.png: mask is 40x30 (WxH) but its image c1.png is 40x40 (WxH)"


def test_unreadable_layout_names_the_folder_and_the_layouts(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    with pytest.raises(InputError) as err:
        local_dataset(get_domain("fundus"), tmp_path / "notes")
    msg = one_line(err)
    assert msg.startswith("notes: no fundus images found") and "understood layouts: a CSV manifest" in msg
    assert "CHASE_DB1 _1stHO" in msg and "a folder per class" in msg


def test_split_map_and_unknown_split_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    rows = []
    for i in range(6):
        grey_png(tmp_path / f"{i}.png", 100, rng)
        rows.append([f"{i}.png", "ab"[i % 2], ["fit", "fit", "fit", "fit", "check", "check"][i]])
    m = write_csv(tmp_path / "m.csv", ["filepath", "class_name", "subset"], rows)
    xray = get_domain("xray")
    with pytest.raises(InputError) as err:
        local_dataset(xray, m)
    msg = one_line(err)
    assert "unknown split 'fit'" in msg and "'fit', 'check'" in msg and "data.split_map=" in msg
    val = local_dataset(xray, m, split="val", split_map={"fit": "train", "check": "val"})
    assert [f.name for f in val.files] == ["4.png", "5.png"] and val.class_names == ("a", "b")
    # "check" rows left out; validation carved out of "fit", stratified: one image of each class
    carved = local_dataset(xray, m, split="val", split_map="fit:train,check:none")
    assert len(carved) == 2 and sorted(carved.labels) == [0, 1] and carved.split_source == "carved"
    with pytest.raises(InputError, match="use train, val, test or none"):
        local_dataset(xray, m, split_map="fit:training_set")


def test_info_on_a_13_band_tile_says_bands_were_guessed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tile = geotiff(tmp_path / "Forest_1.tif", np.arange(13 * 8 * 8).reshape(13, 8, 8) % 3000 + 100)
    assert main(["info", str(tile)]) == 0
    text = capsys.readouterr().out
    assert "guessed from the band count (13 bands -> sentinel2_l1c order)" in text and "--bands eurosat" in text
    assert main(["info", str(tile), "--bands", "eurosat", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["bands_guessed"] is False and d["channels"][-1]["name"] == "B8A" and "eurosat" in d["bands_note"]
    assert main(["info", str(tile), "--bands", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the real data, read as it is
# ------------------------------------------------------------------------------------------------
def _real(name: str) -> Path:
    manifest = REAL / name / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not present (real data live in ../shared/real)")
    return manifest


def test_real_xray_manifest() -> None:
    m = _real("xray")
    xray = get_domain("xray")
    ds = local_dataset(xray, m)
    assert ds.columns == {"image": "path", "label": "label", "class_name": "class_name", "group": "patient_id"}
    assert ds.class_names == ("No_findings", "Pneumonia") and not ds.multi_label
    assert len(ds) == 536 and ds.labels.count(0) == 246 and ds.labels.count(1) == 290
    assert len(set(ds.groups)) == 425
    assert normal_class_index(ds.class_names) == (0, "the class named 'No_findings'")
    train = local_dataset(xray, m, split="train", val_fraction=0.2)
    val = local_dataset(xray, m, split="val", val_fraction=0.2)
    assert set(train.groups).isdisjoint(val.groups) and len(train) + len(val) == 536
    assert 0.15 < len(val) / 536 < 0.25 and sorted(set(val.labels)) == [0, 1]


def test_real_fundus_manifest() -> None:
    m = _real("fundus")
    fundus = get_domain("fundus")
    ds = local_dataset(fundus, m, task="segment")
    assert ds.columns == {"image": "image", "mask": "mask", "fov": "fov_mask"} and len(ds) == 20
    assert all(f.name.endswith("_training_mask.gif") for f in ds.fovs)
    src = ds.read_source(0)
    assert src.meta["fov_source"] == "file" and 0.6 < float(src.valid.float().mean()) < 0.8
    assert "given FOV mask of each image" in ds.fov_note()


def test_real_multispectral_manifest() -> None:
    m = _real("multispectral")
    ms = get_domain("multispectral")
    ds = local_dataset(ms, m, bands="eurosat")
    assert ds.columns == {"image": "path", "label": "label", "class_name": "class_name"}
    assert len(ds) == 216 and ds.num_classes == 10 and ds.class_names[1] == "Forest" and not ds.multi_label
    s = ds[0]
    assert s.image.shape[0] == 13 and s.meta["channels"][-1]["name"] == "B8A"
