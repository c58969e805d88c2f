"""``unimae finetune``: short fine-tunes beat chance per domain x task; init, linear mode, class weights,
best checkpoint and its JSON contract, anomaly thresholds, resume, the loss, configs and one-line CLI errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from unimae.apps.cli import main
from unimae.apps.finetune import (
    MaskedDiceCELoss,
    build_task_model,
    class_weights,
    finetune,
    load_finetune_config,
    load_init,
    InitSource,
    resolve_init,
    resolve_layer_decay,
)
from unimae.core.anomaly import anomaly_map, image_scores
from unimae.core.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from unimae.core.engine import read_metrics
from unimae.core.errors import InputError
from unimae.core.mae import MaskedAutoencoder
from unimae.domains import get_domain

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "ct": ("segment", "anomaly"),
    "fundus": ("classify", "segment", "anomaly"),
    "xray": ("classify", "segment", "anomaly"),
    "multispectral": ("classify", "segment", "anomaly"),
}
SIZE = {"ct": 32, "fundus": 64, "xray": 64, "multispectral": 32}
QUIET = ["train.precision=fp32", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
         "train.num_workers=0", "train.warmup_steps=2"]  # fmt: skip
ENCODER = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.drop_path_rate=0.0"]
MAE_DECODER = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2"]
TINY_MAE = dict(embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors run faster (and steadier on a shared 2-core machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(domain: str, task: str) -> Path:
    return ROOT / "configs" / domain / f"{task}.yaml"


def tiny(domain: str, task: str, out: Path, *extra: str) -> list[str]:
    """Overrides for a tiny CPU run of ``configs/<domain>/<task>.yaml``."""
    over = [*QUIET, *ENCODER, f"data.input_size={SIZE[domain]}", f"out_dir={out}"]
    if task == "anomaly":
        over += MAE_DECODER
    if task == "segment":
        over.append("model.feature_size=8")
    return over + list(extra)


def run(domain: str, task: str, out: Path, *extra: str) -> dict:
    return finetune(load_finetune_config(config(domain, task), tiny(domain, task, out, *extra)))


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("unimae: warning")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("unimae: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def check_run(result: dict, out: Path, domain: str, task: str) -> dict:
    """The files and the checkpoint JSON contract every fine-tuning run writes; returns best.json."""
    print(f"{domain} {task}: best {result['monitor']} {result['best_value']} at step {result['best_step']}")
    for name in ("best.json", "best.safetensors", "model.json", "model.safetensors", "metrics.csv",
                 "learning_curve.png", "config.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, meta = load_checkpoint(out / "best")
    expected_class = {"classify": "MAEClassifier", "segment": "MAESegmenter", "anomaly": "MaskedAutoencoder"}[task]
    assert type(model).__name__ == expected_class and meta["model_class"] == expected_class
    assert meta["task"] == task and meta["domain"] == domain
    c = meta["contract"]
    assert c["domain"] == domain and c["spatial_dims"] == get_domain(domain).spatial_dims
    assert c["input_size"] == [SIZE[domain]] * c["spatial_dims"]
    assert c["channels"] and c["patch_size"] and isinstance(c["normalization"], dict)
    assert isinstance(c["preprocess"], dict)
    assert meta["init"]["kind"] == "none"
    assert meta["monitor"] == result["monitor"] and meta["best_step"] == result["best_step"]
    # the kept checkpoint is the best row of the learning curve
    rows = read_metrics(out / "metrics.csv")
    column = meta["monitor"]
    scored = [(r[column], r["step"]) for r in rows if r.get(column) is not None and math.isfinite(r[column])]
    assert scored, column
    best_value, best_step = max(scored, key=lambda v: (v[0], -v[1]))
    assert meta["best_value"] == pytest.approx(best_value) and meta["best_step"] == best_step
    assert meta["metrics"][column.removeprefix("val_")] == pytest.approx(best_value)
    assert "task: " + task in (out / "config.yaml").read_text()
    return meta


# ------------------------------------------------------------------------------------------------
# a short fine-tune beats chance on each domain's synthetic data
# ------------------------------------------------------------------------------------------------
def test_xray_multilabel_findings_beat_chance(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run("xray", "classify", out, "data.num_samples=640", "data.num_val_samples=48", "train.max_steps=80",
                 "train.batch_size=16", "train.lr=2e-3", "train.val_every=20")  # fmt: skip
    meta = check_run(result, out, "xray", "classify")
    assert meta["multi_label"] is True and meta["class_names"] == ["nodule", "consolidation", "cardiomegaly"]
    assert result["monitor"] == "val_macro_auroc"
    assert result["best_value"] > 0.65, result["metrics"]  # chance: 0.5


def test_multispectral_land_cover_classes_beat_chance(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run("multispectral", "classify", out, "data.num_samples=960", "data.num_val_samples=48",
                 "train.max_steps=50", "train.batch_size=16", "train.lr=2e-3", "train.val_every=25")  # fmt: skip
    meta = check_run(result, out, "multispectral", "classify")
    assert meta["multi_label"] is False and len(meta["class_names"]) == 5
    # the shipped recipe: 13 fixed bands selected and ordered by name (recorded for prediction)
    assert meta["encoder"]["channel_mode"] == "fixed" and meta["encoder"]["in_chans"] == 13
    assert meta["contract"]["preprocess"]["select_bands"][8] == "B8A"
    assert result["monitor"] == "val_balanced_accuracy"
    assert result["best_value"] > 0.2 + 0.25, result["metrics"]  # chance: 1/5


def majority_dice(domain: str, n: int, seed: int) -> float:
    """Mean foreground Dice of predicting the most frequent class everywhere (the all-background baseline)."""
    from unimae.core import metrics as M

    plugin = get_domain(domain)
    names = list(plugin.seg_class_names)
    ds = plugin.synthetic(n, seed=seed + 100_003, size=SIZE[domain], task="segment")
    counts = np.zeros(len(names))
    samples = [ds[i] for i in range(n)]
    for s in samples:
        counts += np.bincount(s.mask[s.valid].numpy(), minlength=len(names))
    top = int(counts.argmax())
    dice = [M.dice_iou(torch.full_like(s.mask, top), s.mask, len(names), valid=s.valid)[0] for s in samples]
    return float(M.segmentation_metrics(np.stack(dice), np.stack(dice), class_names=names)["mean_dice"])


@pytest.mark.parametrize(
    "domain, extra, margin",
    [
        ("fundus", ["train.max_steps=60", "train.batch_size=8"], 0.4),
        ("xray", ["train.max_steps=40", "train.batch_size=8"], 0.4),
        ("multispectral", ["train.max_steps=40", "train.batch_size=8"], 0.25),
        ("ct", ["train.max_steps=60", "train.batch_size=2", "data.num_val_samples=6"], 0.15),
    ],
)
def test_segmentation_beats_the_all_background_prediction(domain: str, extra: list[str], margin: float, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run(domain, "segment", out, "data.num_samples=480", "data.num_val_samples=16", "train.lr=2e-3",
                 "train.val_every=20", *extra)  # fmt: skip
    meta = check_run(result, out, domain, "segment")
    plugin = get_domain(domain)
    assert meta["class_names"] == list(plugin.seg_class_names)
    assert result["monitor"] == "val_mean_dice"
    n_val = int(next(e.split("=")[1] for e in [*extra, "data.num_val_samples=16"] if e.startswith("data.num_val")))
    baseline = majority_dice(domain, n_val, seed=0)
    assert result["best_value"] > baseline + margin, (result["metrics"], baseline)


def normal_val_scores(out: Path, domain: str, n: int, val_lesion_prob: float) -> tuple[np.ndarray, dict]:
    """Image scores of the normal synthetic validation images under the best checkpoint, as calibrated."""
    model, meta = load_checkpoint(out / "best")
    a = meta["anomaly"]
    plugin = get_domain(domain)
    ds = plugin.synthetic(n, seed=100_003, size=SIZE[domain], task="anomaly", lesion_prob=val_lesion_prob)
    view = plugin.augment(train=False, input_size=SIZE[domain])
    scores = []
    for i in range(n):
        s = ds[i]
        if int(s.label) != 0:
            continue
        v = view(s, 0)
        with torch.no_grad():
            m = anomaly_map(model, v.image[None], valid=v.valid[None], k=a["k"], sigma=a["sigma"], norm_pix=a["norm_pix"],
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        scores.append(float(image_scores(m, v.valid[None], a["top_fraction"])[0]))
    return np.array(scores), a


@pytest.mark.parametrize(
    "domain, extra",
    [
        ("multispectral", ["train.max_steps=60", "train.val_every=30"]),
        # 1-2 px lesions at 64 px: the image score averages the top 20% of the map instead of the top 1%
        ("fundus", ["train.max_steps=150", "train.val_every=50", "anomaly.top_fraction=0.2", "data.num_val_samples=64"]),
        # 4 px patches (256 tokens at 64 px) so a 2-4 px nodule is a patch, not a corner of one; the MAE trains at
        # 75% masking, closer to what the K=4 complementary masks hide at inference (25%)
        # (no variance head: on these phantoms' focal nodules the plain error map detects better; the shipped real-film
        # recipe's variance head and top-10 % score are for diffuse opacities)
        ("xray", ["model.patch_size=4", "model.mask_ratio=0.75", "data.num_samples=4000", "train.max_steps=300",
                  "train.val_every=100", "train.lr=1e-3", "model.predict_variance=false", "anomaly.top_fraction=0.01"]),  # fmt: skip
    ],
)
def test_anomaly_auroc_beats_chance_and_thresholds_are_calibrated(domain: str, extra: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    n_val = int(next((e.split("=")[1] for e in extra if e.startswith("data.num_val_samples=")), 48))
    result = run(domain, "anomaly", out, "data.num_samples=2400", "data.num_val_samples=48", "train.batch_size=16",
                 "train.lr=2e-3", *extra)  # fmt: skip
    meta = check_run(result, out, domain, "anomaly")
    assert meta["class_names"] == ["normal", "anomaly"] and result["monitor"] == "val_image_auroc"
    assert result["best_value"] > (0.7 if domain == "xray" else 0.65), result["metrics"]  # chance: 0.5
    # thresholds calibrated on the normal validation images at fpr 0.05, stored in best.json
    scores, a = normal_val_scores(out, domain, n_val, 0.5)
    assert a["fpr"] == 0.05 and a["norm_pix"] is False and a["calibration_images"] == len(scores) > 10
    assert a["pixel_threshold"] > 0 and a["image_threshold"] > 0
    above = float((scores > a["image_threshold"]).mean())
    assert above <= 0.05 + 1.0 / len(scores), (above, a)
    assert float((scores >= np.quantile(scores, 0.5)).mean()) > 0.05  # the threshold is not trivially huge
    assert a["image_threshold"] <= scores.max() + 1e-6
    model_meta = read_checkpoint_meta(out / "model")
    assert model_meta["anomaly"]["image_threshold"] is not None


def test_ct_anomaly_trains_on_normal_volumes_and_stores_thresholds(tmp_path: Path) -> None:
    """The 3D anomaly path as configured (variance head, mask ratio 1/k, no flips): training on normal volumes,
    validation with lesions, calibration and the variance head in the checkpoint (detection: the next test)."""
    out = tmp_path / "run"
    result = run("ct", "anomaly", out, "data.num_samples=16", "data.num_val_samples=8", "train.max_steps=4",
                 "train.batch_size=2", "train.val_every=2", "model.patch_size=8")  # fmt: skip
    meta = check_run(result, out, "ct", "anomaly")
    plugin = get_domain("ct")
    val = plugin.synthetic(8, seed=100_003, size=SIZE["ct"], task="anomaly", lesion_prob=0.5)
    normals = sum(int(val[i].label) == 0 for i in range(8))
    a = meta["anomaly"]
    assert a["calibration_images"] == normals > 0 and a["k"] == 4 and a["norm_pix"] is False
    assert a["image_threshold"] > 0 and a["pixel_threshold"] > 0
    assert a["sigma"] == 1.0 and a["top_fraction"] == 0.001
    assert meta["contract"]["mask_ratio"] == 1.0 / a["k"]  # trained as inference hides
    assert meta["contract"]["norm_pix"] is False
    assert meta["contract"]["preprocess"] == {"window": "soft_tissue", "spacing": [1.5, 1.5, 1.5]}
    model, _ = load_checkpoint(out / "best")
    assert model.predict_variance
    with torch.no_grad():
        out_fwd = model(val[0].image[None].float(), valid=val[0].valid[None])
    assert out_fwd["logvar"].shape == out_fwd["pred"].shape


def _image_auroc(model: torch.nn.Module, a: dict, n: int) -> tuple[float, np.ndarray]:
    """Image AUROC of ``model`` on the synthetic CT validation set, scored exactly as fine-tuning scores it, and
    the set's labels (1 = lesion)."""
    from unimae.core.metrics import auroc

    ds = get_domain("ct").synthetic(n, seed=100_003, size=SIZE["ct"], task="anomaly", lesion_prob=0.5)
    scores, labels = [], []
    for i in range(n):
        s = ds[i]
        with torch.no_grad():
            m = anomaly_map(model, s.image[None].float(), valid=s.valid[None], k=a["k"], sigma=a["sigma"],
                            norm_pix=a["norm_pix"], generator=torch.Generator().manual_seed(0))  # fmt: skip
        scores.append(float(image_scores(m, s.valid[None], a["top_fraction"])[0]))
        labels.append(int(s.label))
    return auroc(np.array(scores), np.array(labels)), np.array(labels)


