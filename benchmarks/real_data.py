"""UniMAE's shipped recipes against a from-scratch CNN on real, labelled public images, side by side.

For each real set in ``../shared/real`` (see its README) the script makes cross-validation folds (stratified;
chest X-rays grouped by patient so no patient is on both sides), then on every fold it

* trains UniMAE through the same code path as ``unimae finetune`` with the **shipped config**
  (``configs/<domain>/<task>.yaml``, only ``data.train``, ``data.bands`` and ``out_dir`` overridden) and
  scores the held-out images through the same path as ``unimae predict`` and the app (:class:`Predictor`);
* trains the reference a user would otherwise pick, from scratch, on the **same training items** (the same
  dataset object, so the same crops and augmentation) for the **same number of optimizer steps and batch
  size**: timm ``resnet18`` (classification) or MONAI ``BasicUNet`` (vessels); and scores it on the same
  model-space inputs, mapped back to the source grid the same way.

It prints, per set: the metric (accuracy / vessel Dice inside the field of view / AUROC), training wall time,
training samples/s and UniMAE / reference, as mean ± standard deviation over folds with the per-fold values.
The X-ray anomaly row compares the MAE anomaly recipe (trained on the normal training images only) with a
nearest-neighbour reference on downsampled normal images. The fundus row also evaluates both vessel models on
the held-out images rescaled (field of view 0.6x and 1.8x as wide) and with another colour balance, standing in
for other cameras.

    python benchmarks/real_data.py                      # every set, 5 folds (long on 2 CPU cores)
    python benchmarks/real_data.py --sets multispectral --folds 5 --json
    python benchmarks/real_data.py --quick              # smoke run: 1 fold, a few steps

Nothing here is copied into the project; without ``../shared/real`` the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "real"
SETS = ("multispectral", "fundus", "xray", "xray_anomaly")
EXTRA_OVERRIDES: list[str] = []  # --set KEY=VALUE
PRETRAIN: dict[str, Any] = {"epochs": 0.0}  # --pretrain-epochs: also MAE pretraining -> fine-tune, and scratch at equal compute


# ------------------------------------------------------------------------------------------------
# folds
# ------------------------------------------------------------------------------------------------
def stratified_folds(labels: Sequence[int], k: int, seed: int = 0, groups: Sequence[str] | None = None) -> np.ndarray:
    """Fold index per item: classes spread evenly over ``k`` folds; all items of a group in one fold."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    groups = np.asarray(groups if groups is not None else [str(i) for i in range(len(labels))])
    uniq = list(dict.fromkeys(groups.tolist()))
    # a group's label: its majority label (patients with mixed labels are rare)
    glabel = {g: int(np.bincount(labels[groups == g]).argmax()) for g in uniq}
    fold_of: dict[str, int] = {}
    counts = np.zeros(k)
    for c in sorted(set(glabel.values())):
        members = [g for g in uniq if glabel[g] == c]
        rng.shuffle(members)
        for g in members:  # greedy: the fold with the fewest items of any class so far
            f = int(np.argmin(counts + rng.random(k) * 1e-3))
            fold_of[g] = f
            counts[f] += int((groups == g).sum())
    return np.array([fold_of[g] for g in groups])


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def dice(pred: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> float:
    p, t = (pred > 0) & fov, (truth > 0) & fov
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """Silence the data builder's notes (UniMAE's run already printed them; stdout stays the benchmark's)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _split(rows: list[dict[str, str]], folds: np.ndarray, fold: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(training rows, held-out rows)`` of one fold."""
    return [r for r, f in zip(rows, folds) if f != fold], [r for r, f in zip(rows, folds) if f == fold]


QUICK = ["train.epochs=null", "train.max_steps=4", "train.val_every=4"]  # --quick: a smoke run


def reference_data(domain: str, task: str, ours: dict[str, Any]) -> Any:
    """UniMAE's own training data for the reference (same items, crops and augmentation), without the
    validation images UniMAE holds out: the reference trains on all of the fold's training images."""
    from unimae.apps.finetune import build_finetune_data
    from unimae.domains import get_domain

    data_cfg = dict(ours["cfg"]["data"])
    data_cfg.pop("val", None)
    data_cfg["val_fraction"] = 0.0
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_finetune_data(get_domain(domain), task, data_cfg, int(ours["cfg"].get("seed", 0)))


def run_unimae(config: Path, overrides: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """``unimae finetune --config CONFIG OVERRIDES out_dir=OUT`` in this process; returns the result + timing."""
    from unimae.apps.finetune import finetune, load_finetune_config

    cfg = load_finetune_config(config, [*overrides, *EXTRA_OVERRIDES, f"out_dir={out_dir}"])
    cfg.setdefault("train", {})["progress"] = False
    cfg["train"]["tensorboard"] = False
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # stdout stays the benchmark's (--json)
        warnings.simplefilter("ignore")
        result = finetune(cfg)
    seconds = time.perf_counter() - t0
    tcfg = cfg["train"]
    steps = int(result["step"])
    samples = steps * int(tcfg.get("batch_size", 16)) * int(tcfg.get("accum_steps", 1))
    return {"result": result, "seconds": seconds, "steps": steps, "samples": samples, "cfg": cfg,
            "batch_size": int(tcfg.get("batch_size", 16))}  # fmt: skip


def run_pretrain(domain: str, ours_cfg: dict[str, Any], train_csv: Path, n_train: int, out_dir: Path) -> dict[str, Any]:
    """``unimae pretrain`` on the fold's training images (labels unused) with the fine-tuning recipe's encoder:
    ``configs/<domain>/pretrain.yaml`` with the recipe's architecture, data reading and batch size,
    ``--pretrain-epochs`` passes over the images, random masking at the domain's mask ratio, the recipe's lr."""
    from unimae.apps.pretrain import data_keys, pretrain
    from unimae.core.config import load_config
    from unimae.core.encoder_config import ARCHITECTURE_KEYS
    from unimae.domains import get_domain

    plugin = get_domain(domain)
    cfg = load_config(ROOT / "configs" / domain / "pretrain.yaml", [])
    model = {k: v for k, v in ours_cfg["model"].items() if k == "preset" or k in ARCHITECTURE_KEYS}
    cfg["model"] = {**model, "mask_ratio": cfg["model"].get("mask_ratio", 0.75), "masking": "random",
                    "gradient_branch": False}  # fmt: skip
    keep = set(data_keys(plugin))
    cfg["data"] = {k: v for k, v in ours_cfg["data"].items() if k in keep and k not in ("val", "num_samples", "num_val_samples")}
    cfg["data"].update(train=str(train_csv), val=None)
    bs = int(ours_cfg["train"].get("batch_size", 16))
    steps = max(1, int(round(PRETRAIN["epochs"] * n_train / bs)))
    if PRETRAIN.get("quick"):
        steps = min(steps, 4)
    cfg["train"].update(max_steps=steps, batch_size=bs, lr=float(ours_cfg["train"]["lr"]), warmup_steps=None,
                        progress=False, tensorboard=False, preview_every=0, val_every=0, save_every=steps)  # fmt: skip
    cfg["out_dir"] = str(out_dir)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        pretrain(cfg)
    return {"seconds": time.perf_counter() - t0, "steps": steps, "samples": steps * bs}


def pretrain_arms(domain: str, config: Path, overrides: Sequence[str], ours: dict[str, Any], train_csv: Path,
                  n_train: int, work: Path) -> dict[str, dict[str, Any]]:
    """Item 4 of the real-data issue: (a) MAE pretraining on the fold's own training images, then the shipped
    fine-tuning recipe from it; (b) the shipped recipe from scratch with its schedule stretched to the same
    total wall time as (a). Returns ``{"pretrained": run, "scratch_equal": run}`` (run as :func:`run_unimae`'s,
    with ``pretrain_seconds``)."""
    pre = run_pretrain(domain, ours["cfg"], train_csv, n_train, work / "pretrain")
    ft = run_unimae(config, [*overrides, f"init={work / 'pretrain'}"], work / "unimae_pre")
    ft["pretrain_seconds"] = pre["seconds"]
    ft["finetune_seconds"] = ft["seconds"]
    ft["seconds"] = pre["seconds"] + ft["seconds"]
    ft["samples"] += pre["samples"]
    stretch = ft["seconds"] / max(ours["seconds"], 1e-9)
    tcfg = ours["cfg"]["train"]
    if tcfg.get("max_steps") not in (None, "null"):
        longer = [f"train.max_steps={max(1, round(int(tcfg['max_steps']) * stretch))}"]
    else:
        longer = [f"train.epochs={max(1, round(float(tcfg['epochs']) * stretch))}"]
    eq = run_unimae(config, [*overrides, *longer], work / "unimae_long")
    eq["stretch"] = stretch
    return {"pretrained": ft, "scratch_equal": eq}


def train_reference(
    model: Any, dataset: Any, *, steps: int, batch_size: int, loss_fn: Callable, lr: float = 1e-3, seed: int = 0,
    weight_decay: float = 1e-4,
) -> dict[str, Any]:
    """AdamW with a 5 % warmup + cosine over ``steps`` optimizer steps on ``dataset`` (dict items)."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        generator=gen, num_workers=0)  # fmt: skip
    model.train()
    step, t0 = 0, time.perf_counter()
    epoch = 0
    while step < steps:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in loader:
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    model.eval()
    return {"seconds": time.perf_counter() - t0, "samples": steps * batch_size}


def _summary(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v == v]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "folds": []}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
            "folds": [round(v, 4) for v in vals]}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# classification sets (EuroSAT-MS, chest X-ray)
# ------------------------------------------------------------------------------------------------
def classification_fold(
    name: str, real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool,
) -> dict[str, Any]:
    import timm
    import torch
    import torch.nn.functional as F

    from unimae.apps.predict import load_predictor

    domain = "multispectral" if name == "multispectral" else "xray"
    config = ROOT / "configs" / domain / "classify.yaml"
    root = real / domain
    train_rows, test_rows = _split(rows, folds, fold)
    header = ["image", "label"] + (["group"] if "patient_id" in rows[0] else [])
    train_csv = _write_csv(
        work / "train.csv", header,
        [[root / r["path"], r["class_name"], *([r["patient_id"]] if "patient_id" in r else [])] for r in train_rows],
    )  # fmt: skip
    overrides = [f"data.train={train_csv}"] + (["data.bands=eurosat"] if domain == "multispectral" else [])
    if quick:
        overrides += QUICK
    ours = run_unimae(config, overrides, work / "unimae")
    predictor = load_predictor(work / "unimae" / "best", device="cpu", precision="auto")
    classes = list(predictor.class_names)
    positive = "Pneumonia" if domain == "xray" else None

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

    def score_ref(path: Path) -> list[float]:
        _, sample = predictor.load(path)
        view = predictor._eval_view(sample)
        with torch.inference_mode():
            prob = torch.softmax(ref(view.image.float()[None]), 1)[0]
        return [float(prob[ref_index[c]]) for c in classes]

    arms: list[tuple[str, Callable, dict[str, Any]]] = [("unimae", score_unimae, ours), ("reference", score_ref, ref_run)]
    if PRETRAIN["epochs"] > 0:
        for tag, run in pretrain_arms(domain, config, overrides, ours, train_csv, len(train_rows), work).items():
            arm = load_predictor(work / ("unimae_pre" if tag == "pretrained" else "unimae_long") / "best",
                                 device="cpu", precision="auto")  # fmt: skip
            arms.append((tag, lambda path, arm=arm: [arm.predict(path, keep_source=False).probabilities[c] for c in classes], run))
    out: dict[str, Any] = {}
    for tag, fn, run in arms:
        probs = np.array([fn(root / r["path"]) for r in test_rows])
        truth = [r["class_name"] for r in test_rows]
        if positive is not None:
            metric = auroc(probs[:, classes.index(positive)], [t == positive for t in truth])
        else:
            metric = float(np.mean([classes[int(i)] == t for i, t in zip(probs.argmax(1), truth)]))
        out[tag] = {"metric": metric, "seconds": run["seconds"], "samples_per_s": run["samples"] / run["seconds"],
                    **{k: run[k] for k in ("pretrain_seconds", "finetune_seconds", "stretch") if k in run}}  # fmt: skip
    out["steps"] = ours["steps"]
    return out


# ------------------------------------------------------------------------------------------------
# fundus vessels (DRIVE)
# ------------------------------------------------------------------------------------------------
def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path).convert("L")) > 0


def _shifted(path: Path, work: Path, zoom: float, gains: Sequence[float], tag: str) -> Path:
    """A copy of a fundus photograph rescaled by ``zoom`` with per-channel ``gains`` (another camera)."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    img = np.clip(img * np.asarray(gains, np.float32), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    if zoom != 1.0:
        im = im.resize((round(im.width * zoom), round(im.height * zoom)), Image.BILINEAR)
    out = work / f"{path.stem}_{tag}.png"
    im.save(out)
    return out


def fundus_fold(real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool) -> dict[str, Any]:
    import cv2
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from unimae.apps.predict import load_predictor
    from unimae.core.inference import sliding_window

    root = real / "fundus"
    config = ROOT / "configs" / "fundus" / "segment.yaml"
    train_rows, test_rows = _split(rows, folds, fold)
    train_csv = _write_csv(work / "train.csv", ["image", "mask"], [[root / r["image"], root / r["mask"]] for r in train_rows])
    overrides = [f"data.train={train_csv}"]
    if quick:
        overrides += QUICK
    ours = run_unimae(config, overrides, work / "unimae")
    predictor = load_predictor(work / "unimae" / "best", device="cpu", precision="auto")

    data = reference_data("fundus", "segment", ours)
    ref = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def seg_loss(model: Any, batch: dict[str, Any]) -> Any:
        target = batch["mask"].long().clamp(0, 1) * batch["valid"].long()  # outside the FOV: background
        return loss(model(batch["image"].float()), target[:, None])

    ref_run = train_reference(ref, data.train, steps=ours["steps"], batch_size=ours["batch_size"], loss_fn=seg_loss)
    roi = predictor.input_size

    def ref_labels(path: Path) -> np.ndarray:
        src, sample = predictor.load(path)
        x = sample.image.float()[None]
        with torch.inference_mode():
            probs = sliding_window(lambda t: torch.softmax(ref(t), 1), x, roi, overlap=0.25, mode="gaussian")[0]
        lab = probs.argmax(0).numpy().astype(np.uint8) * sample.valid.numpy()
        h, w = src.spatial_shape
        return cv2.resize(lab.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)

    def ours_labels(path: Path) -> np.ndarray:
        return predictor.predict(path, keep_source=False).label_map

    conditions = {"DRIVE": (1.0, (1.0, 1.0, 1.0)), "FOV 0.6x": (0.6, (1.0, 1.0, 1.0)),
                  "FOV 1.8x": (1.8, (1.0, 1.0, 1.0)), "colour": (1.0, (1.15, 0.85, 1.1))}  # fmt: skip
    if quick:
        conditions = {"DRIVE": conditions["DRIVE"]}
    arms: list[tuple[str, Callable, dict[str, Any]]] = [("unimae", ours_labels, ours), ("reference", ref_labels, ref_run)]
    if PRETRAIN["epochs"] > 0:
        for tag, run in pretrain_arms("fundus", config, overrides, ours, train_csv, len(train_rows), work).items():
            arm = load_predictor(work / ("unimae_pre" if tag == "pretrained" else "unimae_long") / "best",
                                 device="cpu", precision="auto")  # fmt: skip
            arms.append((tag, lambda path, arm=arm: arm.predict(path, keep_source=False).label_map, run))
    out: dict[str, Any] = {"steps": ours["steps"]}
    for tag, fn, run in arms:
        per: dict[str, float] = {}
        for cond, (zoom, gains) in conditions.items():
            scores = []
            for r in test_rows:
                img = root / r["image"]
                truth, fov = _read_gif(root / r["mask"]), _read_gif(root / r["fov_mask"])
                if cond != "DRIVE":
                    img = _shifted(img, work, zoom, gains, cond.replace(" ", "").replace(".", ""))
                pred = fn(img)
                if pred.shape != truth.shape:  # score on the source grid of the original image
                    pred = cv2.resize(pred.astype(np.uint8), truth.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
                scores.append(dice(pred, truth, fov))
            per[cond] = float(np.mean(scores))
        out[tag] = {"metric": per["DRIVE"], "conditions": per, "seconds": run["seconds"],
                    "samples_per_s": run["samples"] / run["seconds"],
                    **{k: run[k] for k in ("pretrain_seconds", "finetune_seconds", "stretch") if k in run}}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------
# X-ray anomaly (normal-only training)
# ------------------------------------------------------------------------------------------------
def xray_anomaly_fold(real: Path, fold: int, folds: np.ndarray, rows: list[dict[str, str]], work: Path, quick: bool) -> dict[str, Any]:
    from PIL import Image

    from unimae.apps.predict import load_predictor

    root = real / "xray"
    config = ROOT / "configs" / "xray" / "anomaly.yaml"
    train_rows, test_rows = _split(rows, folds, fold)
    train_csv = _write_csv(work / "train.csv", ["image", "label", "group"],
                           [[root / r["path"], r["class_name"], r["patient_id"]] for r in train_rows])  # fmt: skip
    overrides = [f"data.train={train_csv}", "data.normal_class=No_findings"]
    if quick:
        overrides += QUICK
    ours = run_unimae(config, overrides, work / "unimae")
    predictor = load_predictor(work / "unimae" / "best", device="cpu", precision="auto")
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
        d = np.sqrt(((bank - vec(path)) ** 2).sum(1))
        return float(np.sort(d)[:5].mean())

    s_ref = [knn(root / r["path"]) for r in test_rows]
    return {"steps": ours["steps"],
            "unimae": {"metric": auroc(s_ours, truth), "seconds": ours["seconds"],
                       "samples_per_s": ours["samples"] / ours["seconds"], "predict_s": ours_pred_s},
            "reference": {"metric": auroc(s_ref, truth), "seconds": ref_fit, "samples_per_s": float("nan")}}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
METRIC = {"multispectral": "accuracy", "fundus": "vessel Dice in FOV", "xray": "AUROC pneumonia",
          "xray_anomaly": "image AUROC"}  # fmt: skip
REFERENCE = {"multispectral": "timm resnet18", "fundus": "MONAI BasicUNet", "xray": "timm resnet18",
             "xray_anomaly": "5-NN distance, 32 px normals"}  # fmt: skip


def _rows(real: Path, name: str) -> list[dict[str, str]]:
    domain = "xray" if name.startswith("xray") else name
    with open(real / domain / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


DEMO = {  # set -> (domain, task, data card)
    "multispectral": ("multispectral", "classify", {
        "name": "EuroSAT-MS (216 Sentinel-2 L1C tiles of ../shared/real/multispectral, 13 bands, 10 classes)",
        "source": "EuroSAT (Helber et al. 2019), tiles vendored in a public EuroSAT-MS classification repository",
        "licence": "MIT", "citation": "Helber et al., EuroSAT, IEEE JSTARS 2019"}),
    "fundus": ("fundus", "segment", {
        "name": "DRIVE training images (20 colour fundus photographs, 565x584, manual vessel masks)",
        "source": "DRIVE (Staal et al. 2004), a public copy of the dataset",
        "licence": "research use; cite the paper", "citation": "Staal et al., IEEE TMI 2004"}),
    "xray": ("xray", "classify", {
        "name": "536 NIH ChestX-ray14 frontal films (246 No finding, 290 Pneumonia), 256 px",
        "source": "NIH Clinical Center ChestX-ray14 via DarkCovidNet's X-Ray Image DataSet",
        "licence": "no restrictions; cite the paper and acknowledge the NIH Clinical Center",
        "citation": "Wang et al., ChestX-ray8, CVPR 2017"}),
    "xray_anomaly": ("xray", "anomaly", {
        "name": "the No finding films of 536 NIH ChestX-ray14 frontal films, 256 px",
        "source": "NIH Clinical Center ChestX-ray14 via DarkCovidNet's X-Ray Image DataSet",
        "licence": "no restrictions; cite the paper and acknowledge the NIH Clinical Center",
        "citation": "Wang et al., ChestX-ray8, CVPR 2017"}),
}


def save_demo(name: str, checkpoint: Path, result: dict[str, Any], k: int, dest_root: Path) -> Path:
    """Ship the fold's UniMAE model as the domain's demo model: fp16 safetensors + JSON with a model card."""
    import torch
    from safetensors.torch import load_file, save_file

    domain, task, data_card = DEMO[name]
    dest = dest_root / domain / "demo"
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {key: (v.half() if v.is_floating_point() else v).contiguous() for key, v in load_file(str(checkpoint) + ".safetensors").items()}
    meta = json.loads(Path(str(checkpoint) + ".json").read_text())
    meta.pop("run_config", None)
    if isinstance(meta.get("config"), dict):  # no paths of this machine in a shipped file
        meta["config"].setdefault("data", {})["train"] = (f"../shared/real/{'xray' if name.startswith('xray') else domain}"
                                                          "/manifest.csv (the training folds of benchmarks/real_data.py)")
        meta["config"]["out_dir"] = f"domains/{domain}/demo"
    for key in ("data_source", "val_source", "out_dir"):
        meta.pop(key, None)
    u, ref = result["unimae"]["metric"], result["reference"]["metric"]
    meta["model_card"] = {
        "trained_on": "real",
        "data": {**data_card, "used": f"{k - 1} of {k} cross-validation folds (fold {result['fold']} held out, "
                                      f"{result['n_test']} images; chest X-rays split by patient)"},
        "metrics": {"metric": METRIC[name], "held_out_fold": result["fold"], "unimae": round(float(u), 4),
                    "baseline": REFERENCE[name] + (" of the same fold's normal training images" if name == "xray_anomaly"
                                                    else ", trained from scratch on the same fold and steps"),
                    "baseline_value": round(float(ref), 4),
                    "beats_baseline": bool(u > ref),
                    **({"other_cameras": result["unimae"].get("conditions")} if "conditions" in result["unimae"] else {})},
        "summary": (f"On the held-out fold this model scores {METRIC[name]} {u:.3f}; the baseline ({REFERENCE[name]}) "
                    f"scores {ref:.3f} on the same images: it " + ("beats" if u > ref else "does NOT beat")
                    + " the baseline there."),
        "intended_use": "demonstration of UniMAE on real images, not for diagnosis or any operational decision",
        "not_for": "clinical use, images unlike the training data (other modalities, views, sensors, processing "
                   "levels), or any decision about a patient or a place",
        "retrain": f"python benchmarks/real_data.py --real PATH/TO/real --sets {name} --run-folds {result['fold']} "
                   "--save-demo   # PATH/TO/real laid out like ../shared/real",
    }
    tmp_t, tmp_j = dest / f".{task}.safetensors.tmp", dest / f".{task}.json.tmp"
    save_file(tensors, str(tmp_t), metadata={"format": "pt"})
    tmp_j.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_t, dest / f"{task}.safetensors")
    os.replace(tmp_j, dest / f"{task}.json")
    return dest / f"{task}.json"


def run_set(name: str, real: Path, k: int, fold_ids: Sequence[int], quick: bool, seed: int = 0,
            save_demo_to: Path | None = None) -> dict[str, Any]:
    rows = _rows(real, name)
    if name == "fundus":
        folds = np.arange(len(rows)) % k
    elif name.startswith("xray"):
        folds = stratified_folds([int(r["label"]) for r in rows], k, seed, groups=[r["patient_id"] for r in rows])
    else:
        folds = stratified_folds([int(r["label"]) for r in rows], k, seed)
    per_fold = []
    for fold in fold_ids:
        work = Path(tempfile.mkdtemp(prefix=f"unimae-real-{name}-{fold}-"))
        try:
            t0 = time.perf_counter()
            if name == "fundus":
                r = fundus_fold(real, fold, folds, rows, work, quick)
            elif name == "xray_anomaly":
                r = xray_anomaly_fold(real, fold, folds, rows, work, quick)
            else:
                r = classification_fold(name, real, fold, folds, rows, work, quick)
            r["fold"] = int(fold)
            r["n_test"] = int((folds == fold).sum())
            r["wall_s"] = time.perf_counter() - t0
            per_fold.append(r)
            if save_demo_to is not None and fold == fold_ids[0] and not quick:
                print(f"  saved {save_demo(name, work / 'unimae' / 'best', r, k, save_demo_to)}", file=sys.stderr)
            print(f"  {name} fold {fold}: UniMAE {r['unimae']['metric']:.3f} ({r['unimae']['seconds']:.0f} s)  "
                  f"reference {r['reference']['metric']:.3f} ({r['reference']['seconds']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)
    out: dict[str, Any] = {"set": name, "metric": METRIC[name], "reference_model": REFERENCE[name], "folds": k,
                           "folds_run": list(fold_ids), "per_fold": per_fold}  # fmt: skip
    tags = [tag for tag in ("unimae", "reference", "pretrained", "scratch_equal") if per_fold and tag in per_fold[0]]
    for tag in tags:
        out[tag] = {
            "metric": _summary([r[tag]["metric"] for r in per_fold]),
            "seconds": _summary([r[tag]["seconds"] for r in per_fold]),
            "samples_per_s": _summary([r[tag]["samples_per_s"] for r in per_fold]),
        }
        if name == "fundus":
            conds = per_fold[0][tag].get("conditions", {}) if per_fold else {}
            out[tag]["conditions"] = {c: _summary([r[tag]["conditions"][c] for r in per_fold]) for c in conds}
    out["ratio"] = _summary([r["unimae"]["metric"] / r["reference"]["metric"] for r in per_fold
                             if r["reference"]["metric"] == r["reference"]["metric"] and r["reference"]["metric"] > 0])
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the real-data folder (default ../shared/real)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    ap.add_argument("--run-folds", default=None, help="which folds to run, e.g. 0,1 (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: fold 0 only, 4 training steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra config override for UniMAE (e.g. model.predict_variance=true), to try a recipe")
    ap.add_argument("--pretrain-epochs", type=float, default=0.0, metavar="E",
                    help="also run `unimae pretrain` for E passes over each fold's training images, fine-tune from "
                         "it, and fine-tune from scratch for the same total wall time (classification and vessel sets)")
    ap.add_argument("--save-demo", action="store_true",
                    help="ship the first fold's UniMAE model as the domain's demo model (domains/<d>/demo/)")
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
    results = []
    EXTRA_OVERRIDES[:] = list(args.overrides)
    PRETRAIN["epochs"] = float(args.pretrain_epochs)
    PRETRAIN["quick"] = bool(args.quick)
    for name in names:
        print(f"{name}: {len(fold_ids)} of {args.folds} folds", file=sys.stderr, flush=True)
        results.append(run_set(name, args.real, args.folds, fold_ids, args.quick,
                               save_demo_to=ROOT / "domains" if args.save_demo else None))
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
