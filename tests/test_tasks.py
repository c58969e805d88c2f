"""The task layer: the registry, each task's own pieces, and its one-sample inference being the path that
fine-tuning's validation and the predict layer (``unimae predict``, ``unimae evaluate``, the app) both take.

The validation side is a :class:`FinetuneTrainer` with only what validation reads set (no training run):
the same tiny model and the same validation sample go through the trainer's validation code and through a
:class:`Predictor`, and the numbers must agree.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unimae.apps.finetune import FinetuneConfig, FinetuneTrainer
from unimae.apps.finetune_config import MODEL_CLASSES, MONITORS
from unimae.apps.finetune_data import build_finetune_data
from unimae.apps.predict import Predictor
from unimae.core import metrics as M
from unimae.core.errors import InputError
from unimae.core.inference import TASKS as INFERENCE_TASKS
from unimae.core.inference import make_contract, parse_task_metadata, task_metadata
from unimae.core.mae import MaskedAutoencoder
from unimae.core.models import MAEClassifier, MAESegmenter
from unimae.core.tasks import TASKS, Task, all_tasks, app_order, get_task
from unimae.domains import get_domain

TINY = dict(embed_dim=32, depth=1, num_heads=2)
TINY_DEC = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)
SIZE = 64


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------
def test_registry_holds_the_three_tasks_in_order() -> None:
    assert TASKS == ("classify", "segment", "anomaly") == INFERENCE_TASKS
    assert [t.name for t in all_tasks()] == list(TASKS)
    assert all(isinstance(t, Task) for t in all_tasks())
    assert get_task("segment") is get_task("segment")  # one stateless object per task
    assert get_task(get_task("anomaly")) is get_task("anomaly")
    assert [t.name for t in app_order()] == ["segment", "classify", "anomaly"]  # the app's tab order


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(InputError, match="unknown task 'segmnt'.*classify, segment, anomaly.*'segment'"):
        get_task("segmnt")


def test_old_tables_are_views_of_the_registry() -> None:
    assert MODEL_CLASSES == {"classify": MAEClassifier, "segment": MAESegmenter, "anomaly": MaskedAutoencoder}
    assert MONITORS["classify"][0] == "balanced_accuracy" and MONITORS["classify_multi_label"][0] == "macro_auroc"
    assert MONITORS["segment"] == ("mean_dice", "mean_iou", "pooled_dice")
    assert MONITORS["anomaly"] == ("image_auroc", "loss")
    assert set(MONITORS) == {"classify", "classify_multi_label", "segment", "anomaly"}


def test_task_metadata_comes_from_the_task() -> None:
    contract = make_contract(domain="fundus", spatial_dims=2, channels=[{"name": "R"}], patch_size=16, input_size=SIZE,
                             normalization=None)  # fmt: skip
    anomaly = task_metadata(task="anomaly", domain="fundus", class_names=[], contract=contract, anomaly={"k": 2})
    assert list(anomaly) == ["task", "domain", "class_names", "multi_label", "contract", "anomaly"]
    assert anomaly["class_names"] == ["normal", "anomaly"] and anomaly["anomaly"]["k"] == 2
    assert anomaly["anomaly"]["fpr"] == 0.05 and anomaly["multi_label"] is False
    multi = task_metadata(task="classify", domain="fundus", class_names=["a", "b"], contract=contract, multi_label=True)
    assert multi["multi_label"] is True and "anomaly" not in multi
    seg = task_metadata(task="segment", domain="fundus", class_names=["bg", "x"], contract=contract, multi_label=True)
    assert seg["multi_label"] is False
    with pytest.raises(ValueError, match="segment checkpoint needs class_names"):
        task_metadata(task="segment", domain="fundus", class_names=[], contract=contract)
    # a pretraining checkpoint (no task) reads as the task whose model it is and that has no classes
    info = parse_task_metadata({"model_class": "MaskedAutoencoder", "contract": contract})
    assert info["task"] == "anomaly" and info["class_names"] == ["normal", "anomaly"]
    with pytest.raises(InputError, match="no 'task'"):
        parse_task_metadata({"model_class": "MAESegmenter", "contract": contract})
    with pytest.raises(InputError, match="a classify checkpoint must hold a MAEClassifier"):
        parse_task_metadata({"task": "classify", "model_class": "MAESegmenter", "contract": contract, "class_names": ["a"]})


def test_infer_settings_come_from_the_checkpoint_record() -> None:
    contract = make_contract(domain="fundus", spatial_dims=2, channels=[{"name": "R"}], patch_size=16, input_size=SIZE,
                             normalization=None)  # fmt: skip
    anomaly = task_metadata(task="anomaly", domain="fundus", class_names=[], contract=contract,
                            anomaly={"k": 3, "sigma": 2, "norm_pix": False})  # fmt: skip
    assert get_task("anomaly").infer_settings(anomaly) == {"k": 3, "sigma": 2.0, "norm_pix": False}
    old = {**anomaly, "anomaly": {"k": 4, "sigma": None}}  # written before norm_pix was recorded
    assert get_task("anomaly").infer_settings(old)["norm_pix"] is True
    multi = task_metadata(task="classify", domain="fundus", class_names=["a", "b"], contract=contract, multi_label=True)
    assert get_task("classify").infer_settings(multi) == {"multi_label": True}
    assert get_task("segment").infer_settings(multi) == {}


def test_model_args_check_the_model_section() -> None:
    assert get_task("classify").model_args({}, num_classes=3, multi_label=True) == {"num_classes": 3, "multi_label": True}
    assert get_task("segment").model_args({"num_classes": 2}, num_classes=2, multi_label=False) == {"num_classes": 2}
    assert get_task("anomaly").model_args({}, num_classes=2, multi_label=False) == {}
    with pytest.raises(InputError, match="model.num_classes is 4 but the data have 3 classes"):
        get_task("segment").model_args({"num_classes": 4}, num_classes=3, multi_label=False)
    with pytest.raises(InputError, match="model.multi_label is False"):
        get_task("classify").model_args({"multi_label": False}, num_classes=3, multi_label=True)


def test_losses() -> None:
    seg = get_task("segment").make_loss(["background", "vessel"], dice_weight=0.5)
    assert not seg.dice.include_background and seg.lambda_dice == 0.5  # a leading background class stays out of Dice
    assert get_task("segment").make_loss(["a", "b"]).dice.include_background
    assert get_task("classify").make_loss(["a", "b"]) is None and get_task("anomaly").make_loss([]) is None
    logits, label = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(get_task("classify").loss(logits, label), torch.nn.functional.cross_entropy(logits, label))


# ------------------------------------------------------------------------------------------------
# one-sample inference: validation and predict take the same path
# ------------------------------------------------------------------------------------------------
def _models(task: str) -> tuple[torch.nn.Module, list[str]]:
    torch.manual_seed(0)
    if task == "classify":
        names = list(get_domain("fundus").class_names)
        return MAEClassifier(len(names), in_chans=3, patch_size=16, **TINY).eval(), names
    if task == "segment":
        names = ["background", "vessel"]
        return MAESegmenter(2, in_chans=3, patch_size=16, feature_size=8, **TINY).eval(), names
    return MaskedAutoencoder(in_chans=3, patch_size=16, **TINY, **TINY_DEC).eval(), ["normal", "anomaly"]


def _pair(task: str) -> tuple[FinetuneTrainer, Predictor, list]:
    """A validation-only trainer and a predictor over the same model, and the validation samples."""
    plugin = get_domain("fundus")
    data = build_finetune_data(plugin, task, {"input_size": SIZE, "num_samples": 2, "num_val_samples": 2}, seed=0)
    model, names = _models(task)
    names = data.class_names if task == "segment" else names
    anomaly = {"k": 2, "sigma": None, "top_fraction": 0.05, "fpr": 0.05}
    trainer = FinetuneTrainer.__new__(FinetuneTrainer)  # validation only: the attributes it reads
    trainer.raw, trainer.data, trainer.task, trainer.task_def = model, data, task, get_task(task)
    trainer.channels, trainer.precision, trainer.device = None, "fp32", torch.device("cpu")
    trainer.config = FinetuneConfig(batch_size=2, val_batches=1)
    trainer.info = SimpleNamespace(rank=0, world_size=1)
    trainer.class_names, trainer.multi_label, trainer.weight = list(names), False, None
    trainer.anomaly = {**anomaly, "norm_pix": trainer.config.norm_pix}
    contract = make_contract(domain="fundus", spatial_dims=2, channels=data.channels, patch_size=16, input_size=SIZE,
                             normalization=None)  # fmt: skip
    meta = task_metadata(task=task, domain="fundus", class_names=names, contract=contract,
                         anomaly={**anomaly, "norm_pix": trainer.config.norm_pix})  # fmt: skip
    trainer.task_info = meta  # the checkpoint record both sides read their settings from
    predictor = Predictor(model, {**meta, "model_class": type(model).__name__}, overlap=trainer.config.val_overlap)
    return trainer, predictor, [data.val[i] for i in range(2)]


def test_classify_validation_and_predict_give_the_same_probabilities() -> None:
    trainer, predictor, samples = _pair("classify")
    with torch.no_grad():
        metrics = trainer._validate_classify()
    losses = []
    for s in samples:
        probs = predictor.predict(s).probabilities
        losses.append(-math.log(probs[predictor.class_names[int(s.label)]]))
    assert metrics["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_segment_validation_and_predict_give_the_same_masks() -> None:
    trainer, predictor, samples = _pair("segment")
    assert all(tuple(s.spatial_shape) == (SIZE, SIZE) for s in samples)  # validation runs them whole, predict by window
    with torch.no_grad():
        metrics = trainer._validate_segment()
    dices = []
    for s in samples:
        labels = torch.from_numpy(predictor.predict(s).label_map.astype(np.int64))
        dice, _ = M.dice_iou(labels, s.mask, 2, valid=s.valid.bool())
        dices.append(dice)
    want = M.segmentation_metrics(np.stack(dices), np.stack(dices), class_names=trainer.class_names)["mean_dice"]
    assert metrics["mean_dice"] == pytest.approx(want, abs=1e-6)


def test_anomaly_validation_and_predict_give_the_same_scores() -> None:
    trainer, predictor, samples = _pair("anomaly")
    for i, s in enumerate(samples):
        with torch.no_grad():
            score, _, _ = trainer._anomaly_case(s, i)
        assert predictor.predict(s).score == pytest.approx(score, rel=1e-5)


def test_inference_is_the_task_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides call the task's ``infer``: a changed ``infer`` changes validation and prediction alike."""
    trainer, predictor, samples = _pair("anomaly")
    task = get_task("anomaly")
    original = task.infer
    calls: list[str] = []

    def doubled(*args, **kw):
        calls.append("infer")
        return original(*args, **kw) * 2.0

    monkeypatch.setattr(task, "infer", doubled)
    with torch.no_grad():
        score, _, _ = trainer._anomaly_case(samples[0], 0)
    pred = predictor.predict(samples[0])
    assert calls == ["infer", "infer"]
    assert pred.score == pytest.approx(score, rel=1e-5)
    monkeypatch.undo()
    assert predictor.predict(samples[0]).score == pytest.approx(score / 2.0, rel=1e-5)