def _chance_sd(labels: np.ndarray) -> float:
    """Standard deviation of the AUROC of a scorer that cannot separate the classes (mean 0.5), for these class
    counts: the Mann-Whitney statistic's null distribution, sqrt((n1 + n0 + 1) / (12 n1 n0))."""
    n1, n0 = int(labels.sum()), int((1 - labels).sum())
    return math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))


@pytest.mark.slow  # about 90 s on 2 idle CPU cores (2500 training steps)
def test_ct_anomaly_with_variance_beats_chance_and_an_untrained_model(tmp_path: Path) -> None:
    """Hypodense liver/spleen lesions in 32^3 trunk phantoms: the MAE with the variance head, trained on normal
    volumes, beats chance AND the same architecture untrained, scored the same way (so the statistics of the
    scoring alone cannot pass it). 2500 steps, about 90 s on 2 idle CPU cores.

    The margin comes from the size of the validation set, not from one seed's result: a scorer that cannot
    separate the classes has AUROC 0.5 +- sd, sd = sqrt((n1 + n0 + 1) / (12 n1 n0)) (0.059 for the 46 + 50
    volumes), and passes ``> 0.5 + 2.33 sd`` by luck about 1 % of the time; the trained model must clear that
    and the untrained model's own AUROC by the same 2.33 sd. Measured on this 96-volume set (margin 0.138,
    so the bar is 0.638): trained 0.754 (seed 0) and 0.749 (seed 1; 0.850 on its own validation set), untrained
    0.476. A model whose optimizer never steps scores as the untrained one and fails."""
    from unimae.core.checkpoint import build_model

    out = tmp_path / "run"
    n_val = 96
    result = run("ct", "anomaly", out, "model.patch_size=8", "data.num_samples=10000", f"data.num_val_samples={n_val}",
                 "train.max_steps=2500", "train.batch_size=4", "train.lr=1.5e-3", "train.weight_decay=0.02",
                 "train.warmup_steps=160", "train.val_every=2500", "train.save_every=2500", "train.log_every=500")  # fmt: skip
    meta = check_run(result, out, "ct", "anomaly")
    trained, _ = load_checkpoint(out / "best")
    torch.manual_seed(0)
    untrained = build_model(meta).eval()
    a = meta["anomaly"]
    ours, labels = _image_auroc(trained, a, n_val)
    control, _ = _image_auroc(untrained, a, n_val)
    margin = 2.33 * _chance_sd(labels)
    print(f"ct anomaly image AUROC: trained {ours:.3f}, untrained {control:.3f}, margin {margin:.3f}")
    assert ours == pytest.approx(result["best_value"], abs=1e-6)  # the same scoring as validation
    assert ours > 0.5 + margin and ours > control + margin, (ours, control, margin)


