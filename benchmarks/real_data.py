"""UniMAE's shipped recipes against a from-scratch CNN on real, labelled public images, side by side.

For each real set in ``../shared/real`` (see its README) the script makes cross-validation folds (stratified;
chest X-rays grouped by patient so no patient is on both sides), then on every fold it

* trains UniMAE through the same code path as ``unimae finetune`` with the **shipped config**
  (``configs/<domain>/<task>.yaml``, only ``data.train``, ``data.bands`` and ``out_dir`` overridden) and
  scores the held-out images through the same path as ``unimae predict`` and the app (:class:`Predictor`);
* trains the reference a user would otherwise pick, from scratch, on the **same training items** (the same
  dataset object, so the same crops and augmentation) for the **same number of optimizer steps and batch
  size**: timm ``resnet18`` (classification) or MONAI ``BasicUNet`` (vessels); and scores it on the same
  model-space inputs, mapped back to the source grid the same way;
* for the classification sets, also a baseline with no pixels at all: each channel's mean, standard deviation
  and 10/50/90th percentiles of the same model-space input (a tile's spectrum, a film's intensity histogram)
  and a small MLP (``channel_stats``; fixed settings, seconds to train). Where it scores close to the image
  models, the labels are carried by global intensity, not by shape: read the image models' figures with that.

It prints, per set: the metric (accuracy / vessel Dice inside the field of view / AUROC), training wall time,
training samples/s and UniMAE / reference, as mean ± standard deviation over folds with the per-fold values.
With ``--seeds`` every fold is trained once per seed (both arms); the classification sets then also score each
fold's models of all seeds averaged (``seed_ensemble``), UniMAE's and the reference's.
The X-ray anomaly row compares the MAE anomaly recipe (trained on the normal training images only) with a
nearest-neighbour reference on downsampled normal images, and with the nearest-neighbour distance of each
film's intensity statistics (``channel_stats``: no pixel arrangement, no labels). The fundus row also evaluates both vessel models on
the held-out images rescaled (field of view 0.6x and 1.8x as wide) and with another colour balance, standing in
for other cameras.

    python benchmarks/real_data.py                      # every set, 5 folds (long on 2 CPU cores)
    python benchmarks/real_data.py --sets multispectral --folds 5 --json
    python benchmarks/real_data.py --sets xray --seeds 0,1,2 --json   # each fold trained with 3 seeds, both arms
    python benchmarks/real_data.py --quick              # smoke run: 1 fold, a few steps

Nothing here is copied into the project; without ``../shared/real`` the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

# the sibling module imports by name whether this file runs as a script (its folder is then sys.path[0]) or is
# loaded from its path
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_cards import acquisition_shifts, card_summary, card_summary_all, cv_scope, folds_used, write_demo  # noqa: E402,F401
from real_shifts import SHIFTS, UNSHIFTED, shifted, shifted_copies  # noqa: E402,F401
from real_training import (  # noqa: E402
    DEFAULT_REAL,
    EXTRA_OVERRIDES,
    PRETRAIN,
    QUICK,
    ROOT,
    TRAINING,
    auroc,
    channel_statistics,
    class_metric,
    knn_distance,
    seed_ensembles,
    view_statistics,
    dice,
    pretrain_arms,
    reference_data,
    run_unimae,
    split_rows,
    stratified_folds,
    summary,
    train_reference,
    train_statistics_classifier,
    write_csv,
)


class FoldRun(NamedTuple):
    """UniMAE's arm of one fold: what every set does before scoring its held-out images."""

    root: Path  # the set's folder
    config: Path  # the shipped config it trained with
    train_rows: list[dict[str, str]]
    test_rows: list[dict[str, str]]
    train_csv: Path
    overrides: list[str]
    ours: dict[str, Any]  # run_unimae's result
    predictor: Any  # the best model, loaded as `unimae predict` and the app load it


