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

The parts, one import path (everything is importable from here): the config (:mod:`.finetune_config`),
the data (:mod:`.finetune_data`), the model and its initialisation (:mod:`.finetune_model`) and the trainer
(:mod:`.finetune_trainer`); this module runs them (:func:`finetune`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from unimae.apps import finetune_config
from unimae.apps.finetune_config import (  # all of finetune_config.__all__ is re-exported from here
    ANOMALY_DEFAULTS,
    ANOMALY_KEYS,
    MODEL_CLASSES,
    MODES,
    MONITORS,
    SECTIONS,
    SYNTHETIC_VAL_OFFSET,
    TASKS,
    TOP_LEVEL_KEYS,
    FinetuneConfig,
    _anomaly_settings,
    _bool,
    _named_params,
    _rewrite_json,
    _say,
    dump_finetune_config,
    finetune_data_keys,
    finetune_model_keys,
    load_finetune_config,
)
from unimae.apps.finetune_data import FinetuneData, build_finetune_data, class_weights
from unimae.apps.finetune_model import (
    InitSource,
    MaskedDiceCELoss,
    build_task_model,
    init_architecture,
    load_init,
    resolve_init,
    resolve_layer_decay,
)
from unimae.apps.finetune_trainer import FinetuneTrainer, _mixup_draw, save_learning_curve
from unimae.core import distributed as du
from unimae.core.config import check_keys, run_settings
from unimae.core.engine import seed_everything
from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path
from unimae.core.inference import make_contract, task_metadata
from unimae.core.tasks import Task, get_task
from unimae.core.tta import task_tta
from unimae.domains import domain_names, get_domain
from unimae.domains.base import DomainPlugin

__all__ = [
    *finetune_config.__all__,
    "FinetuneData",
    "FinetuneTrainer",
    "MaskedDiceCELoss",
    "InitSource",
    "build_finetune_data",
    "build_task_model",
    "init_architecture",
    "resolve_init",
    "resolve_layer_decay",
    "load_init",
    "class_weights",
    "save_learning_curve",
    "finetune",
    "_mixup_draw",
]


def _tta_setting(plugin: DomainPlugin, task_def: Task, value: Any) -> str:
    """``data.tta``: the test-time augmentation the checkpoint predicts with (``auto``: the domain's symmetries
    for the task); checked before anything trains."""
    if value in (None, "auto"):
        value = plugin.symmetries.get(task_def.name, "none")
    return task_tta(value, task_def, plugin.spatial_dims, "data.tta")


def finetune(cfg: Mapping[str, Any], *, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``unimae finetune`` for a loaded config (:func:`load_finetune_config`).

    Returns ``{"step", "loss", "model", "best", "checkpoint", "out_dir", "rank", "task", "monitor",
    "best_value", "best_step", "metrics", "init", "anomaly"}`` (paths written by rank 0; None elsewhere).
    """
    if not cfg.get("domain"):
        raise InputError(f"the config names no domain (set domain: {' | '.join(domain_names())})")
    plugin = get_domain(str(cfg["domain"]))
    task = cfg.get("task")
    if not task:
        raise InputError(f"the config names no task (set task: {' | '.join(plugin.tasks)})")
    task = str(task)
    if task not in plugin.tasks:
        look_up(task, TASKS, what="task")
        raise InputError(f"the {plugin.name} domain has no {task} task; it supports {', '.join(plugin.tasks)}")
    task_def = get_task(task)
    model_cfg, data_cfg = dict(cfg.get("model") or {}), dict(cfg.get("data") or {})
    check_keys("model", model_cfg, finetune_model_keys(task))
    check_keys("data", data_cfg, finetune_data_keys(plugin))
    tta = _tta_setting(plugin, task_def, data_cfg.get("tta"))
    anomaly_cfg = dict(cfg.get("anomaly") or {})
    check_keys("anomaly", anomaly_cfg, ANOMALY_KEYS)
    if anomaly_cfg and not task_def.calibrated:
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
    seed, resume = run_settings(cfg)
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
        if tcfg.class_weights == "auto" and task_def.class_outputs:
            weight, how = class_weights(data.train, task, len(data.class_names), multi_label=data.multi_label,
                                        limit=tcfg.class_weight_samples)  # fmt: skip
            _say(f"class weights ({how}): " + ", ".join(f"{n} {w:.3g}" for n, w in zip(data.class_names, weight.tolist())))
        elif isinstance(tcfg.class_weights, list):
            if not task_def.class_outputs:
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
                + ("the anomaly thresholds stay uncalibrated" if task_def.calibrated else "no metric is tracked"),
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
        if task_def.symmetric:
            contract["tta"] = tta
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
        if task_def.calibrated and data.val is not None:
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