def test_fundus_grading_beats_chance(tmp_path: Path) -> None:
    """DR-like grades 0-3 (lesions more numerous, larger and more varied with the grade): quadratic kappa, the
    ordinal grading metric, is monitored (chance: 0); balanced accuracy is logged (chance: 1/4)."""
    out = tmp_path / "run"
    result = run("fundus", "classify", out, "data.num_samples=4000", "data.num_val_samples=48", "train.max_steps=250",
                 "train.batch_size=16", "train.lr=2e-3", "train.val_every=50")  # fmt: skip
    meta = check_run(result, out, "fundus", "classify")
    assert meta["class_names"] == ["grade0", "grade1", "grade2", "grade3"] and meta["multi_label"] is False
    assert meta["contract"]["preprocess"] == {"preset": "default"}
    assert result["monitor"] == "val_quadratic_kappa"
    assert result["best_value"] > 0.45, result["metrics"]  # chance: 0
    assert meta["metrics"]["balanced_accuracy"] > 0.25 + 0.1, meta["metrics"]  # chance: 1/4


# ------------------------------------------------------------------------------------------------
# starting points
# ------------------------------------------------------------------------------------------------
def pretrained_mae(path: Path, *, in_chans: int = 3, spatial_dims: int = 2, patch: int = 16) -> MaskedAutoencoder:
    torch.manual_seed(7)
    mae = MaskedAutoencoder(spatial_dims=spatial_dims, in_chans=in_chans, patch_size=patch, **TINY_MAE)
    save_checkpoint(path, mae, contract={"domain": "fundus", "spatial_dims": spatial_dims}, step=123)
    return mae