def unimae_fold(
    spec: RealSet, real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool,
) -> FoldRun:
    """The fold's training rows as a manifest (image + mask, or image + label [+ patient group]), the set's
    shipped config trained on it through ``unimae finetune``'s code path, and the best model loaded."""
    from unimae.apps.predict import load_predictor

    root = real / spec.folder
    config = ROOT / "configs" / spec.domain / f"{spec.task}.yaml"
    train_rows, test_rows = split_rows(rows, folds, fold)
    if not spec.labelled:  # label maps
        header, items = ["image", "mask"], [[root / r["image"], root / r["mask"]] for r in train_rows]
    else:
        header = ["image", "label"] + (["group"] if spec.grouped else [])
        items = [[root / r["path"], r["class_name"], *([r["patient_id"]] if spec.grouped else [])] for r in train_rows]
    train_csv = write_csv(work / "train.csv", header, items)
    overrides = [f"data.train={train_csv}", *spec.overrides, f"seed={TRAINING['seed']}", *(QUICK if quick else [])]
    ours = run_unimae(config, overrides, work / "unimae")
    predictor = load_predictor(work / "unimae" / "best", device="cpu", precision="auto")
    return FoldRun(root, config, train_rows, test_rows, train_csv, overrides, ours, predictor)


# ------------------------------------------------------------------------------------------------
# classification sets (EuroSAT-MS, chest X-ray)
# ------------------------------------------------------------------------------------------------
def classification_fold(
    spec: RealSet, real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool,
) -> dict[str, Any]:
    import timm
    import torch
    import torch.nn.functional as F

    from unimae.apps.predict import load_predictor
    from unimae.core.tta import averaged

    domain = spec.domain
    root, config, train_rows, test_rows, train_csv, overrides, ours, predictor = unimae_fold(
        spec, real, fold, folds, rows, work, quick)
    classes = list(predictor.class_names)
    positive = spec.positive

    def score_unimae(path: Path) -> list[float]:
        p = predictor.predict(path, keep_source=False).probabilities
        return [p[c] for c in classes]

    # the reference: the same training items (same dataset object: same crops and augmentation)
    data = reference_data(domain, "classify", ours)
    chans = int(data.train[0]["image"].shape[0])
    ref = timm.create_model("resnet18", pretrained=False, in_chans=chans, num_classes=len(classes))
    ref_index = {c: i for i, c in enumerate(data.class_names)}

    def ce(model: Any, batch: dict[str, Any]) -> Any:
        return F.cross_entropy(model(batch["image"].float()), batch["label"].long())

    ref_run = train_reference(ref, data.train, steps=ours["steps"], batch_size=ours["batch_size"], loss_fn=ce)

    views: dict[Path, Any] = {}

    def view_of(path: Path) -> Any:  # the model's view of a file (read, normalised, resized), read once per fold
        if path not in views:
            views[path] = predictor._eval_view(predictor.load(path)[1])
        return views[path]

    def score_ref(path: Path, tta: str = "none") -> list[float]:
        view = view_of(path)
        with torch.inference_mode():
            prob = averaged(lambda x, v: torch.softmax(ref(x.float()[None]), 1)[0], view.image, view.valid, tta,
                            spatial_dims=view.image.ndim - 1, per_pixel=False)  # fmt: skip
        return [float(prob[ref_index[c]]) for c in classes]

    def stats_of(path: Path) -> np.ndarray:
        return view_statistics(view_of(path))

    # a third arm: each channel's statistics (a tile's spectrum) and a small MLP, all training images
    stats_proba, stats_run = train_statistics_classifier(
        np.stack([stats_of(root / r["path"]) for r in train_rows]), [classes.index(r["class_name"]) for r in train_rows],
        len(classes), steps=20 if quick else 500)  # fmt: skip

    arms: list[tuple[str, Callable, dict[str, Any]]] = [("unimae", score_unimae, ours), ("reference", score_ref, ref_run),
                                                        ("channel_stats", lambda path: stats_proba(stats_of(path))[0].tolist(), stats_run)]  # fmt: skip
    if predictor.tta != "none":  # the same two models, the other way round: UniMAE in one pass, the reference with TTA
        plain = load_predictor(work / "unimae" / "best", device="cpu", precision="auto", tta="none")
        arms += [("unimae_plain", lambda path: [plain.predict(path, keep_source=False).probabilities[c] for c in classes], ours),
                 ("reference_tta", lambda path: score_ref(path, predictor.tta), ref_run)]  # fmt: skip
    if PRETRAIN["epochs"] > 0:
        for tag, run in pretrain_arms(domain, config, overrides, ours, train_csv, len(train_rows), work).items():
            arm = load_predictor(work / ("unimae_pre" if tag == "pretrained" else "unimae_long") / "best",
                                 device="cpu", precision="auto")  # fmt: skip
            arms.append((tag, lambda path, arm=arm: [arm.predict(path, keep_source=False).probabilities[c] for c in classes], run))
    truth = [r["class_name"] for r in test_rows]
    out: dict[str, Any] = {"classes": classes, "truth": truth}
    shifts = list(spec.shifts[:1] if quick else spec.shifts)
    copies = shifted_copies([root / r["path"] for r in test_rows], work, shifts)
    for tag, fn, run in arms:
        probs = np.array([fn(root / r["path"]) for r in test_rows])
        out[tag] = {"metric": class_metric(spec, probs, truth, classes), "seconds": run["seconds"],
                    "samples_per_s": run["samples"] / run["seconds"], "probs": np.round(probs, 5).tolist(),
                    **{k: run[k] for k in ("pretrain_seconds", "finetune_seconds", "stretch") if k in run}}  # fmt: skip
        if shifts and tag in ("unimae", "reference", "channel_stats"):  # the same models on shifted copies
            out[tag]["conditions"] = {UNSHIFTED: out[tag]["metric"], **{
                cond: class_metric(spec, np.array([fn(path) for path in copies[cond]]), truth, classes)
                for cond in shifts}}  # fmt: skip
    out["steps"] = ours["steps"]
    return out