def test_the_registry_imports_no_torch() -> None:
    """The app and ``unimae --help`` read titles, tab order and flags from the registry: it must stay light."""
    import subprocess
    import sys

    code = "import sys, unimae.core.tasks as t; t.app_order(); print('HEAVY', [m for m in ('torch', 'monai', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, (out.stdout[-500:], out.stderr[-500:])


def test_result_maps_name_the_files_each_task_writes() -> None:
    from unimae.apps.prediction import Prediction
    from unimae.core.tasks.base import heat_nodata, label_nodata

    labels = np.zeros((4, 5), dtype=np.uint8)
    seg = Prediction(task="segment", domain="fundus", class_names=["bg", "vessel"], meta={"nodata": 0}, label_map=labels)
    maps, layer = get_task("segment").result_maps(seg)
    assert [(n, k, nd) for n, _, k, nd in maps] == [("seg", "labels", 255.0)] and layer["labels"] is labels  # 0 is a class
    heat = np.ones((4, 5), dtype=np.float64)
    an = Prediction(task="anomaly", domain="fundus", class_names=["normal", "anomaly"], meta={"nodata": -1.0},
                    heatmap=heat, anomaly_mask=heat > 0.5)  # fmt: skip
    maps, layer = get_task("anomaly").result_maps(an)
    assert [(n, a.dtype, k, nd) for n, a, k, nd in maps] == [
        ("heatmap", np.float32, "heat", -1.0), ("anomaly_mask", np.uint8, "labels", 255.0)]  # fmt: skip
    assert layer["heat"] is heat
    cls = Prediction(task="classify", domain="fundus", class_names=["a", "b"], meta={}, probabilities={"a": 0.4, "b": 0.6})
    assert get_task("classify").result_maps(cls) == ([], None)
    assert label_nodata(7, 3) == 7.0 and label_nodata(1, 3) == 255.0 and label_nodata(None, 300) == 65535.0
    assert math.isnan(heat_nodata(0.0)) and heat_nodata(-9999.0) == -9999.0