def test_init_from_pretraining_checkpoint_and_linear_probe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mae = pretrained_mae(tmp_path / "pre" / "model")
    out = tmp_path / "run"
    # no model size overrides: the architecture comes from the checkpoint (config says preset base)
    over = [*QUIET, "data.input_size=64", f"out_dir={out}", f"init={tmp_path / 'pre'}", "train.mode=linear",
            "data.num_samples=32", "data.num_val_samples=8", "train.max_steps=6", "train.batch_size=8", "train.lr=5e-2",
            "train.val_every=3"]  # fmt: skip
    result = finetune(load_finetune_config(config("fundus", "classify"), over))
    printed = capsys.readouterr().out
    assert "architecture from the init checkpoint" in printed and "embed_dim=32" in printed
    model, meta = load_checkpoint(out / "model")
    assert meta["encoder"]["embed_dim"] == 32 and meta["encoder"]["depth"] == 2
    init = meta["init"]
    assert init["kind"] == "unimae" and init["step"] == 123 and init["model_class"] == "MaskedAutoencoder"
    assert init["loaded"] == len(model.encoder.state_dict()) and init["missing"] == []
    # linear probe: the encoder is exactly the pretrained one after training, the head has moved
    pre = {k[len("encoder."):]: v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, pre[k]), k
    assert model.head.fc.weight.abs().max() > 1e-3  # initialised with std 2e-5
    assert result["step"] == 6
    # the optimizer only holds the head
    state = json.loads((out / "checkpoints" / "step_0000006.state.json").read_text())
    n_head = sum(1 for k, _ in model.named_parameters() if not k.startswith("encoder."))
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == n_head


