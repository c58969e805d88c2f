"""Folds, metrics and the two training arms (UniMAE's shipped recipe; the from-scratch reference) that
``benchmarks/real_data.py`` runs on every real set. The sets themselves, and what each scores, are there."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "real"
EXTRA_OVERRIDES: list[str] = []  # --set KEY=VALUE
TRAINING: dict[str, Any] = {"seed": 0}  # --seeds: the training seed of the run in progress (UniMAE and reference)
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
def quiet():
    """Silence the data builder's notes (UniMAE's run already printed them; stdout stays the benchmark's)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def split_rows(rows: list[dict[str, str]], folds: np.ndarray, fold: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
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
    with quiet(), warnings.catch_warnings():
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
    model: Any, dataset: Any, *, steps: int, batch_size: int, loss_fn: Callable, lr: float = 1e-3,
    seed: int | None = None, weight_decay: float = 1e-4,
) -> dict[str, Any]:
    """AdamW with a 5 % warmup + cosine over ``steps`` optimizer steps on ``dataset`` (dict items); ``seed``
    (default: the run's, ``TRAINING["seed"]``) sets the initial weights and the batch order."""
    import torch
    from torch.utils.data import DataLoader

    seed = int(TRAINING["seed"] if seed is None else seed)

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


def channel_statistics(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``(C, *S)`` -> ``(5 C,)``: each channel's mean, standard deviation and 10th / 50th / 90th percentiles
    over the valid pixels (all of them when ``valid`` is None or empty): a multispectral tile's spectrum."""
    flat = np.asarray(image, np.float64).reshape(image.shape[0], -1)
    if valid is not None and np.asarray(valid).any():
        flat = flat[:, np.asarray(valid, bool).reshape(-1)]
    return np.concatenate([flat.mean(1), flat.std(1), *np.percentile(flat, [10, 50, 90], axis=1)])


def train_statistics_classifier(
    feats: np.ndarray, labels: Sequence[int], num_classes: int, *, steps: int = 500, seed: int | None = None,
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """The baseline a remote-sensing analyst builds in a minute: a small MLP (features standardised on the
    training set, one hidden layer of 64, AdamW lr 1e-2, ``steps`` full-batch steps, label smoothing 0.1) on
    :func:`channel_statistics`. Returns ``(predict_proba, run)``; fixed settings, chosen once, not tuned per set."""
    import torch

    seed = int(TRAINING["seed"] if seed is None else seed)
    x = np.asarray(feats, np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.GELU(), torch.nn.Linear(64, num_classes))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-2)
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(xt), yt, label_smoothing=0.1).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    net.eval()

    def predict_proba(f: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = torch.tensor((np.asarray(f, np.float64) - mu) / sd, dtype=torch.float32)
            return torch.softmax(net(z.reshape(-1, x.shape[1])), 1).numpy()

    return predict_proba, {"seconds": seconds, "samples": steps * len(x)}


def summary(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v == v]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "folds": []}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
            "folds": [round(v, 4) for v in vals]}  # fmt: skip


def view_statistics(view: Any) -> np.ndarray:
    """:func:`channel_statistics` of a predictor's model-space view of a file (over its valid pixels)."""
    return channel_statistics(view.image.float().numpy(), None if view.valid is None else view.valid.numpy())


def knn_distance(bank: np.ndarray, vector: np.ndarray, k: int = 5) -> float:
    """The mean Euclidean distance of ``vector`` to its ``k`` nearest rows of ``bank``."""
    d = np.sqrt(((bank - vector) ** 2).sum(1))
    return float(np.sort(d)[:k].mean())


def class_metric(spec: Any, probs: np.ndarray, truth: Sequence[str], classes: Sequence[str]) -> float:
    """AUROC of ``spec.positive`` when the set names one, else accuracy, of held-out probabilities ``(N, K)``."""
    probs = np.asarray(probs, dtype=float)
    if spec.positive is not None:
        return auroc(probs[:, list(classes).index(spec.positive)], [t == spec.positive for t in truth])
    return float(np.mean([classes[int(i)] == t for i, t in zip(probs.argmax(1), truth)]))


def seed_ensembles(spec: Any, per_fold: Sequence[dict[str, Any]], fold_ids: Sequence[int]) -> dict[str, Any]:
    """Each fold's models of every seed averaged (their held-out probabilities), per arm: what an ensemble of
    that many independently trained models scores, UniMAE's and the reference's from the same runs."""
    out: dict[str, Any] = {}
    for tag in ("unimae", "reference"):
        per = []
        for f in fold_ids:
            runs = [r for r in per_fold if r["fold"] == f and "probs" in r.get(tag, {})]
            if len(runs) > 1:
                per.append(class_metric(spec, np.mean([r[tag]["probs"] for r in runs], 0), runs[0]["truth"], runs[0]["classes"]))
        if per:
            out[tag] = summary(per)
    return out