# ------------------------------------------------------------------------------------------------
# fundus vessels (DRIVE)
# ------------------------------------------------------------------------------------------------
def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path).convert("L")) > 0


def fundus_fold(
    spec: RealSet, real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool,
) -> dict[str, Any]:
    import cv2
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from unimae.apps.predict import load_predictor
    from unimae.core.inference import sliding_window
    from unimae.core.tta import averaged

    root, config, train_rows, test_rows, train_csv, overrides, ours, predictor = unimae_fold(
        spec, real, fold, folds, rows, work, quick)

    data = reference_data(spec.domain, spec.task, ours)
    ref = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def seg_loss(model: Any, batch: dict[str, Any]) -> Any:
        target = batch["mask"].long().clamp(0, 1) * batch["valid"].long()  # outside the FOV: background
        return loss(model(batch["image"].float()), target[:, None])

    ref_run = train_reference(ref, data.train, steps=ours["steps"], batch_size=ours["batch_size"], loss_fn=seg_loss)
    roi = predictor.input_size

    def ref_labels(path: Path, tta: str = "none") -> np.ndarray:
        src, sample = predictor.load(path)

        def window(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return sliding_window(lambda t: torch.softmax(ref(t), 1), x.float()[None], roi, overlap=0.25, mode="gaussian")[0]

        with torch.inference_mode():
            probs = averaged(window, sample.image, sample.valid, tta, spatial_dims=2, per_pixel=True)
        lab = probs.argmax(0).numpy().astype(np.uint8) * sample.valid.numpy()
        h, w = src.spatial_shape
        return cv2.resize(lab.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)

    def ours_labels(path: Path) -> np.ndarray:
        return predictor.predict(path, keep_source=False).label_map

    conditions = [UNSHIFTED, *(spec.shifts[:1] if quick else spec.shifts)]
    arms: list[tuple[str, Callable, dict[str, Any]]] = [("unimae", ours_labels, ours), ("reference", ref_labels, ref_run)]
    if predictor.tta != "none":  # the same two models, the other way round: UniMAE in one pass, the reference with TTA
        plain = load_predictor(work / "unimae" / "best", device="cpu", precision="auto", tta="none")
        arms += [("unimae_plain", lambda path: plain.predict(path, keep_source=False).label_map, ours),
                 ("reference_tta", lambda path: ref_labels(path, predictor.tta), ref_run)]  # fmt: skip
    if PRETRAIN["epochs"] > 0:
        for tag, run in pretrain_arms(spec.domain, config, overrides, ours, train_csv, len(train_rows), work).items():
            arm = load_predictor(work / ("unimae_pre" if tag == "pretrained" else "unimae_long") / "best",
                                 device="cpu", precision="auto")  # fmt: skip
            arms.append((tag, lambda path, arm=arm: arm.predict(path, keep_source=False).label_map, run))
    out: dict[str, Any] = {"steps": ours["steps"]}
    copies = shifted_copies([root / r["image"] for r in test_rows], work, conditions)
    truths = [(_read_gif(root / r["mask"]), _read_gif(root / r["fov_mask"])) for r in test_rows]
    for tag, fn, run in arms:
        per: dict[str, float] = {}
        for cond in conditions:
            scores = []
            for img, (truth, fov) in zip(copies[cond], truths):
                pred = fn(img)
                if pred.shape != truth.shape:  # score on the source grid of the original image
                    pred = cv2.resize(pred.astype(np.uint8), truth.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
                scores.append(dice(pred, truth, fov))
            per[cond] = float(np.mean(scores))
        out[tag] = {"metric": per[UNSHIFTED], "conditions": per, "seconds": run["seconds"],
                    "samples_per_s": run["samples"] / run["seconds"],
                    **{k: run[k] for k in ("pretrain_seconds", "finetune_seconds", "stretch") if k in run}}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------
# X-ray anomaly (normal-only training)
# ------------------------------------------------------------------------------------------------
def xray_anomaly_fold(
    spec: RealSet, real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool,
) -> dict[str, Any]:
    from PIL import Image

    run = unimae_fold(spec, real, fold, folds, rows, work, quick)
    root, train_rows, test_rows, ours, predictor = run.root, run.train_rows, run.test_rows, run.ours, run.predictor
    truth = [r["class_name"] != "No_findings" for r in test_rows]
    t0 = time.perf_counter()
    s_ours = [predictor.predict(root / r["path"], keep_source=False).score for r in test_rows]
    ours_pred_s = time.perf_counter() - t0

    # reference: mean distance to the 5 nearest normal training images, 32 x 32, each image standardised
    def vec(path: Path) -> np.ndarray:
        a = np.asarray(Image.open(path).convert("L").resize((32, 32), Image.BILINEAR), np.float32)
        return ((a - a.mean()) / (a.std() + 1e-6)).ravel()

    t0 = time.perf_counter()
    bank = np.stack([vec(root / r["path"]) for r in train_rows if r["class_name"] == "No_findings"])
    ref_fit = time.perf_counter() - t0

    def knn(path: Path) -> float:
        return knn_distance(bank, vec(path))

    s_ref = [knn(root / r["path"]) for r in test_rows]

    # a second reference with no pixel arrangement: each film's intensity statistics (channel_statistics of the
    # model's own view of it), standardised over the normal training films, and the mean distance to the 5 nearest
    def stats_of(path: Path) -> np.ndarray:
        return view_statistics(predictor._eval_view(predictor.load(path)[1]))

    t0 = time.perf_counter()
    sbank = np.stack([stats_of(root / r["path"]) for r in train_rows if r["class_name"] == "No_findings"])
    s_mean, s_std = sbank.mean(0), sbank.std(0) + 1e-6
    zbank = (sbank - s_mean) / s_std
    stats_fit = time.perf_counter() - t0

    def stats_knn(path: Path) -> float:
        return knn_distance(zbank, (stats_of(path) - s_mean) / s_std)

    s_stats = [stats_knn(root / r["path"]) for r in test_rows]
    return {"steps": ours["steps"],
            "unimae": {"metric": auroc(s_ours, truth), "seconds": ours["seconds"],
                       "samples_per_s": ours["samples"] / ours["seconds"], "predict_s": ours_pred_s},
            "reference": {"metric": auroc(s_ref, truth), "seconds": ref_fit, "samples_per_s": float("nan")},
            "channel_stats": {"metric": auroc(s_stats, truth), "seconds": stats_fit, "samples_per_s": float("nan")}}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
class RealSet(NamedTuple):
    """One set of ``../shared/real``: where it is, what UniMAE trains on it, how it is scored, against what."""

    folder: str  # sub-folder of ../shared/real holding manifest.csv
    domain: str
    task: str
    metric: str
    reference: str  # the reference model, as printed
    run_fold: Callable[..., dict[str, Any]]  # (spec, real, fold, folds, rows, work, quick) -> per-arm results
    card: dict[str, str]  # the data section of a shipped demo model's card
    overrides: tuple[str, ...] = ()  # what the files need besides data.train (EuroSAT: its band order)
    positive: str | None = None  # classification: AUROC of this class (else accuracy)
    grouped: bool = False  # folds keep a patient_id's images together
    labelled: bool = True  # folds stratified by label (else round-robin: DRIVE has one label map per image)
    baseline_note: str = ", trained from scratch on the same fold and steps"
    caveat: str = ""  # what the benchmark found that a user of the shipped model should know (its card's caveats)
    shifts: tuple[str, ...] = ()  # acquisition shifts (SHIFTS) the held-out images are also scored under
    reliable: bool = True  # False: the benchmark found the recipe does not work (the card says so; the app withholds its verdict)


_NIH = {"source": "NIH Clinical Center ChestX-ray14 via DarkCovidNet's X-Ray Image DataSet",
        "licence": "no restrictions; cite the paper and acknowledge the NIH Clinical Center",
        "citation": "Wang et al., ChestX-ray8, CVPR 2017"}  # fmt: skip
REAL_SETS: dict[str, RealSet] = {
    "multispectral": RealSet(
        "multispectral", "multispectral", "classify", "accuracy", "timm resnet18", classification_fold,
        {"name": "EuroSAT-MS (216 Sentinel-2 L1C tiles of ../shared/real/multispectral, 13 bands, 10 classes)",
         "source": "EuroSAT (Helber et al. 2019), tiles vendored in a public EuroSAT-MS classification repository",
         "licence": "MIT", "citation": "Helber et al., EuroSAT, IEEE JSTARS 2019"},
        overrides=("data.bands=eurosat",),
        caveat="on these 216 tiles a small MLP on each band's mean, spread and percentiles, with no pixel "
               "arrangement at all, beats this model (accuracy 0.773 against 0.716 over 5 folds x 3 seeds; README): "
               "land cover here is mostly the spectrum, so compare with that baseline on your own tiles"),
    "fundus": RealSet(
        "fundus", "fundus", "segment", "vessel Dice in FOV", "MONAI BasicUNet", fundus_fold,
        {"name": "DRIVE training images (20 colour fundus photographs, 565x584, manual vessel masks)",
         "source": "DRIVE (Staal et al. 2004), a public copy of the dataset",
         "licence": "research use; cite the paper", "citation": "Staal et al., IEEE TMI 2004"},
        labelled=False, shifts=("FOV 0.6x", "FOV 1.8x", "colour", "blur", "half resolution", "noise", "JPEG q40",
                                "gamma 0.7")),
    "xray": RealSet(
        "xray", "xray", "classify", "AUROC pneumonia", "timm resnet18", classification_fold,
        {"name": "536 NIH ChestX-ray14 frontal films (246 No finding, 290 Pneumonia), 256 px", **_NIH},
        positive="Pneumonia", grouped=True,
        shifts=("gamma 0.7", "gamma 1.4", "brighter", "blur", "half resolution", "noise", "JPEG q40"),
        caveat="in this NIH subset the pneumonia films are darker overall: a film's grey-level statistics alone, "
               "with no pixel arrangement, reach AUROC 0.764 over 5 folds (README), so part of what the model learned "
               "is how the film was taken, not the opacity; expect lower scores where pneumonia and normal films are "
               "taken alike"),
    "xray_anomaly": RealSet(
        "xray", "xray", "anomaly", "image AUROC", "5-NN distance, 32 px normals", xray_anomaly_fold,
        {"name": "the No finding films of 536 NIH ChestX-ray14 frontal films, 256 px", **_NIH},
        overrides=("data.normal_class=No_findings",), grouped=True,
        baseline_note=" of the same fold's normal training images",
        caveat="not a reliable detector: retrained with other seeds the same recipe ranks pneumonia films below "
               "normal ones on 7 of 10 runs (image AUROC 0.505 +- 0.212 over 5 folds x 3 seeds; this seed-0 model: "
               "0.804 on its held-out fold), because its score follows the film's overall brightness (rank "
               "correlation -0.73 with the mean grey level), not a local finding; and the map does not point at "
               "the pneumonia: on 28 NIH films with a radiologist's box its hottest pixel falls in the box on 2 "
               "(chance 0.09), pixel AUROC 0.56 (benchmarks/xray_localization.py; README)",
        reliable=False),
}  # fmt: skip
SETS = tuple(REAL_SETS)
#: the arms a fold may report: UniMAE's shipped recipe (predicting as its checkpoint says, with the domain's
#: test-time augmentation) and the reference; the same two models with TTA the other way round (UniMAE in one
#: pass, the reference averaged over the same symmetries); --pretrain-epochs' two arms
ARMS = ("unimae", "reference", "channel_stats", "unimae_plain", "reference_tta", "pretrained", "scratch_equal")


def _rows(real: Path, name: str) -> list[dict[str, str]]:
    with open(real / REAL_SETS[name].folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def save_demo(name: str, checkpoint: Path, result: dict[str, Any], k: int, dest_root: Path,
              cv: dict[str, Any] | None = None, n_images: int = 0) -> Path:
    """Ship a model of set ``name`` as its domain's demo model, with a model card (:func:`real_cards.write_demo`)."""
    return write_demo(REAL_SETS[name], name, checkpoint, result, k, dest_root, cv=cv, n_images=n_images)


def run_set(name: str, real: Path, k: int, fold_ids: Sequence[int], quick: bool, seed: int = 0,
            save_demo_to: Path | None = None, seeds: Sequence[int] = (0,), save_all: bool = False) -> dict[str, Any]:
    """Every fold of ``fold_ids`` once per training seed of ``seeds`` (``seed`` makes the folds). The summaries
    are over every (fold, seed) run; with several seeds, ``fold_means`` summarises each fold's mean over seeds.
    ``save_demo_to``: ship the first fold's model as the demo model, or with ``save_all`` one trained afterwards on
    every image of the set (first seed), its card giving this run's cross-validation."""
    spec = REAL_SETS[name]
    rows = _rows(real, name)
    if not spec.labelled:
        folds = np.arange(len(rows)) % k
    else:
        groups = [r["patient_id"] for r in rows] if spec.grouped else None
        folds = stratified_folds([int(r["label"]) for r in rows], k, seed, groups=groups)
    per_fold = []
    before = TRAINING["seed"]
    try:
        for train_seed in seeds:
            TRAINING["seed"] = int(train_seed)
            for fold in fold_ids:
                work = Path(tempfile.mkdtemp(prefix=f"unimae-real-{name}-{fold}-"))
                try:
                    t0 = time.perf_counter()
                    r = spec.run_fold(spec, real, fold, folds, rows, work, quick)
                    r["fold"] = int(fold)
                    r["seed"] = int(train_seed)
                    r["n_test"] = int((folds == fold).sum())
                    r["held_out"] = [f"{spec.folder}/{row['path' if spec.labelled else 'image']}"
                                     for row, f in zip(rows, folds) if f == fold]  # fmt: skip
                    r["wall_s"] = time.perf_counter() - t0
                    per_fold.append(r)
                    if (save_demo_to is not None and not save_all and fold == fold_ids[0] and train_seed == seeds[0]
                            and not quick):  # fmt: skip
                        print(f"  saved {save_demo(name, work / 'unimae' / 'best', r, k, save_demo_to)}", file=sys.stderr)
                    print(f"  {name} fold {fold} seed {train_seed}: UniMAE {r['unimae']['metric']:.3f} "
                          f"({r['unimae']['seconds']:.0f} s)  reference {r['reference']['metric']:.3f} "
                          f"({r['reference']['seconds']:.0f} s)"
                          + (f"  channel stats {r['channel_stats']['metric']:.3f}" if "channel_stats" in r else ""),
                          file=sys.stderr, flush=True)  # fmt: skip
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        TRAINING["seed"] = before  # as it was, whatever happened
    out: dict[str, Any] = {"set": name, "metric": spec.metric, "reference_model": spec.reference, "folds": k,
                           "folds_run": list(fold_ids), "seeds": [int(x) for x in seeds], "per_fold": per_fold}  # fmt: skip
    tags = [tag for tag in ARMS if per_fold and tag in per_fold[0]]
    for tag in tags:
        out[tag] = {
            "metric": summary([r[tag]["metric"] for r in per_fold]),
            "seconds": summary([r[tag]["seconds"] for r in per_fold]),
            "samples_per_s": summary([r[tag]["samples_per_s"] for r in per_fold]),
        }
        if len(seeds) > 1:  # each fold's mean over the seeds, then their spread over folds
            out[tag]["fold_means"] = summary([float(np.mean([r[tag]["metric"] for r in per_fold if r["fold"] == f]))
                                              for f in fold_ids])  # fmt: skip
        conds = per_fold[0][tag].get("conditions", {}) if per_fold else {}  # acquisition shifts
        if conds:
            out[tag]["conditions"] = {c: summary([r[tag]["conditions"][c] for r in per_fold]) for c in conds}
    if len(seeds) > 1 and spec.task == "classify":
        out["seed_ensemble"] = seed_ensembles(spec, per_fold, fold_ids)
    out["ratio"] = summary([r["unimae"]["metric"] / r["reference"]["metric"] for r in per_fold
                             if r["reference"]["metric"] == r["reference"]["metric"] and r["reference"]["metric"] > 0])
    if save_demo_to is not None and save_all and not quick:
        work = Path(tempfile.mkdtemp(prefix=f"unimae-real-{name}-all-"))
        try:
            TRAINING["seed"] = int(seeds[0])
            unimae_fold(spec, real, -1, np.zeros(len(rows), int), rows, work, quick)  # fold -1: no image held out
            path = save_demo(name, work / "unimae" / "best", {}, k, save_demo_to, cv=out, n_images=len(rows))
            print(f"  saved {path} (trained on all {len(rows)} images)", file=sys.stderr)
        finally:
            TRAINING["seed"] = before
            shutil.rmtree(work, ignore_errors=True)
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the real-data folder (default ../shared/real)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    ap.add_argument("--run-folds", default=None, help="which folds to run, e.g. 0,1 (default: all)")
    ap.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2: every fold is trained once per seed, "
                    "both arms (default 0); the folds stay the same")
    ap.add_argument("--quick", action="store_true", help="smoke run: fold 0 only, 4 training steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra config override for UniMAE (e.g. model.predict_variance=true), to try a recipe")
    ap.add_argument("--pretrain-epochs", type=float, default=0.0, metavar="E",
                    help="also run `unimae pretrain` for E passes over each fold's training images, fine-tune from "
                         "it, and fine-tune from scratch for the same total wall time (classification and vessel sets)")
    ap.add_argument("--save-demo", nargs="?", const="fold", choices=("fold", "all"), default=None,
                    help="ship a UniMAE model as the domain's demo model (domains/<d>/demo/): 'fold' (the default) "
                         "the first fold's, its card giving that fold's held-out figures; 'all' one trained on every "
                         "image after the cross-validation, its card giving the cross-validation's figures")
    args = ap.parse_args(argv)
    if not args.real.is_dir():
        print(f"real data folder {args.real} not found: nothing to benchmark (see ../shared/real/README.md)")
        return 0
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in names if s not in SETS]
    if bad:
        ap.error(f"unknown set(s) {bad}; choose from {', '.join(SETS)}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fold_ids = [0] if args.quick else (
        [int(f) for f in args.run_folds.split(",")] if args.run_folds else list(range(args.folds)))  # fmt: skip
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if not seeds:
        ap.error("--seeds names no seed")
    results = []
    EXTRA_OVERRIDES[:] = list(args.overrides)
    PRETRAIN["epochs"] = float(args.pretrain_epochs)
    PRETRAIN["quick"] = bool(args.quick)
    for name in names:
        print(f"{name}: {len(fold_ids)} of {args.folds} folds x {len(seeds)} seed(s)", file=sys.stderr, flush=True)
        results.append(run_set(name, args.real, args.folds, fold_ids, args.quick,
                               save_demo_to=ROOT / "domains" if args.save_demo else None, seeds=seeds,
                               save_all=args.save_demo == "all"))  # fmt: skip
    machine = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip
    if args.json:
        print(json.dumps({"machine": machine, "quick": args.quick, "results": results}, indent=1))
        return 0
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} ({machine['torch_threads']} threads)")
    print(f"{'set':<14}{'metric':<20}{'UniMAE':>16}{'reference':>16}{'ratio':>8}{'train s':>16}{'samples/s':>18}  reference")
    for r in results:
        u, f = r["unimae"], r["reference"]
        print(f"{r['set']:<14}{r['metric']:<20}{_fmt(u['metric']):>16}{_fmt(f['metric']):>16}{r['ratio']['mean']:>8.2f}"
              f"{u['seconds']['mean']:>8.0f}/{f['seconds']['mean']:<7.0f}"
              f"{u['samples_per_s']['mean']:>9.1f}/{f['samples_per_s']['mean']:<8.1f}  {r['reference_model']}")  # fmt: skip
        for c, s in (u.get("conditions") or {}).items():
            print(f"{'':<14}{'  ' + c:<20}{_fmt(s):>16}{_fmt(f['conditions'][c]):>16}")
        if "unimae_plain" in r:  # test-time augmentation: both models with and without it
            print(f"{'':<14}{'  without TTA':<20}{_fmt(r['unimae_plain']['metric']):>16}{_fmt(f['metric']):>16}")
            print(f"{'':<14}{'  both with TTA':<20}{_fmt(u['metric']):>16}{_fmt(r['reference_tta']['metric']):>16}")
        if "channel_stats" in r:  # the per-channel statistics baseline (a tile's spectrum + a small MLP; anomaly: 5-NN)
            cs = r["channel_stats"]
            label = "  channel stats 5-NN" if REAL_SETS[r["set"]].task == "anomaly" else "  channel stats+MLP"
            print(f"{'':<14}{label:<20}{'':>16}{_fmt(cs['metric']):>16}{'':>8}"
                  f"{'':>8} {cs['seconds']['mean']:<7.1f}")
        if "fold_means" in u:  # several seeds: each fold's mean over them; their models averaged
            print(f"{'':<14}{'  fold means':<20}{_fmt(u['fold_means']):>16}{_fmt(f['fold_means']):>16}")
        ens = r.get("seed_ensemble") or {}
        if "unimae" in ens and "reference" in ens:
            print(f"{'':<14}{'  seeds averaged':<20}{_fmt(ens['unimae']):>16}{_fmt(ens['reference']):>16}")
        for tag, label in (("pretrained", "MAE pretrain + fine-tune"), ("scratch_equal", "scratch, same wall time")):
            if tag in r:
                a = r[tag]
                print(f"{'':<14}{'  ' + label:<20}{_fmt(a['metric']):>16}{'':>16}{'':>8}{a['seconds']['mean']:>8.0f}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