def test_full_fine_tune_starts_from_the_encoder_and_moves_it(tmp_path: Path) -> None:
    mae = pretrained_mae(tmp_path / "pre" / "model", in_chans=1)
    init = resolve_init(tmp_path / "pre" / "model.json")
    assert init.kind == "unimae"
    plugin = get_domain("xray")
    model, _ = build_task_model("segment", {"preset": "base", "feature_size": 8}, plugin, num_classes=3,
                                multi_label=False, data_channels=None, data_chans=1,
                                arch={k: v for k, v in mae.config.items() if k in ("spatial_dims", "in_chans", "patch_size", "embed_dim", "depth", "num_heads")})  # fmt: skip
    record = load_init(model, init, task="segment")
    assert record["kind"] == "unimae" and not record["missing"]
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, mae.state_dict()[f"encoder.{k}"]), k
    out = tmp_path / "run"
    finetune(load_finetune_config(config("xray", "segment"), [*QUIET, "data.input_size=64", f"out_dir={out}",
             f"init={tmp_path / 'pre' / 'model'}", "data.num_samples=16", "data.num_val_samples=4", "train.max_steps=3",
             "train.batch_size=4", "train.lr=1e-2", "model.feature_size=8"]))  # fmt: skip
    tuned, meta = load_checkpoint(out / "model")
    assert meta["init"]["kind"] == "unimae"
    # layer-wise lr decay 0.55 (the X-ray recipe): embedding 0.55^3, block i 0.55^(2-i), decoder and head 1
    state = json.loads((out / "checkpoints" / "step_0000003.state.json").read_text())
    scales = {g["layer_id"]: g["lr_scale"] for g in state["optimizer"]["param_groups"]}
    assert scales == pytest.approx({0: 0.55**3, 1: 0.55**2, 2: 0.55, 3: 1.0})
    moved = [k for k, v in tuned.encoder.state_dict().items() if not torch.equal(v, mae.state_dict()[f"encoder.{k}"])]
    assert moved  # full mode trains the encoder


def test_init_none_and_foreign_timm_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import timm

    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0
    )
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    out = tmp_path / "run"
    base = [*QUIET, *ENCODER, "data.input_size=64", "data.num_samples=16", "data.num_val_samples=4",
            "train.max_steps=2", "train.batch_size=8"]  # fmt: skip
    result = finetune(load_finetune_config(config("xray", "classify"), [*base, f"out_dir={out}", f"init={weights}"]))
    assert "imported timm weights from vit_tiny.safetensors" in capsys.readouterr().out
    init = result["init"]
    assert init["kind"] == "foreign" and init["layout"] == "timm"
    assert "encoder.blocks.0.attn.qkv.weight" in init["report"]["loaded"]
    model, meta = load_checkpoint(out / "best")
    assert meta["init"]["layout"] == "timm"

    scratch = finetune(load_finetune_config(config("xray", "classify"), [*base, f"out_dir={tmp_path / 'scratch'}", "init=none"]))
    assert scratch["init"]["kind"] == "none"

    # a pickle needs init_allow_pickle=true (and then loads with weights_only=True)
    pth = tmp_path / "vit_tiny.pth"
    torch.save({"model": vit.state_dict()}, pth)
    code, _, err = run_cli(["finetune", "--config", config("xray", "classify"), *base, f"out_dir={tmp_path / 'p'}",
                            f"init={pth}"], capsys)  # fmt: skip
    assert_one_line_error(code, err, "vit_tiny.pth", "init_allow_pickle=true")
    code, out_text, err = run_cli(["finetune", "--config", config("xray", "classify"), *base, f"out_dir={tmp_path / 'p'}",
                                   f"init={pth}", "init_allow_pickle=true"], capsys)  # fmt: skip
    assert code == 0, err
    assert "fine-tuned xray classify for 2 steps" in out_text


