"""``unimae finetune``: classification, segmentation and anomaly models on top of a UniMAE encoder.

::

    unimae finetune --config configs/fundus/segment.yaml init=runs/fundus-pretrain/model out_dir=runs/fundus-seg
    unimae finetune --config configs/xray/classify.yaml data.train=cxr/train.csv data.val=cxr/val.csv
    unimae finetune --config configs/ct/anomaly.yaml init=none train.max_steps=200      # from scratch
    unimae finetune --config configs/fundus/classify.yaml init=RETFound_cfp_weights.pth init_allow_pickle=true
    torchrun --nproc_per_node 4 -m unimae.apps.cli finetune --config configs/ct/segment.yaml

A config is the pretraining config's shape plus the task (every key maps onto a constructor argument):

.. code-block:: yaml

    domain: fundus
    task: segment              # classify | segment | anomaly (what the domain supports)
    init: none                 # a UniMAE checkpoint / run folder, foreign weights (timm, MAE, RETFound,
    init_allow_pickle: false   #   medical_mae, MONAI) or none; .pth files need init_allow_pickle=true
    out_dir: runs/fundus-segment
    seed: 0
    resume: false
    model: {...}               # -> MAEClassifier / MAESegmenter / MaskedAutoencoder (preset expanded first)
    data: {...}                # -> plugin.train_dataset / augment / read / preprocess (+ val_lesion_prob)
    train: {...}               # -> FinetuneConfig (TrainConfig + mode, layer_decay, class_weights, monitor ...)
    anomaly: {...}             # anomaly only: k, sigma, top_fraction, fpr

What the tasks train
--------------------
``classify``
    :class:`~unimae.core.models.MAEClassifier`, cross-entropy (single-label) or BCE (multi-label, e.g.
    X-ray findings; set by the data). Validation: ``balanced_accuracy`` for single-label classes (it
    does not reward predicting the majority class; quadratic kappa, macro-F1 and macro AUROC are
    logged too) and ``macro_auroc`` for multi-label findings (threshold-free, the CheXpert /
    medical_mae convention), on the domain's deterministic evaluation view of each image.
``segment``
    :class:`~unimae.core.models.MAESegmenter`, MONAI Dice + cross-entropy computed inside ``valid``
    only (:class:`MaskedDiceCELoss`). Validation: mean Dice over the foreground classes inside
    ``valid``, on each validation image at full (preprocessed) size with a Gaussian-blended MONAI
    sliding window of ``input_size`` when it is larger than that.
``anomaly``
    A :class:`~unimae.core.mae.MaskedAutoencoder` trained (or continued) on *normal* images only with
    the MAE loss. Validation: image AUROC of the anomaly score (mean of the top ``top_fraction`` of
    the smoothed reconstruction-error map over ``k`` complementary masks) on validation images with
    lesions. After training, the image and pixel thresholds are calibrated on the *normal* validation
    images at false-positive rate ``anomaly.fpr`` and stored in the checkpoint JSON.

``train.mode=linear`` freezes the encoder (a linear probe for ``classify``; for ``segment`` the whole
convolutional decoder still trains, for ``anomaly`` the MAE decoder trains), ``full`` trains
everything with layer-wise lr decay ``train.layer_decay`` (timm/BEiT style, :func:`param_groups_layer_decay`).

Data
----
Without ``data.train`` the domain's synthetic labelled data are used (anomaly: normal-only training
data, ``lesion_prob=0``, and validation data with lesions); the validation set is synthetic too, drawn
with seed ``seed + 100003``. With ``data.train`` (a folder or CSV manifest read through the plugin)
validation uses ``data.val``, else the source's own ``val`` split, else ``data.val_fraction`` (default 0.1;
0 = no validation) carved out of its training part, stratified by class and grouped by patient
(:func:`~unimae.domains.datasets.local_dataset`); ``data.val: synthetic`` validates on synthetic data.
``data.class_names`` fixes the class order (classify) or names the mask values (segment).

Outputs (rank 0; every file atomically)::

    out_dir/
      best.{safetensors,json}     the best model by the validation metric (the one to predict with)
      model.{safetensors,json}    the final model
      learning_curve.png          training loss and the validation metric against the step
      metrics.csv                 step, epoch, loss (+ parts), lr, samples/s, time, val_* metrics
      checkpoints/                resumable training state (``resume=true``)
      config.yaml                 the resolved config

Each checkpoint JSON carries ``task``, ``domain``, ``class_names``, ``multi_label``, ``contract``
(:func:`~unimae.core.inference.make_contract`), ``anomaly`` (settings and thresholds), ``metrics``,
``monitor``, ``best_value``, ``best_step`` and ``init`` (what the encoder started from).
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from unimae.core import distributed as du
from unimae.core import metrics as M
from unimae.core.anomaly import anomaly_map, calibrate_threshold, image_scores
from unimae.core.checkpoint import checkpoint_paths, read_checkpoint_meta, save_checkpoint
from unimae.core.config import SECTIONS as BASE_SECTIONS
from unimae.core.config import TOP_LEVEL_KEYS as BASE_TOP_LEVEL
from unimae.core.config import check_keys, parse_value
from unimae.core.engine import TrainConfig, Trainer, read_metrics, seed_everything
from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path
from unimae.core.inference import make_contract, task_metadata
from unimae.core.mae import MaskedAutoencoder
from unimae.core.model_config import build_configured, model_keys, resolve_model_args
from unimae.core.model_config import init_architecture as core_init_architecture
from unimae.core.models import MAEClassifier, MAESegmenter, load_encoder_from_mae
from unimae.core.optim import param_groups_layer_decay, param_groups_weight_decay
from unimae.core.patch_embed import to_tuple
from unimae.core.precision import autocast
from unimae.domains.base import DomainPlugin, Sample, kwargs_for

__all__ = [
    "TASKS",
    "MODES",
    "TOP_LEVEL_KEYS",
    "SECTIONS",
    "ANOMALY_KEYS",
    "MONITORS",
    "FinetuneConfig",
    "FinetuneData",
    "FinetuneTrainer",
    "MaskedDiceCELoss",
    "load_finetune_config",
    "dump_finetune_config",
    "finetune_model_keys",
    "finetune_data_keys",
    "build_finetune_data",
    "build_task_model",
    "resolve_init",
    "load_init",
    "class_weights",
    "save_learning_curve",
    "finetune",
]

TASKS = ("classify", "segment", "anomaly")
MODES = ("full", "linear")
TOP_LEVEL_KEYS = ("domain", "task", "init", "init_allow_pickle", *(k for k in BASE_TOP_LEVEL if k != "domain"))
SECTIONS = (*BASE_SECTIONS, "anomaly")
ANOMALY_KEYS = ("k", "sigma", "top_fraction", "fpr")
ANOMALY_DEFAULTS: dict[str, Any] = {"k": 4, "sigma": None, "top_fraction": 0.01, "fpr": 0.05}
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "classify": MAEClassifier,
    "segment": MAESegmenter,
    "anomaly": MaskedAutoencoder,
}
#: validation metrics per task (``val_`` prefixed in metrics.csv); all are higher-is-better but ``loss``
MONITORS: dict[str, tuple[str, ...]] = {
    "classify": ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc", "quadratic_kappa", "loss"),
    "classify_multi_label": ("macro_auroc", "balanced_accuracy", "accuracy", "macro_f1", "loss"),
    "segment": ("mean_dice", "mean_iou", "pooled_dice"),
    "anomaly": ("image_auroc", "loss"),
}
_DEFAULT_INPUT = {2: 224, 3: 96}
_DATA_KEYS = ("train", "val", "input_size", "num_samples", "num_val_samples", "val_lesion_prob", "normal_class",
              "segment_mode")
_PROTOCOL_ARGS = {"self", "train", "input_size", "n", "seed", "size", "path", "sample", "source", "split", "like",
                  "plugin", "task"}  # fmt: skip
_NONE = ("", "none", "null", "scratch", "random")
SYNTHETIC_VAL_OFFSET = 100_003  # the validation seed offset of DomainPlugin.train_dataset


def _say(message: str) -> None:
    if du.is_main_process():
        print(f"unimae: {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# the train section
# ------------------------------------------------------------------------------------------------
@dataclass
class FinetuneConfig(TrainConfig):
    """The ``train`` section of a fine-tuning config: :class:`TrainConfig` plus the fine-tuning fields.

    The defaults follow MAE fine-tuning (He et al. 2021): AdamW (0.9, 0.999), weight decay 0.05,
    ``blr`` 5e-4 scaled by the effective batch / 256, 5% warmup then cosine, layer-wise lr decay.

    Attributes (beyond :class:`TrainConfig`):
        mode: ``"full"`` (train everything) or ``"linear"`` (freeze the encoder: a linear probe for
            classification; segmentation still trains its decoder, anomaly its MAE decoder).
        layer_decay: layer-wise lr decay (block ``i`` of ``L`` gets ``layer_decay ** (L + 1 - i)`` of the
            lr, the head the full lr); None or 1.0 = one lr for all. Unset in a config: the domain's
            fine-tuning recipe (``plugin.recipes["finetune"]["layer_decay"]``), none for anomaly.
        class_weights: ``"none"``, ``"auto"`` (inverse class frequency of the training labels: exact
            from a manifest / class folders, estimated from the first ``class_weight_samples`` items
            otherwise; multi-label: BCE ``pos_weight = negatives / positives``; segmentation: inverse
            pixel frequency inside ``valid``) or a list with one weight per class.
        class_weight_samples: items read to estimate ``auto`` weights when labels are not listed.
        monitor: validation metric that picks the best checkpoint (see :data:`MONITORS`; default: the
            first of the task's list; ``loss`` is lower-is-better, the others higher-is-better).
        dice_weight, ce_weight: weights of the Dice and cross-entropy terms (segmentation).
        label_smoothing: cross-entropy label smoothing (single-label classification and segmentation).
        mixup: classification only: on half of the training batches, images and (smoothed) targets are
            blended with a shuffled copy of the batch, ``lam ~ Beta(mixup, mixup)`` (Zhang et al., ICLR 2018);
            0 = off. On EuroSAT-MS it bought +0.05 accuracy over 5 folds (README, "Results on real data").
        val_overlap: sliding-window overlap of validation images larger than ``input_size``.
        val_batches: validation covers at most ``val_batches * batch_size`` validation cases.
        epochs: when set, ``max_steps`` is computed from it: ``ceil(epochs * training items / effective
            batch)``, so a recipe scales with the size of the user's data.
    """

    max_steps: int = 2000
    batch_size: int = 16
    blr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    preview_every: int = 0
    val_every: int = 200
    val_batches: int = 64
    save_every: int = 500
    mode: str = "full"
    layer_decay: float | None = 0.75
    class_weights: str | list[float] | None = "none"
    class_weight_samples: int = 128
    monitor: str | None = None
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    val_overlap: float = 0.25
    epochs: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mode = look_up(str(self.mode), MODES, what="train.mode")
        if self.layer_decay is not None:
            self.layer_decay = _number("layer_decay", self.layer_decay, 0.0, 1.0, low_open=True)
        if self.epochs is not None:
            self.epochs = _number("epochs", self.epochs, 0.0, low_open=True)
        cw = self.class_weights
        if cw is None or (isinstance(cw, str) and cw.strip().lower() in ("none", "null", "")):
            self.class_weights = "none"
        elif isinstance(cw, str):
            self.class_weights = look_up(cw.strip().lower(), ("none", "auto"), what="train.class_weights")
        elif isinstance(cw, (list, tuple)) and cw and all(
            not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in cw
        ):
            self.class_weights = [float(w) for w in cw]
        else:
            raise InputError(f"train.class_weights must be none, auto or a list of non-negative numbers, got {cw!r}")
        if isinstance(self.class_weight_samples, bool) or not isinstance(self.class_weight_samples, int) or (
            self.class_weight_samples < 1
        ):
            raise InputError(f"train.class_weight_samples must be an integer >= 1, got {self.class_weight_samples!r}")
        if self.monitor is not None:
            self.monitor = str(self.monitor).removeprefix("val_")
        self.dice_weight = _number("dice_weight", self.dice_weight, 0.0)
        self.ce_weight = _number("ce_weight", self.ce_weight, 0.0)
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise InputError("train.dice_weight and train.ce_weight cannot both be 0")
        self.label_smoothing = _number("label_smoothing", self.label_smoothing, 0.0, 1.0)
        self.val_overlap = _number("val_overlap", self.val_overlap, 0.0, 1.0)
        self.mixup = _number("mixup", self.mixup, 0.0)
        if self.label_smoothing >= 1.0 or self.val_overlap >= 1.0:
            raise InputError("train.label_smoothing and train.val_overlap must be below 1")


def _mixup_draw(n: int, alpha: float, gen: torch.Generator) -> tuple[float, torch.Tensor] | None:
    """Mixup for one batch of ``n``, drawn from the step's generator (so a resumed run repeats it): None on
    half of the batches (and for a batch of one), else ``(lam, permutation)`` with ``lam ~ Beta(alpha, alpha)``."""
    if n < 2 or float(torch.rand((), generator=gen)) >= 0.5:
        return None
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.randperm(n, generator=gen)


def _number(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False) -> float:
    try:
        out = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        out = math.nan
    bad = not math.isfinite(out) or out < low or (low_open and out == low) or (high is not None and out > high)
    if bad:
        lo = f"> {low}" if low_open else f">= {low}"
        rng = f"in ({low}, {high}]" if low_open and high is not None else (f"in [{low}, {high}]" if high is not None else lo)
        raise InputError(f"train.{name} must be a number {rng}, got {value!r}")
    return out


# ------------------------------------------------------------------------------------------------
# the config file: pretraining's grammar plus task / init / anomaly
# ------------------------------------------------------------------------------------------------
def _check_top(key: str, where: str) -> str:
    try:
        return look_up(key, (*TOP_LEVEL_KEYS, *SECTIONS), what="top-level key")
    except InputError as err:
        raise InputError(f"{err} ({where})") from None


def load_finetune_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a fine-tuning YAML config and apply ``key=value`` overrides (later ones win).

    The grammar is :mod:`unimae.core.config`'s, with the top-level keys ``task``, ``init`` and
    ``init_allow_pickle`` and the section ``anomaly`` added.
    """
    import yaml

    from unimae.core.config import _Loader  # the project's YAML loader (1e-4 reads as a number)

    p = Path(path)
    if not p.is_file():
        raise InputError("config file not found", p)
    try:
        raw = yaml.load(p.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read config ({err})", p) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"invalid YAML{line}: {getattr(err, 'problem', err)}", p) from err
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InputError(f"a config must be a mapping of keys, got {type(raw).__name__}", p)
    cfg: dict[str, Any] = {s: {} for s in SECTIONS}
    for key, value in raw.items():
        key = _check_top(str(key), f"in {p.name}")
        if key in SECTIONS:
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise InputError(f"section {key!r} must be a mapping, got {type(value).__name__}", p)
            cfg[key] = {str(k): v for k, v in value.items()}
        else:
            cfg[key] = value
    for text in overrides:
        if "=" not in text:
            raise InputError(f"override {text!r} is not key=value (e.g. train.max_steps=20 or init=none)")
        key, _, value = text.partition("=")
        parts = tuple(key.strip().split("."))
        where = f"in override {text!r}"
        if not key.strip() or any(not part for part in parts):
            raise InputError(f"override {text!r} has an empty key")
        if len(parts) == 1:
            if parts[0] in SECTIONS:
                raise InputError(f"{parts[0]!r} is a section; set one of its keys, e.g. {parts[0]}.<key>=value ({where})")
            cfg[_check_top(parts[0], where)] = parse_value(value.strip())
        elif len(parts) == 2:
            if parts[0] not in SECTIONS:
                try:
                    look_up(parts[0], SECTIONS, what="section")
                except InputError as err:
                    raise InputError(f"{err} ({where})") from None
            cfg[parts[0]][parts[1]] = parse_value(value.strip())
        else:
            raise InputError(f"override key {key.strip()!r} is nested too deeply; use section.key=value ({where})")
    return cfg


def dump_finetune_config(cfg: Mapping[str, Any]) -> str:
    """The resolved config as YAML: top-level keys first, then the sections in order."""
    import yaml

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    ordered: dict[str, Any] = {k: cfg[k] for k in TOP_LEVEL_KEYS if k in cfg}
    for section in SECTIONS:
        if section != "anomaly" or cfg.get("anomaly") or cfg.get("task") == "anomaly":
            ordered[section] = dict(cfg.get(section) or {})
    return yaml.safe_dump(plain(ordered), sort_keys=False, default_flow_style=None)


def _named_params(fn: Callable) -> list[str]:
    return [
        n
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in _PROTOCOL_ARGS
    ]


def finetune_model_keys(task: str) -> list[str]:
    """``preset`` plus the constructor arguments of the task's model class (the encoder's fields included)."""
    return model_keys(MODEL_CLASSES[task])


def finetune_data_keys(plugin: DomainPlugin) -> list[str]:
    """The data keys handled here plus the keywords of the plugin's readers, transforms and generator."""
    from unimae.domains.datasets import local_dataset

    keys = dict.fromkeys(_DATA_KEYS)
    for fn in (plugin.augment, plugin.synthetic, plugin.read, plugin.preprocess, local_dataset):
        keys.update(dict.fromkeys(_named_params(fn)))
    return list(keys)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
@dataclass
class FinetuneData:
    """What :func:`build_finetune_data` found.

    Attributes:
        train: the training dataset of collatable dicts (``image``, ``valid``, ``label`` / ``mask``).
        val: validation samples (:class:`Sample` in model space, full size) or None.
        eval_transform: the domain's deterministic evaluation view (classify, 2D anomaly).
        class_names: classify: classes; segment: mask values (background first where there is one);
            anomaly: ``["normal", "anomaly"]``.
        multi_label: classification labels are multi-hot.
        input_size: the training crop size per axis.
        channels: the data's channel descriptions; ``normalization``: the data's normalisation.
        normal_index: for anomaly validation data with class labels, the index of the normal class.
        normal_class: anomaly on labelled data: the name of the normal class (recorded in the checkpoint).
        source: ``"synthetic"`` or the training source; ``val_source`` likewise (None: no validation).
    """

    train: Dataset
    val: Dataset | None
    eval_transform: Callable[[Sample, int], Sample]
    class_names: list[str]
    multi_label: bool
    input_size: tuple[int, ...]
    channels: list[dict[str, Any]] | None
    normalization: dict[str, Any] | None
    normal_index: int | None = None
    normal_class: str | None = None
    source: str = "synthetic"
    val_source: str | None = None


def _is_source(value: Any) -> bool:
    return value is not None and str(value).strip().lower() not in ("", "none", "null")


def _is_synthetic(value: Any) -> bool:
    return str(value).strip().lower() == "synthetic"


def _normal_class(names: Sequence[str], given: Any = None, where: Any = None) -> int | None:
    """The index of the class that means "normal" (``normal``, ``healthy``, ``No Finding``, ``data.normal_class``
    ...), if any (see :func:`unimae.domains.datasets.normal_class_index`)."""
    from unimae.domains.datasets import normal_class_index

    return normal_class_index(names, given, where=where)[0]


def _say_notes(ds: Any, what: str) -> None:
    """Print how a local dataset was read (columns, classes, splits, field of view), once per note."""
    notes = list(getattr(ds, "notes", []) or [])
    fov = ds.fov_note() if hasattr(ds, "fov_note") else None
    if fov:
        notes.append(fov)
    for note in dict.fromkeys(notes):
        _say(f"{what}: {note}")


def _mask_classes(plugin: DomainPlugin, masks: Sequence[Path | None], given: Sequence[str] | None) -> list[str]:
    """Names of the mask values of a local segmentation dataset (scans every mask file once)."""
    top = 0
    for m in masks:
        if m is None:
            continue
        values = plugin.read_mask(m)
        if values.numel():
            lo = int(values.min())
            if lo < 0:
                raise InputError(f"mask has negative label values ({lo}); labels must be 0, 1, 2, ...", m)
            top = max(top, int(values.max()))
    if given:
        names = [str(c) for c in given]
        if top >= len(names):
            raise InputError(f"masks hold label {top} but data.class_names lists only {len(names)} classes ({names})")
        return names
    if top == 0:
        raise InputError("every training mask is all zeros; segmentation needs labelled pixels")
    if top + 1 == len(plugin.seg_class_names):
        return list(plugin.seg_class_names)
    return ["background", *(f"class_{i}" for i in range(1, top + 1))]


def build_finetune_data(plugin: DomainPlugin, task: str, data: Mapping[str, Any], seed: int) -> FinetuneData:
    """The training dataset and validation samples a ``data`` section describes (see the module docstring)."""
    from unimae.domains.datasets import LocalDataset, check_classes, check_sizes, local_dataset, normal_class_index

    d = dict(data)
    if "task" in d:
        raise InputError("data.task is set by the top-level task key; remove data.task")
    train_src, val_src = d.pop("train", None), d.pop("val", None)
    d.pop("segment_mode", None)  # recorded in the checkpoint's contract by finetune()
    recipe = dict(plugin.recipes.get("finetune", {}))
    input_size = d.pop("input_size", recipe.get("input_size", _DEFAULT_INPUT[plugin.spatial_dims]))
    try:
        size = to_tuple(input_size, plugin.spatial_dims, "data.input_size")
    except (TypeError, ValueError) as err:
        raise InputError(str(err)) from None
    if any(int(s) < 1 for s in size):
        raise InputError(f"data.input_size must be positive, got {input_size!r}")
    num_samples = _count("num_samples", d.pop("num_samples", 256))
    num_val = _count("num_val_samples", d.pop("num_val_samples", 64))
    val_lp = d.pop("val_lesion_prob", None)
    names_given = d.pop("class_names", None)
    normal_given = d.pop("normal_class", None)
    if names_given is not None and not isinstance(names_given, (list, tuple)):
        raise InputError(f"data.class_names must be a list of names, got {names_given!r}")
    train_lp = d.pop("lesion_prob", 0.0 if task == "anomaly" else None)
    train_src = train_src if _is_source(train_src) and not _is_synthetic(train_src) else None
    if train_src is not None and not _is_source(val_src) and d.get("val_fraction") is None:
        from unimae.domains.datasets import DEFAULT_VAL_FRACTION

        d["val_fraction"] = DEFAULT_VAL_FRACTION  # no data.val: validate on a carved-out share of data.train
    val_fraction = float(d.get("val_fraction") or 0.0)

    kw = dict(d)
    if task == "classify" and names_given is not None:
        kw["class_names"] = list(names_given)
    if train_src is not None and _is_source(val_src):
        kw["val_fraction"] = 0.0  # data.val is the validation set: nothing is carved out of data.train
    train = plugin.train_dataset(
        train_src, split="train", input_size=input_size, num_samples=num_samples, seed=seed, task=task,
        lesion_prob=train_lp, **kw,
    )  # fmt: skip
    samples = getattr(train, "samples", train)
    local = isinstance(samples, LocalDataset)
    if local and len(samples) == 0:
        raise InputError("the training data is empty", train_src)
    if local:
        _say_notes(samples, "training data")
        check_sizes(samples)  # a mask / FOV mask of another size than its image: one line, before training

    # classes
    multi_label = False
    normal_index = None
    normal_class: str | None = None  # anomaly on labelled data: the normal class's name
    if task == "classify":
        if local:
            class_names, multi_label = list(samples.class_names), bool(samples.multi_label)
            if len(class_names) < 2:
                raise InputError(f"classification needs at least two classes, the training data have {class_names}", train_src)
        else:
            class_names, multi_label = list(plugin.class_names), bool(plugin.multi_label)
            if not class_names:
                raise InputError(f"the {plugin.name} domain has no synthetic classification labels")
    elif task == "segment":
        class_names = _mask_classes(plugin, samples.masks or [], names_given) if local else list(plugin.seg_class_names)
    else:
        class_names = ["normal", "anomaly"]
        if local and samples.labels is not None:
            normal, how = normal_class_index(samples.class_names, normal_given, where=train_src)
            if normal is None:
                raise InputError(
                    f"anomaly training uses normal images only, but {how}; name it with data.normal_class=NAME "
                    "(or give a folder of normal images)",
                    train_src,
                )
            normal_class = samples.class_names[normal]
            keep = [i for i, lab in enumerate(samples.labels) if lab == normal or lab == [normal]]
            if not keep:
                raise InputError(f"no training images of the normal class {normal_class!r} ({how})", train_src)
            samples.subset(keep)
            samples.labels = None
            _say(f"anomaly training on the {len(keep)} {normal_class!r} images of {train_src} (normal class: {how})")

    # validation samples (model space, full size)
    val: Dataset | None = None
    val_source: str | None = None
    syn_kw = kwargs_for(plugin.synthetic, d)
    if (train_src is None and not _is_source(val_src)) or _is_synthetic(val_src):
        lp = val_lp if task == "anomaly" else train_lp
        val = plugin.synthetic(
            num_val, seed=seed + SYNTHETIC_VAL_OFFSET, size=list(size) if len(set(size)) > 1 else size[0], task=task,
            lesion_prob=None if lp is None else float(lp), **{k: v for k, v in syn_kw.items() if k != "lesion_prob"},
        )  # fmt: skip
        val_source = "synthetic"
        if task != "anomaly" and len(class_names) != len(plugin.class_names if task == "classify" else plugin.seg_class_names):
            raise InputError(
                f"data.val=synthetic: the training data have {len(class_names)} classes but the {plugin.name} "
                "synthetic data have a different set; give data.val"
            )
    elif _is_source(val_src) or (train_src is not None and (val_fraction > 0 or (local and samples.has_val))):
        src = val_src if _is_source(val_src) else train_src
        need = task if task in ("classify", "segment") else None
        vkw = {k: v for k, v in d.items() if k != "val_fraction" or not _is_source(val_src)}
        if task == "classify" and local and "multi_label" not in vkw:
            vkw["multi_label"] = True if multi_label else None
        val = local_dataset(
            plugin, src, split="val", task=need, class_names=class_names if task == "classify" else None, **vkw
        )
        val_source = str(src)
        if _is_source(val_src):
            _say_notes(val, "validation data")
        else:  # the same source: only what differs (how validation was made)
            for note in val.notes:
                if note.startswith("validation"):
                    _say(note)
        check_sizes(val)
        if task == "classify" and local:
            check_classes(samples, val, where=src)
        if task == "anomaly":
            if val.labels is not None:
                normal_index, how = normal_class_index(val.class_names, normal_given, where=src)
                if normal_index is None:
                    raise InputError(
                        f"anomaly validation needs a normal class, but {how}; name it with data.normal_class=NAME", src
                    )
                normal_class = normal_class or val.class_names[normal_index]
            elif val.masks is None:
                raise InputError(
                    "anomaly validation needs labels (a normal/ folder beside anomaly folders, or a CSV label "
                    "column) or lesion masks, and this dataset has neither",
                    src,
                )
        elif task == "segment" and len(class_names) < 2:
            raise InputError("segmentation needs at least two classes")
    if val is not None and len(val) == 0:  # type: ignore[arg-type]
        val = None
    if val is None and task == "classify" and local:
        check_classes(samples, None, where=train_src)

    first = samples[0]
    eval_transform = plugin.augment(train=False, input_size=input_size, **kwargs_for(plugin.augment, d))
    return FinetuneData(
        train=train, val=val, eval_transform=eval_transform, class_names=[str(c) for c in class_names],
        multi_label=multi_label, input_size=tuple(int(s) for s in size),
        channels=[dict(c) for c in first.meta.get("channels") or []] or None,
        normalization=first.meta.get("normalization", getattr(plugin, "normalization", None)),
        normal_index=normal_index, normal_class=normal_class,
        source=str(train_src) if train_src is not None else "synthetic",
        val_source=val_source,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# class weights
# ------------------------------------------------------------------------------------------------
def _label_rows(dataset: Dataset, limit: int) -> tuple[list[Any], bool]:
    """Training labels: exact from a listing (manifest / class folders), else read from the first items."""
    samples = getattr(dataset, "samples", dataset)
    labels = getattr(samples, "labels", None)
    if labels is not None and hasattr(samples, "label_tensor"):
        return [samples.label_tensor(i) for i in range(len(labels))], True
    n = min(len(samples), int(limit))  # type: ignore[arg-type]
    return [samples[i].label for i in range(n)], False


def class_weights(
    dataset: Dataset, task: str, num_classes: int, *, multi_label: bool = False, limit: int = 128, max_ratio: float = 100.0
) -> tuple[torch.Tensor, str]:
    """``auto`` class weights from the training labels (or masks) and a one-line description.

    Single-label classes and segmentation classes get ``n / (K * n_c)`` (inverse frequency, mean 1 when
    balanced); a class never seen gets the largest weight. Multi-label findings get BCE
    ``pos_weight = negatives / positives``. Weights are clipped to ``max_ratio`` times the smallest.
    """
    k = int(num_classes)
    counts = torch.zeros(k, dtype=torch.float64)
    if task == "segment":
        samples = getattr(dataset, "samples", dataset)
        n = min(len(samples), int(limit))  # type: ignore[arg-type]
        for i in range(n):
            s = samples[i]
            if s.mask is None:
                continue
            m = s.mask.long()[s.valid.bool()] if s.mask.shape == s.valid.shape else s.mask.long().flatten()
            counts += torch.bincount(m.clamp(0, k - 1), minlength=k).double()
        how = f"pixel frequencies of {n} training masks"
    else:
        rows, exact = _label_rows(dataset, limit)
        rows = [r for r in rows if r is not None]
        if not rows:
            raise InputError("train.class_weights=auto needs training labels, and the training data have none")
        if multi_label:
            hot = torch.stack([torch.as_tensor(r, dtype=torch.float64).reshape(-1) for r in rows])
            pos = hot.sum(0)
            neg = hot.shape[0] - pos
            w = (neg / pos.clamp(min=1.0)).clamp(1.0 / max_ratio, max_ratio)
            return w.float(), f"BCE pos_weight = negatives / positives over {hot.shape[0]} training labels"
        for r in rows:
            counts[int(r)] += 1
        how = f"{'all' if exact else 'the first'} {len(rows)} training labels"
    total = counts.sum()
    seen = counts > 0
    w = torch.where(seen, total / (k * counts.clamp(min=1.0)), torch.zeros_like(counts))
    w[~seen] = w[seen].max() if bool(seen.any()) else 1.0
    w = w.clamp(max=float(w[seen].min() if bool(seen.any()) else 1.0) * max_ratio)
    return w.float(), f"inverse frequency of {how}"


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
class MaskedDiceCELoss(nn.Module):
    """MONAI Dice + cross-entropy over the pixels inside ``valid`` only.

    With every pixel valid (and the same weights) this equals MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True)``; invalid pixels (outside the field of view, nodata, padding) add nothing to either
    term: their softmax and one-hot target are zeroed for MONAI's :class:`~monai.losses.DiceLoss`, and
    the cross-entropy is averaged over valid pixels (weighted by ``weight`` like ``F.cross_entropy``).

    Args:
        num_classes: output channels K.
        include_background: score class 0 in the Dice term (False for a background class).
        weight: ``(K,)`` cross-entropy class weights, or None.
        lambda_dice, lambda_ce: weights of the two terms.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        include_background: bool = True,
        weight: torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.num_classes = int(num_classes)
        self.dice = DiceLoss(include_background=include_background, softmax=False, to_onehot_y=False)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``logits`` ``(B, K, *S)``, ``target`` ``(B, *S)`` class indices, ``valid`` ``(B, *S)`` -> loss parts."""
        logits = logits.float()
        target = target.long()
        k = logits.shape[1]
        if int(target.min()) < 0 or int(target.max()) >= k:
            raise InputError(f"mask values must lie in [0, {k - 1}] for {k} classes, found {int(target.min())}..{int(target.max())}")
        v = torch.ones_like(target, dtype=torch.bool) if valid is None else valid.bool()
        vf = v[:, None].to(logits.dtype)
        probs = torch.softmax(logits, 1) * vf
        onehot = F.one_hot(target, k).movedim(-1, 1).to(logits.dtype) * vf
        dice = self.dice(probs, onehot)
        ce_map = F.cross_entropy(logits, target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing)
        w = v.to(logits.dtype) if self.weight is None else self.weight[target] * v.to(logits.dtype)
        ce = (ce_map * v.to(logits.dtype)).sum() / w.sum().clamp(min=1e-8)
        return {"loss": self.lambda_dice * dice + self.lambda_ce * ce, "dice": dice, "ce": ce}


# ------------------------------------------------------------------------------------------------
# the starting point
# ------------------------------------------------------------------------------------------------
@dataclass
class InitSource:
    """Where the weights come from: ``kind`` is ``"none"``, ``"unimae"`` (a UniMAE checkpoint with its JSON)
    or ``"foreign"`` (a weights file for :func:`~unimae.core.weight_import.import_weights`)."""

    kind: str
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_layer_decay(value: Any, plugin: DomainPlugin, task: str, init: InitSource) -> Any:
    """``train.layer_decay``, with ``auto`` (or unset) resolved: the domain's fine-tuning recipe (e.g. X-ray
    0.55) for a pretrained encoder; none from scratch (``init=none``: decay would all but freeze the random
    early blocks) and none for anomaly (the MAE keeps one lr). Any other value is kept."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        if init.kind == "none" or task == "anomaly":
            return None
        return plugin.recipes.get("finetune", {}).get("layer_decay")
    return value


def resolve_init(value: Any) -> InitSource:
    """``init`` as given in the config: ``none``, a UniMAE checkpoint (``NAME``, ``NAME.json``,
    ``NAME.safetensors`` or a run folder holding ``model.json``), or a foreign weights file."""
    if value is None or str(value).strip().lower() in _NONE:
        return InitSource("none")
    p = Path(str(value)).expanduser()
    if p.is_dir():
        for name in ("model", "best", "checkpoints/last"):
            if (p / f"{name}.json").is_file():
                p = p / name
                break
        else:
            raise InputError("init folder holds no UniMAE checkpoint (model.json); give a checkpoint or weights file", p)
    tensor_path, json_path = checkpoint_paths(p)
    if json_path.is_file() and (p.suffix in ("", ".json", ".safetensors") or p == json_path):
        meta = read_checkpoint_meta(json_path)
        if meta.get("format") == "unimae-checkpoint":
            if not tensor_path.is_file():
                raise InputError(f"init checkpoint weights {tensor_path.name} not found beside its JSON", json_path)
            return InitSource("unimae", tensor_path.with_suffix(""), meta)
    if p.is_file():
        return InitSource("foreign", p)
    raise InputError("init checkpoint not found (give a UniMAE checkpoint, a weights file, or init=none)", p)


def init_architecture(init: InitSource, task: str) -> dict[str, Any]:
    """The constructor arguments a UniMAE init checkpoint fixes (the encoder's; for anomaly the whole MAE):
    :func:`unimae.core.model_config.init_architecture`."""
    if init.kind != "unimae":
        return {}
    whole = task == "anomaly" and init.meta.get("model_class") == "MaskedAutoencoder"
    return core_init_architecture(init.meta, whole=whole)


def load_init(model: nn.Module, init: InitSource, *, task: str, allow_pickle: bool = False) -> dict[str, Any]:
    """Load the starting weights into ``model`` in place; returns the ``init`` record for the checkpoint JSON.

    A UniMAE checkpoint fills the encoder (anomaly: the whole MAE) and must fit exactly; foreign
    weights go through :func:`~unimae.core.weight_import.import_weights` (position embeddings, channels
    and patch size adapted) and at least one tensor must load.
    """
    from unimae.core.checkpoint import load_tensors

    if init.kind == "none":
        return {"kind": "none", "summary": "random initialisation (init=none)"}
    if init.kind == "unimae":
        tensors, meta = load_tensors(init.path, device="cpu")
        src_class = meta.get("model_class")
        record: dict[str, Any] = {"kind": "unimae", "path": str(init.path), "model_class": src_class,
                                  "step": meta.get("step"), "task": meta.get("task")}  # fmt: skip
        whole = task == "anomaly" and src_class == "MaskedAutoencoder"
        if whole:
            result = model.load_state_dict(tensors, strict=False)
            missing, unused = sorted(result.missing_keys), sorted(result.unexpected_keys)
            what = "the whole masked autoencoder"
            fresh = [k for k in missing if k.startswith("decoder_logvar.")]  # a variance head added here
            unused = [k for k in unused if not k.startswith("decoder_logvar.")]  # or dropped here
            if fresh:
                missing = [k for k in missing if k not in fresh]
                what += " (the variance head starts fresh)"
        else:
            enc_missing, enc_unused = load_encoder_from_mae(model, tensors)
            missing, unused = [f"encoder.{k}" for k in enc_missing], [f"encoder.{k}" for k in enc_unused]
            what = f"the encoder of a {src_class}" + (" (the MAE decoder starts fresh)" if task == "anomaly" else "")
        if missing or (whole and unused):
            raise InputError(
                f"init checkpoint does not fit the model (missing {missing[:4]}, unused {unused[:4]})", init.path
            )
        loaded = sum(1 for k in tensors if k in model.state_dict()) if whole else sum(
            1 for k in model.state_dict() if k.startswith("encoder.")
        )
        summary = f"{what} from {init.path} (step {meta.get('step')}): {loaded} tensors loaded"
        record.update(loaded=loaded, missing=missing, unused=unused, summary=summary)
        return record

    from unimae.core.weight_import import import_weights

    try:
        report = import_weights(model, init.path, allow_pickle=allow_pickle)
    except InputError as err:
        if "pickle" in str(err) and not allow_pickle:
            raise InputError(
                "init is a PyTorch pickle, and loading a pickle can run code; set init_allow_pickle=true to load it "
                "with torch.load(weights_only=True), or convert it to .safetensors first",
                init.path,
            ) from None
        raise
    if not any(k.startswith("encoder.") for k in report.loaded):
        raise InputError(f"no encoder weights of this {report.layout} file fit the model ({report.summary().splitlines()[0]})", init.path)
    return {"kind": "foreign", "path": str(init.path), "layout": report.layout, "summary": report.summary(),
            "report": report.to_dict()}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def _resolve_channels(plugin: DomainPlugin, value: Any) -> list[dict] | None:
    from unimae.apps.pretrain import resolve_channels

    return resolve_channels(plugin, value)


def build_task_model(
    task: str,
    model_cfg: Mapping[str, Any],
    plugin: DomainPlugin,
    *,
    num_classes: int,
    multi_label: bool,
    data_channels: Sequence[Mapping[str, Any]] | None,
    data_chans: int,
    arch: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, list[str]]:
    """The task's model from the ``model`` section (``preset`` expanded first, explicit keys win, then
    the init checkpoint's architecture ``arch`` wins: :func:`~unimae.core.model_config.resolve_model_args`,
    shared with pretraining). Returns the model and notes about overridden keys."""
    cls = MODEL_CLASSES[task]
    m = dict(model_cfg)
    fixed: dict[str, Any] = {}
    if task != "anomaly":
        given = m.get("num_classes")
        if given is not None and int(given) != num_classes:
            raise InputError(f"model.num_classes is {given} but the data have {num_classes} classes")
        fixed["num_classes"] = int(num_classes)
    if task == "classify":
        if "multi_label" in m and bool(m["multi_label"]) != bool(multi_label):
            kind = "several labels per image" if multi_label else "one label per image"
            raise InputError(f"model.multi_label is {m['multi_label']} but the training data have {kind}")
        fixed["multi_label"] = bool(multi_label)
    kwargs, notes = resolve_model_args(
        cls, m, domain=plugin.name, spatial_dims=plugin.spatial_dims, data_channels=data_channels,
        data_chans=data_chans, resolve_channels=lambda value: _resolve_channels(plugin, value), arch=arch,
    )  # fmt: skip
    kwargs.update(fixed)
    return build_configured(cls, kwargs), notes


def _no_weight_decay(model: nn.Module) -> set[str]:
    own = getattr(model, "no_weight_decay", None)
    if callable(own):
        return set(own())
    encoder = getattr(model, "encoder", None)
    return {f"encoder.{n}" for n in encoder.no_weight_decay()} if encoder is not None else set()


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
class FinetuneTrainer(Trainer):
    """The pretraining :class:`~unimae.core.engine.Trainer` with a task loss, a task metric and the best checkpoint.

    Everything else (AMP, accumulation, warmup/cosine, resume, DDP, CSV log, atomic checkpoints) is the
    engine's. Args beyond the engine's:

    Args:
        task: ``"classify"``, ``"segment"`` or ``"anomaly"``.
        data: the :class:`FinetuneData` (its ``train`` is the training dataset, ``val`` the validation samples).
        task_info: the checkpoint's task entries (:func:`~unimae.core.inference.task_metadata`).
        init_info: the ``init`` record of :func:`load_init`.
        weight: class weights (CE ``weight`` / BCE ``pos_weight``) or None.
        anomaly: anomaly settings (``k``, ``sigma``, ``top_fraction``, ``fpr``).
    """

    def __init__(
        self,
        model: nn.Module,
        data: FinetuneData,
        *,
        task: str,
        config: FinetuneConfig,
        out_dir: str | Path,
        task_info: Mapping[str, Any],
        init_info: Mapping[str, Any],
        weight: torch.Tensor | None = None,
        anomaly: Mapping[str, Any] | None = None,
        seed: int = 0,
        resume: bool | str | Path = False,
        run_config: Mapping[str, Any] | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        channels: Sequence[str] | None = None,
    ) -> None:
        contract = dict(task_info["contract"])
        super().__init__(
            model, data.train, config=config, out_dir=out_dir, val_data=None, seed=seed, contract=contract,
            resume=resume, run_config=run_config, on_step=on_step, channels=channels,
        )  # fmt: skip
        self.task = task
        self.data = data
        self.task_info = dict(task_info)
        self.init_info = dict(init_info)
        self.anomaly = {**ANOMALY_DEFAULTS, **dict(anomaly or {})}
        self.multi_label = bool(task_info.get("multi_label"))
        self.class_names = list(task_info["class_names"])
        self.weight = weight
        kind = f"{task}_multi_label" if task == "classify" and self.multi_label else task
        options = MONITORS[kind]
        self.monitor = options[0] if config.monitor is None else look_up(config.monitor, options, what=f"{task} monitor")
        self.higher_is_better = self.monitor != "loss"
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.progress_desc = f"finetune {task}"
        self.batch_keys = () if task == "anomaly" else (("label",) if task == "classify" else ("mask",))
        self.metric_fields = self._fields()
        if task == "segment":
            first_bg = M.is_background(self.class_names[0])
            self.seg_loss = MaskedDiceCELoss(
                len(self.class_names), include_background=not first_bg, weight=weight,
                lambda_dice=config.dice_weight, lambda_ce=config.ce_weight, label_smoothing=config.label_smoothing,
            )  # fmt: skip

    # -- engine hooks --------------------------------------------------------------------------------
    def _setup(self) -> None:
        super()._setup()
        if self.task == "segment":
            self.seg_loss.to(self.device)
        if self.is_main and self.run_config is not None:  # with task, init and anomaly (the engine's omits them)
            with atomic_path(self.out_dir / "config.yaml") as tmp:
                tmp.write_text(dump_finetune_config(self.run_config))

    def _fields(self) -> tuple[str, ...]:
        base = ["step", "epoch", "loss"]
        parts = {"classify": [], "segment": ["dice", "ce"], "anomaly": ["pixel", "gradient"]}[self.task]
        kind = f"{self.task}_multi_label" if self.task == "classify" and self.multi_label else self.task
        vals = [f"val_{m}" for m in MONITORS[kind]]
        return tuple(base + parts + ["lr", "samples_per_s", "time"] + vals)

    def _param_groups(self, raw: nn.Module) -> list[dict[str, Any]]:
        cfg: FinetuneConfig = self.config  # type: ignore[assignment]
        if cfg.mode == "linear":
            for p in raw.encoder.parameters():
                p.requires_grad_(False)
        nwd = _no_weight_decay(raw)
        if cfg.layer_decay is not None and cfg.layer_decay < 1.0 and cfg.mode == "full":
            return param_groups_layer_decay(raw, cfg.weight_decay, cfg.layer_decay, no_weight_decay=nwd)
        return param_groups_weight_decay(raw, cfg.weight_decay, no_weight_decay=nwd)

    def _pick_preview(self) -> dict[str, torch.Tensor] | None:
        return super()._pick_preview() if self.task == "anomaly" else None

    def _contract(self) -> dict[str, Any]:
        c = dict(self.contract)
        if self.task == "anomaly":
            c.update({k: v for k, v in super()._contract().items() if k not in c})
        return c

    def _checkpoint_meta(self) -> dict[str, Any]:
        out = {k: v for k, v in self.task_info.items() if k != "contract"}
        out.update(
            init=self.init_info, monitor=f"val_{self.monitor}", best_value=self.best_value, best_step=self.best_step,
            metrics=dict(self.last_metrics),
        )  # fmt: skip
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "last_metrics": self.last_metrics}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self.last_metrics = dict(state.get("last_metrics") or {})
        best = self.out_dir / "best.safetensors"
        if self.task == "anomaly" and self.best_step is not None and best.is_file():
            from unimae.core.checkpoint import load_tensors

            self.best_state, _ = load_tensors(self.out_dir / "best", device="cpu")  # for the final calibration

    def _train_mode(self) -> None:
        if self.config.mode == "linear":  # type: ignore[attr-defined]
            self.raw.encoder.eval()  # a frozen encoder: no drop path / dropout noise in the features

    def _forward_loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        if model.training:
            self._train_mode()
        if self.task == "anomaly":
            return super()._forward_loss(model, batch, gen)
        image = batch["image"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        extra = {"channels": self.channels} if self.channels is not None else {}
        mix = None
        if self.task == "classify" and model.training and self.config.mixup > 0:  # type: ignore[attr-defined]
            mix = _mixup_draw(len(image), float(self.config.mixup), gen)  # type: ignore[attr-defined]
            if mix is not None:
                lam, perm = mix
                image = lam * image + (1.0 - lam) * image[perm.to(image.device)]
                valid = valid & valid[perm.to(valid.device)]
        with autocast(self.precision, self.device):
            logits = model(image, valid=valid, **extra)
        if self.task == "classify":
            if "label" not in batch:
                raise InputError("a training item has no label")
            return {"loss": self._classify_loss(logits, batch["label"].to(self.device), mix)}
        if "mask" not in batch:
            raise InputError("a training item has no mask")
        return self.seg_loss(logits, batch["mask"].to(self.device), valid)

    def _classify_loss(
        self, logits: torch.Tensor, label: torch.Tensor, mix: tuple[float, torch.Tensor] | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        w = None if self.weight is None else self.weight.to(logits.device)
        smoothing = self.config.label_smoothing  # type: ignore[attr-defined]
        if self.multi_label:
            target = label.float()
        elif mix is None:
            return F.cross_entropy(logits, label.long().reshape(-1), weight=w, label_smoothing=smoothing)
        else:  # class probabilities, smoothed as F.cross_entropy smooths hard labels
            n = logits.shape[1]
            target = F.one_hot(label.long().reshape(-1), n).float() * (1.0 - smoothing) + smoothing / n
        if mix is not None:
            lam, perm = mix
            target = lam * target + (1.0 - lam) * target[perm.to(target.device)]
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=w)
        return F.cross_entropy(logits, target, weight=w)

    def _has_validation(self) -> bool:
        return self.data.val is not None

    # -- validation ----------------------------------------------------------------------------------
    def _val_indices(self) -> list[int]:
        n = min(len(self.data.val), self.config.val_batches * self.config.batch_size)  # type: ignore[arg-type]
        return list(range(self.info.rank, n, self.info.world_size))

    def _gather(self, rows: list[tuple[int, Any]]) -> list[Any]:
        merged = [r for part in du.all_gather_objects(rows) for r in part]
        return [value for _, value in sorted(merged, key=lambda r: r[0])]

    def _validation_metrics(self) -> dict[str, float]:
        raw = self.raw
        raw.eval()
        try:
            with torch.no_grad():
                if self.task == "classify":
                    metrics = self._validate_classify()
                elif self.task == "segment":
                    metrics = self._validate_segment()
                else:
                    metrics = self._validate_anomaly()
        except InputError as err:
            raise InputError(f"validation at step {self.progress.step}: {err}") from err
        finally:
            raw.train()
        self.last_metrics = metrics
        self._keep_best(metrics)
        return {f"val_{k}": v for k, v in metrics.items()}

    def _keep_best(self, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        better = self.best_value is None or (value > self.best_value if self.higher_is_better else value < self.best_value)
        if not better:
            return
        self.best_value, self.best_step = float(value), self.progress.step
        if self.task == "anomaly":  # kept for threshold calibration after training (every rank)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.raw.state_dict().items()}
        if self.is_main:
            save_checkpoint(
                self.out_dir / "best", self.raw, contract=self._contract(), step=self.progress.step,
                epoch=self.progress.epoch, config=self.run_config, **self._checkpoint_meta(),
            )  # fmt: skip

    def _validate_classify(self) -> dict[str, float]:
        val, tf = self.data.val, self.data.eval_transform
        rows: list[tuple[int, Any]] = []
        idx = self._val_indices()
        bs = self.config.batch_size
        for start in range(0, len(idx), bs):
            chunk = idx[start : start + bs]
            views = [tf(val[i], 0) for i in chunk]  # type: ignore[index]
            x = torch.stack([v.image.float() for v in views]).to(self.device)
            vm = torch.stack([v.valid.bool() for v in views]).to(self.device)
            extra = {"channels": self.channels} if self.channels is not None else {}
            with autocast(self.precision, self.device):
                logits = self.raw(x, valid=vm, **extra).float()
            labels = [v.label for v in views]
            if any(lab is None for lab in labels):
                raise InputError("a validation image has no label")
            y = torch.stack([torch.as_tensor(lab) for lab in labels]).to(self.device)
            for j, i in enumerate(chunk):
                loss = self._classify_loss(logits[j : j + 1], y[j : j + 1]).item()
                prob = torch.sigmoid(logits[j]) if self.multi_label else torch.softmax(logits[j], 0)
                rows.append((i, (prob.cpu().numpy(), y[j].cpu().numpy(), loss)))
        cases = self._gather(rows)
        probs = np.stack([c[0] for c in cases])
        targets = np.stack([c[1] for c in cases]) if self.multi_label else np.array([int(c[1]) for c in cases])
        r = M.classification_metrics(probs, targets, class_names=self.class_names, multi_label=self.multi_label)
        out = {k: r.get(k) for k in MONITORS[f"classify{'_multi_label' if self.multi_label else ''}"] if k != "loss"}
        out["loss"] = float(np.mean([c[2] for c in cases]))
        return {k: (math.nan if v is None else float(v)) for k, v in out.items()}

    def _sliding(self, fn: Callable[[torch.Tensor], torch.Tensor], sample: Sample) -> torch.Tensor:
        """``fn`` over ``(1, C + 1, *roi)`` windows (image + validity) of a sample, Gaussian-blended (MONAI)."""
        from unimae.core.inference import sliding_window

        x = sample.image.float()[None].to(self.device)
        v = sample.valid.bool()[None, None].to(x.dtype).to(self.device)
        return sliding_window(
            fn, torch.cat([x, v], 1), list(self.data.input_size), overlap=self.config.val_overlap,  # type: ignore[attr-defined]
            mode="gaussian", sw_batch_size=4,
        )  # fmt: skip

    def _fits(self, sample: Sample) -> bool:
        return all(s <= r for s, r in zip(sample.spatial_shape, self.data.input_size))

    def _validate_segment(self) -> dict[str, float]:
        k = len(self.class_names)
        extra = {"channels": self.channels} if self.channels is not None else {}

        def probs_fn(xv: torch.Tensor) -> torch.Tensor:
            with autocast(self.precision, self.device):
                return torch.softmax(self.raw(xv[:, :-1], valid=xv[:, -1] > 0.5, **extra).float(), 1)

        rows: list[tuple[int, Any]] = []
        for i in self._val_indices():
            s = self.data.val[i]  # type: ignore[index]
            if s.mask is None:
                raise InputError("a validation image has no mask")
            if self._fits(s):
                x = s.image.float()[None].to(self.device)
                v = s.valid.bool()[None, None].to(x.dtype).to(self.device)
                probs = probs_fn(torch.cat([x, v], 1))
            else:
                probs = self._sliding(probs_fn, s)
            pred = probs[0].argmax(0).cpu()
            valid = s.valid.bool()
            dice, iou = M.dice_iou(pred, s.mask, k, valid=valid)
            conf = M.label_confusion(pred, s.mask.clamp(0, k - 1), k, valid=valid)
            rows.append((i, (dice, iou, conf)))
        cases = self._gather(rows)
        r = M.segmentation_metrics(
            np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases]), class_names=self.class_names,
            confusion=np.sum([c[2] for c in cases], axis=0),
        )  # fmt: skip
        return {"mean_dice": _f(r["mean_dice"]), "mean_iou": _f(r["mean_iou"]), "pooled_dice": _f(r["pooled"]["mean_dice"])}

    def _anomaly_case(self, s: Sample, index: int, keep_pixels: int = 0) -> tuple[float, int, np.ndarray | None]:
        """Score (and label, and optionally sampled valid pixel values) of one validation sample."""
        a = self.anomaly
        extra = {"channels": self.channels} if self.channels is not None else {}

        def amap_fn(xv: torch.Tensor) -> torch.Tensor:
            x, v = xv[:, :-1], xv[:, -1] > 0.5
            out = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device=x.device)
            ok = v.flatten(1).any(1)
            if bool(ok.any()):
                idx = ok.nonzero()[:, 0]
                gen = torch.Generator(device=x.device).manual_seed(0)
                with autocast(self.precision, self.device):
                    m = anomaly_map(self.raw, x[idx], valid=v[idx], k=int(a["k"]), sigma=a["sigma"],
                                    norm_pix=self.config.norm_pix, generator=gen, **extra)  # fmt: skip
                out[idx, 0] = m.float()
            return out

        label = self._anomaly_label(s)
        view = s
        if self.raw.spatial_dims == 2:
            view = self.data.eval_transform(s, 0)
        x = view.image.float()[None].to(self.device)
        vm = view.valid.bool()[None, None].to(x.dtype).to(self.device)
        amap = amap_fn(torch.cat([x, vm], 1)) if self._fits(view) else self._sliding(amap_fn, view)
        amap = amap[0, 0].cpu()
        valid = view.valid.bool()
        score = float(image_scores(amap[None], valid[None], float(a["top_fraction"]))[0])
        pixels = None
        if keep_pixels and bool(valid.any()):
            values = amap[valid]
            if values.numel() > keep_pixels:
                g = torch.Generator().manual_seed(int(index))
                values = values[torch.randperm(values.numel(), generator=g)[:keep_pixels]]
            pixels = values.numpy()
        return score, label, pixels

    def _anomaly_label(self, s: Sample) -> int:
        """1 for an anomalous validation image: a class other than the normal one, else lesion pixels."""
        normal = self.data.normal_index
        if s.label is not None and s.label.numel() > 1:  # multi-hot: any positive class but the normal one
            hot = s.label.reshape(-1) > 0.5
            if normal is not None:
                hot[normal] = False
            return int(bool(hot.any()))
        if s.label is not None:
            return int(int(s.label) != (0 if normal is None else normal))
        if s.mask is not None:
            m = s.mask.bool()
            return int(bool((m & s.valid.bool()).any()) if m.shape == s.valid.shape else bool(m.any()))
        raise InputError("a validation image has neither a label nor a mask")

    def _validate_anomaly(self) -> dict[str, float]:
        rows = [(i, self._anomaly_case(self.data.val[i], i)[:2]) for i in self._val_indices()]  # type: ignore[index]
        cases = self._gather(rows)
        scores = np.array([c[0] for c in cases])
        labels = np.array([c[1] for c in cases])
        out = {"image_auroc": _f(M.auroc(scores, labels)) if 0 < labels.sum() < len(labels) else math.nan}
        if labels.sum() < len(labels):
            normal = scores[labels == 0]
            out["loss"] = float(normal.mean())  # the mean normal score: how well normal images are reconstructed
        return out

    def calibrate(self, fpr: float, max_pixels: int = 2_000_000) -> dict[str, Any]:
        """Image and pixel thresholds at ``fpr`` on the *normal* validation images (anomaly only)."""
        val = self.data.val
        if val is None:
            return {}
        idx = self._val_indices()
        per_case = max(1000, max_pixels // max(1, len(val)))  # type: ignore[arg-type]
        self.raw.eval()
        with torch.no_grad():
            rows = [(i, self._anomaly_case(val[i], i, keep_pixels=per_case)) for i in idx]  # type: ignore[index]
        cases = self._gather(rows)
        normal = [c for c in cases if c[1] == 0]
        if not normal:
            warnings.warn("no normal validation image to calibrate the anomaly thresholds on; they stay unset", stacklevel=2)
            return {}
        scores = torch.tensor([c[0] for c in normal], dtype=torch.float64)
        pixels = torch.from_numpy(np.concatenate([c[2] for c in normal if c[2] is not None]).astype(np.float64))
        return {
            "image_threshold": calibrate_threshold(scores, fpr),
            "pixel_threshold": calibrate_threshold(pixels, fpr) if pixels.numel() else None,
            "fpr": float(fpr),
            "calibration_images": len(normal),
        }


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


# ------------------------------------------------------------------------------------------------
# the learning curve
# ------------------------------------------------------------------------------------------------
def save_learning_curve(metrics_csv: str | Path, path: str | Path, *, monitor: str, title: str = "") -> Path:
    """A PNG with the training loss (left) and the validation metric ``monitor`` (right) against the step."""
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_csv)
    fig = Figure(figsize=(9.0, 3.4), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    if pts:
        ax.plot(*zip(*pts), color="tab:blue", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    vals = [(r["step"], r[monitor]) for r in rows if r.get(monitor) is not None and math.isfinite(r[monitor])]
    if vals:
        ax2.plot(*zip(*vals), color="tab:orange", marker="o", ms=3, lw=1.2)
        pick = min if monitor.endswith("loss") else max
        best = pick(vals, key=lambda v: v[1])
        ax2.plot([best[0]], [best[1]], marker="*", ms=12, color="tab:red", ls="none", label=f"best {best[1]:.4g}")
        ax2.legend(loc="best", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("step")
    ax2.set_ylabel(monitor.replace("_", " "))
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise InputError(f"{name} must be true or false, got {value!r}")


def _anomaly_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``anomaly`` section, checked: ``k`` >= 2, ``sigma`` >= 0 or null, ``top_fraction`` in (0, 1], ``fpr`` in (0, 1)."""
    a = {**ANOMALY_DEFAULTS, **dict(values)}

    def num(key: str) -> float:
        v = a[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"anomaly.{key} must be a number, got {v!r}")
        return float(v)

    if isinstance(a["k"], bool) or not isinstance(a["k"], int) or a["k"] < 2:
        raise InputError(f"anomaly.k must be an integer >= 2, got {a['k']!r}")
    if not 0.0 < num("fpr") < 1.0:
        raise InputError(f"anomaly.fpr must be in (0, 1), got {a['fpr']!r}")
    if not 0.0 < num("top_fraction") <= 1.0:
        raise InputError(f"anomaly.top_fraction must be in (0, 1], got {a['top_fraction']!r}")
    if a["sigma"] is not None and num("sigma") < 0:
        raise InputError(f"anomaly.sigma must be >= 0 or null, got {a['sigma']!r}")
    return a


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"data.{name} must be a positive integer, got {value!r}")
    return value


def _rewrite_json(path: Path, update: Mapping[str, Any]) -> None:
    """Update a checkpoint's JSON in place (atomically); its tensors are unchanged."""
    import json

    meta = read_checkpoint_meta(path)
    meta.update(update)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def finetune(cfg: Mapping[str, Any], *, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``unimae finetune`` for a loaded config (:func:`load_finetune_config`).

    Returns ``{"step", "loss", "model", "best", "checkpoint", "out_dir", "rank", "task", "monitor",
    "best_value", "best_step", "metrics", "init", "anomaly"}`` (paths written by rank 0; None elsewhere).
    """
    from unimae.domains import get_domain

    if not cfg.get("domain"):
        raise InputError("the config names no domain (set domain: ct | fundus | xray | multispectral)")
    plugin = get_domain(str(cfg["domain"]))
    task = cfg.get("task")
    if not task:
        raise InputError(f"the config names no task (set task: {' | '.join(plugin.tasks)})")
    task = str(task)
    if task not in plugin.tasks:
        look_up(task, TASKS, what="task")
        raise InputError(f"the {plugin.name} domain has no {task} task; it supports {', '.join(plugin.tasks)}")
    model_cfg, data_cfg = dict(cfg.get("model") or {}), dict(cfg.get("data") or {})
    check_keys("model", model_cfg, finetune_model_keys(task))
    check_keys("data", data_cfg, finetune_data_keys(plugin))
    anomaly_cfg = dict(cfg.get("anomaly") or {})
    check_keys("anomaly", anomaly_cfg, ANOMALY_KEYS)
    if anomaly_cfg and task != "anomaly":
        raise InputError(f"the anomaly section only applies to task anomaly, not {task}")
    anomaly = _anomaly_settings(anomaly_cfg)
    train_cfg = dict(cfg.get("train") or {})
    init = resolve_init(cfg.get("init"))
    train_cfg["layer_decay"] = resolve_layer_decay(train_cfg.get("layer_decay", "auto"), plugin, task, init)
    if train_cfg.get("max_steps", "unset") is None:  # no step count: train.epochs decides (or the default)
        train_cfg.pop("max_steps")
        if train_cfg.get("epochs") is not None:
            train_cfg["max_steps"] = 1  # replaced once the training data are counted
    elif train_cfg.get("epochs") is not None and "max_steps" in train_cfg:
        _say(f"train.max_steps={train_cfg['max_steps']} given: train.epochs={train_cfg['epochs']} is not used")
        train_cfg["epochs"] = None
    tcfg = FinetuneConfig.from_dict(train_cfg)
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if not cfg.get("out_dir"):
        raise InputError("the config names no out_dir (set out_dir=runs/NAME)")
    resume = cfg.get("resume", False)
    if isinstance(resume, str):
        resume = {"true": True, "false": False, "": False}.get(resume.strip().lower(), resume)
    if not isinstance(resume, (bool, str)) and resume is not None:
        raise InputError(f"resume must be true, false or a checkpoint path, got {resume!r}")
    allow_pickle = _bool("init_allow_pickle", cfg.get("init_allow_pickle", False))

    du.init_distributed(tcfg.device)
    try:
        seed_everything(seed)  # the same initial head weights on every rank
        data = build_finetune_data(plugin, task, data_cfg, seed)
        if tcfg.epochs is not None:  # a schedule in epochs scales with the data
            per_step = tcfg.batch_size * tcfg.accum_steps * du.env_world_size()
            tcfg.max_steps = max(1, math.ceil(float(tcfg.epochs) * len(data.train) / per_step))
            _say(f"train.epochs={tcfg.epochs:g} over {len(data.train)} training items: {tcfg.max_steps} steps "
                 f"of {per_step}")  # fmt: skip
        item = data.train[0]
        model, notes = build_task_model(
            task, model_cfg, plugin, num_classes=len(data.class_names), multi_label=data.multi_label,
            data_channels=data.channels, data_chans=int(item["image"].shape[0]), arch=init_architecture(init, task),
        )  # fmt: skip
        for note in notes:
            _say(note)
        init_info = load_init(model, init, task=task, allow_pickle=allow_pickle)
        _say(f"init: {init_info['summary'].splitlines()[0]}")
        for line in init_info["summary"].splitlines()[1:]:
            _say(line.strip())
        weight = None
        if tcfg.class_weights == "auto" and task != "anomaly":
            weight, how = class_weights(data.train, task, len(data.class_names), multi_label=data.multi_label,
                                        limit=tcfg.class_weight_samples)  # fmt: skip
            _say(f"class weights ({how}): " + ", ".join(f"{n} {w:.3g}" for n, w in zip(data.class_names, weight.tolist())))
        elif isinstance(tcfg.class_weights, list):
            if task == "anomaly":
                raise InputError("train.class_weights does not apply to anomaly training")
            if len(tcfg.class_weights) != len(data.class_names):
                raise InputError(
                    f"train.class_weights has {len(tcfg.class_weights)} values for {len(data.class_names)} classes "
                    f"({', '.join(data.class_names)})"
                )
            weight = torch.tensor(tcfg.class_weights, dtype=torch.float32)
        if data.val is None:
            warnings.warn(
                "no validation data (set data.val or data.val_fraction): best.json is the final model and "
                + ("the anomaly thresholds stay uncalibrated" if task == "anomaly" else "no metric is tracked"),
                stacklevel=2,
            )
        encoder = model.encoder
        spectral = encoder.channel_mode == "spectral"
        names = [str(c["name"]) for c in data.channels] if data.channels else None
        band_names = names if spectral and names and names != [c["name"] for c in encoder.channels] else None
        preprocess = {k: v for k, v in data_cfg.items() if k in _named_params(plugin.preprocess)}
        contract = make_contract(
            domain=plugin.name, spatial_dims=encoder.spatial_dims, channels=encoder.channels,
            patch_size=list(encoder.patch_size), input_size=list(data.input_size), normalization=data.normalization,
            preprocess=preprocess,
        )  # fmt: skip
        if band_names is not None:
            contract["data_channels"] = band_names
        if data_cfg.get("bands") is not None and "bands" in _named_params(plugin.read):
            # how the training files' bands were named (e.g. eurosat): prediction reads a file whose bands are
            # only guessed from their count the same way (see Predictor.load)
            contract["read"] = {"bands": data_cfg["bands"]}
        contract["modality"] = plugin.modality
        if encoder.spatial_dims == 2:  # predict at the scale the augmentation trained at (see the plugin recipe)
            contract["segment_mode"] = data_cfg.get("segment_mode") or plugin.recipes.get("finetune", {}).get(
                "segment_mode", "sliding")
        info = task_metadata(
            task=task, domain=plugin.name, class_names=data.class_names, contract=contract,
            multi_label=data.multi_label,
            anomaly={**{k: anomaly[k] for k in ("k", "sigma", "top_fraction", "fpr")}, "norm_pix": tcfg.norm_pix,
                     **({"normal_class": data.normal_class} if data.normal_class else {})},
        )  # fmt: skip
        run_cfg = copy.deepcopy(dict(cfg))
        trainer = FinetuneTrainer(
            model, data, task=task, config=tcfg, out_dir=Path(str(cfg["out_dir"])), task_info=info,
            init_info=init_info, weight=weight, anomaly=anomaly, seed=seed, resume=resume, run_config=run_cfg,
            on_step=on_step, channels=band_names,
        )  # fmt: skip
        result = trainer.fit()
        out = Path(str(cfg["out_dir"]))
        best_json = out / "best.json"
        thresholds: dict[str, Any] = {}
        if task == "anomaly" and data.val is not None:
            # calibrate the model predict will use: the best one (its weights), then the final one
            final_thr = trainer.calibrate(float(anomaly["fpr"]))
            thresholds = final_thr
            if trainer.best_state is not None and trainer.best_step != result["step"]:
                final_state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.raw.state_dict().items()}
                trainer.raw.load_state_dict(trainer.best_state)
                thresholds = trainer.calibrate(float(anomaly["fpr"]))
                trainer.raw.load_state_dict(final_state)
            if trainer.is_main and thresholds and trainer.best_step is not None:
                _rewrite_json(best_json, {"anomaly": {**info["anomaly"], **thresholds}})
            if trainer.is_main and final_thr and result.get("model"):
                _rewrite_json(Path(result["model"]), {"anomaly": {**info["anomaly"], **final_thr}})
        if trainer.is_main:
            if trainer.best_step is None:  # no validation metric: the final model is the best we know
                import shutil

                with atomic_path(out / "best.safetensors") as tmp:
                    shutil.copyfile(out / "model.safetensors", tmp)
                with atomic_path(best_json) as tmp:
                    tmp.write_text((out / "model.json").read_text())
            save_learning_curve(out / "metrics.csv", out / "learning_curve.png", monitor=f"val_{trainer.monitor}",
                                title=f"{plugin.name} {task}")  # fmt: skip
        du.barrier()
        result.update(
            task=task, monitor=f"val_{trainer.monitor}", best_value=trainer.best_value, best_step=trainer.best_step,
            metrics=dict(trainer.last_metrics), init=init_info, anomaly=thresholds or None,
            best=best_json if trainer.is_main else None,
        )  # fmt: skip
        return result
    finally:
        du.cleanup()