# ------------------------------------------------------------------------------------------------
# local data: class folders, class weights, masks, missing labels
# ------------------------------------------------------------------------------------------------
def write_pngs(folder: Path, n: int, value: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.clip(rng.normal(value, 20, size=(48, 40)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:02d}.png")


def test_class_weights_auto_from_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unimae.domains.datasets import LocalDataset

    # single-label classes: n / (K * n_c), exact from the listing (no file is read)
    listed = LocalDataset(get_domain("fundus"), [tmp_path / f"{i}.png" for i in range(8)], labels=[0] * 6 + [1] * 2,
                          class_names=("grade0", "grade1"))  # fmt: skip
    w, how = class_weights(listed, "classify", 2)
    assert torch.allclose(w, torch.tensor([8 / (2 * 6), 8 / (2 * 2)])) and "all 8 training labels" in how

    # X-ray class folders are one class per image (softmax): inverse class frequency
    data = tmp_path / "cxr"
    write_pngs(data / "normal", 6, 80, 0)
    write_pngs(data / "pneumonia", 2, 170, 1)
    plugin = get_domain("xray")
    single = plugin.train_dataset(data, split="train", input_size=32, task="classify")
    assert not single.samples.multi_label
    w, how = class_weights(single, "classify", 2)
    assert torch.allclose(w, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))
    # read as findings when asked (data.multi_label=true): BCE pos_weight = negatives / positives
    ds = plugin.train_dataset(data, split="train", input_size=32, task="classify", multi_label=True)
    w, how = class_weights(ds, "classify", 2, multi_label=True)
    assert torch.allclose(w, torch.tensor([2 / 6, 6 / 2])) and "pos_weight" in how

    out = tmp_path / "run"
    code, text, err = run_cli(["finetune", "--config", config("xray", "classify"), *QUIET, *ENCODER,
                               "data.input_size=32", f"data.train={data}", f"data.val={data}", "data.multi_label=true",
                               "train.class_weights=auto", "train.max_steps=2", "train.batch_size=2",
                               f"out_dir={out}"], capsys)  # fmt: skip
    assert code == 0, err
    assert "class weights (BCE pos_weight = negatives / positives over 8 training labels): normal 0.333, pneumonia 3" in text
    meta = read_checkpoint_meta(out / "best")
    assert meta["class_names"] == ["normal", "pneumonia"]

    # synthetic findings: the weights come from the labels of the first items read
    syn = plugin.train_dataset(None, split="train", input_size=32, num_samples=40, task="classify")
    hot = torch.stack([syn.samples[i].label for i in range(40)])
    w, how = class_weights(syn, "classify", 3, multi_label=True, limit=40)
    expected = ((40 - hot.sum(0)) / hot.sum(0).clamp(min=1)).clamp(0.01, 100)
    assert torch.allclose(w, expected.float()) and "over 40 training labels" in how


def test_local_segmentation_folder_with_holdout(tmp_path: Path) -> None:
    """An images/ + masks/ folder of PNGs: classes read from the masks, validation held out."""
    plugin = get_domain("fundus")
    syn = plugin.synthetic(10, seed=3, size=64, task="segment")
    for i in range(10):
        s = syn[i]
        rgb = (s.image * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor([0.485, 0.456, 0.406])[:, None, None])
        (tmp_path / "drive" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "drive" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray((rgb.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()).save(tmp_path / "drive" / "images" / f"{i:02d}.png")
        Image.fromarray((s.mask.numpy() * 255).astype(np.uint8)).save(tmp_path / "drive" / "masks" / f"{i:02d}_mask.png")
    out = tmp_path / "run"
    result = run("fundus", "segment", out, f"data.train={tmp_path / 'drive'}", "data.val_fraction=0.3",
                 "data.input_size=48", "train.max_steps=3", "train.batch_size=2", "train.val_every=3")  # fmt: skip
    meta = read_checkpoint_meta(out / "best")
    assert meta["class_names"] == ["background", "vessel"] and meta["contract"]["input_size"] == [48, 48]
    # auto class weights of a segmentation: inverse pixel frequency inside the field of view
    ds = get_domain("fundus").train_dataset(tmp_path / "drive", split="train", input_size=48, task="segment")
    w, how = class_weights(ds, "segment", 2, limit=3)
    assert w[1] > 2 * w[0] and "pixel frequencies of 3 training masks" in how
    assert result["metrics"]["mean_dice"] >= 0.0 and result["best_step"] == 3


def test_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = [*QUIET, *ENCODER, "data.input_size=32", "train.max_steps=2", "train.batch_size=2", f"out_dir={tmp_path / 'o'}"]
    code, _, err = run_cli(["finetune", "--config", config("xray", "classify"), *base, f"init={tmp_path / 'nope.safetensors'}"], capsys)
    assert_one_line_error(code, err, "nope.safetensors", "init checkpoint not found")

    code, _, err = run_cli(["finetune", "--config", config("ct", "segment"), *base, "task=classify"], capsys)
    assert_one_line_error(code, err, "ct domain has no classify task", "segment, anomaly")

    unlabelled = tmp_path / "plain"
    write_pngs(unlabelled, 4, 100, 2)
    code, _, err = run_cli(["finetune", "--config", config("xray", "classify"), *base, f"data.train={unlabelled}"], capsys)
    assert_one_line_error(code, err, "classification needs labels")

    code, _, err = run_cli(["finetune", "--config", config("xray", "segment"), *base, f"data.train={unlabelled}"], capsys)
    assert_one_line_error(code, err, "segmentation needs masks")

    code, _, err = run_cli(["finetune", "--config", config("xray", "classify"), *base, "train.mode=probe"], capsys)
    assert_one_line_error(code, err, "train.mode", "linear")

    code, _, err = run_cli(["finetune", "--config", config("fundus", "anomaly"), *base, "anomaly.fpr=1.5"], capsys)
    assert_one_line_error(code, err, "anomaly.fpr")

    code, _, err = run_cli(["finetune", "--config", "fundus/classfy"], capsys)
    assert_one_line_error(code, err, "not found", "configs/fundus/classify.yaml")
    assert not (tmp_path / "o" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# engine features, the loss and the configs
# ------------------------------------------------------------------------------------------------
def test_resume_restores_the_best_checkpoint_state(tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["data.num_samples=64", "data.num_val_samples=16", "train.batch_size=8", "train.lr=2e-3",
             "train.val_every=2", "train.save_every=2"]  # fmt: skip
    first = run("multispectral", "classify", out, *extra, "train.max_steps=4")
    second = run("multispectral", "classify", out, *extra, "train.max_steps=6", "resume=true")
    assert second["step"] == 6
    assert [r["step"] for r in read_metrics(out / "metrics.csv") if r["val_balanced_accuracy"] is not None] == [2, 4, 6]
    assert second["best_value"] >= first["best_value"]
    if second["best_step"] <= 4:  # no improvement after resuming: the restored best is kept
        assert second["best_step"] == first["best_step"] and second["best_value"] == first["best_value"]
    assert read_checkpoint_meta(out / "best")["best_step"] == second["best_step"]


def test_masked_dice_ce_equals_monai_and_ignores_invalid_pixels() -> None:
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    ours = MaskedDiceCELoss(3)(logits, target)
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target[:, None])
    assert ours["loss"].item() == pytest.approx(ref.item(), rel=1e-5)

    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[:, :, :3] = False
    loss = MaskedDiceCELoss(3, include_background=False)
    a = loss(logits, target, valid)["loss"]
    changed = logits.clone()
    changed[:, :, :, :3] = torch.randn(2, 3, 8, 3, generator=g) * 10
    other = target.clone()
    other[:, :, :3] = (other[:, :, :3] + 1) % 3
    b = loss(changed, other, valid)["loss"]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    with pytest.raises(InputError, match="mask values"):
        loss(logits, target + 3, valid)


def test_configs_follow_the_finetune_recipes(capsys: pytest.CaptureFixture) -> None:
    found = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").glob("*/*.yaml")
                   if p.stem != "pretrain")  # fmt: skip
    assert found == sorted(f"{d}/{t}.yaml" for d, tasks in CONFIGS.items() for t in tasks)
    for domain, tasks in CONFIGS.items():
        recipe = get_domain(domain).recipes["finetune"]
        for task in tasks:
            cfg = load_finetune_config(config(domain, task))
            assert cfg["domain"] == domain and cfg["task"] == task and cfg["init"] == "none"
            size, patch = cfg["data"]["input_size"], cfg["model"]["patch_size"]
            for s, p in zip(size if isinstance(size, list) else [size], patch if isinstance(patch, list) else [patch]):
                assert s % p == 0, f"{domain}/{task}: input_size {size} is not a multiple of patch_size {patch}"
            if task != "anomaly":
                # the recipe's layer decay applies to a pretrained init only; from scratch every layer gets the lr
                decay = cfg["train"]["layer_decay"]
                assert decay == "auto" or decay == pytest.approx(recipe["layer_decay"])
                pretrained, scratch = InitSource("unimae", Path("x")), InitSource("none")
                plugin = get_domain(domain)
                assert resolve_layer_decay(decay, plugin, task, pretrained) == pytest.approx(recipe["layer_decay"])
                assert resolve_layer_decay("auto", plugin, task, scratch) is None
            else:
                assert cfg["anomaly"]["fpr"] == 0.05 and cfg["data"]["lesion_prob"] == 0.0
            code, text, err = run_cli(["finetune", "--config", f"{domain}/{task}", "--print-config", "init=none",
                                       "train.mode=linear"], capsys)  # fmt: skip
            assert code == 0, err
            assert f"task: {task}" in text and "mode: linear" in text
    xray_decay = load_finetune_config(config("xray", "classify"))["train"]["layer_decay"]
    assert resolve_layer_decay(xray_decay, get_domain("xray"), "classify", InitSource("unimae", Path("x"))) == pytest.approx(0.55)
    assert resolve_layer_decay(0.8, get_domain("xray"), "classify", InitSource("none")) == pytest.approx(0.8)


def test_ddp_finetune_two_processes(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "unimae.apps.cli", "finetune", "--config", str(config("xray", "segment")),
           *tiny("xray", "segment", out), "data.num_samples=16", "data.num_val_samples=5", "train.max_steps=2",
           "train.batch_size=2", "train.val_every=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("fine-tuned xray segment for 2 steps") == 1, proc.stdout
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2] and all(r["val_mean_dice"] is not None for r in rows)
    meta = read_checkpoint_meta(out / "best")
    # the 5 validation cases were split over the ranks and gathered: the metric covers all of them once
    assert meta["best_value"] == pytest.approx(max(r["val_mean_dice"] for r in rows))
    load_checkpoint(out / "best")


def test_finetune_evaluate_predict_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code, text, err = run_cli(["finetune", "--config", "xray/segment", *tiny("xray", "segment", out),
                               "data.num_samples=64", "data.num_val_samples=8", "train.max_steps=20",
                               "train.batch_size=8", "train.lr=2e-3", "train.val_every=10"], capsys)  # fmt: skip
    assert code == 0, err
    assert "best val_mean_dice" in text
    ev = tmp_path / "eval"
    code, text, err = run_cli(["evaluate", "--checkpoint", out / "best", "--data", "synthetic", "--num-samples", "4",
                               "--out", ev, "--device", "cpu", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["task"] == "segment" and metrics["metrics"]["mean_dice"] > 0.3
    # a radiograph as a user has it: an 8-bit PNG at its own size
    plugin = get_domain("xray")
    s = plugin.synthetic(1, seed=5, size=(80, 72), task="segment")[0]
    png = tmp_path / "in" / "chest.png"
    png.parent.mkdir()
    Image.fromarray(((s.image[0] * 0.25 + 0.5).clamp(0, 1) * 255).byte().numpy()).save(png)
    pred = tmp_path / "pred"
    code, text, err = run_cli(["predict", "--checkpoint", out / "best", "--input", png, "--output", pred,
                               "--device", "cpu", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    written = sorted(p.name for p in pred.rglob("*.png"))
    assert written, list(pred.rglob("*"))
    label_png = next(p for p in pred.rglob("*.png") if "overlay" not in p.name)
    assert Image.open(label_png).size == (72, 80)


def test_the_carved_out_validation_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A source without split information: the validation it carves out is said once, not once per dataset."""
    data = tmp_path / "cxr"
    write_pngs(data / "normal", 8, 80, 0)
    write_pngs(data / "pneumonia", 8, 170, 1)
    code, text, err = run_cli(["finetune", "--config", config("xray", "classify"), *QUIET, *ENCODER,
                               "data.input_size=32", f"data.train={data}", "data.val_fraction=0.25",
                               "train.epochs=null", "train.max_steps=1", "train.batch_size=2",
                               f"out_dir={tmp_path / 'run'}"], capsys)  # fmt: skip
    assert code == 0, err
    assert (text + err).count("carved out") == 1, text + err
