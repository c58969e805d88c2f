"""Test-time augmentation (:mod:`unimae.core.tta`): the views and their inverses, the averaging, and the path
from a config's ``data.tta`` (or the domain's symmetries) through the checkpoint to ``predict`` and ``evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unimae.apps.finetune import finetune, load_finetune_config
from unimae.apps.predict import Predictor, load_predictor, predict_paths
from unimae.core.errors import InputError
from unimae.core.inference import make_contract, task_metadata
from unimae.core.models import MAEClassifier, MAESegmenter
from unimae.core.tasks import get_task
from unimae.core.tta import TTA_MODES, averaged, check_tta, views
from unimae.domains import get_domain

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, depth=1, num_heads=2)
SIZE = 32


# ------------------------------------------------------------------------------------------------
# the views
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "dims", "count"), [("none", 2, 1), ("mirror", 2, 4), ("mirror", 3, 8), ("dihedral", 2, 8)])
def test_each_view_is_undone_by_its_inverse_and_the_views_differ(mode: str, dims: int, count: int) -> None:
    x = torch.arange(2 * 5**dims, dtype=torch.float32).reshape(2, *([5] * dims))
    vs = views(mode, dims)
    assert len(vs) == count
    assert torch.equal(vs[0][0](x, dims), x)  # the identity first
    seen = set()
    for fwd, inv in vs:
        y = fwd(x, dims)
        assert y.shape == x.shape
        assert torch.equal(inv(y, dims), x)
        seen.add(tuple(y.flatten().tolist()))
    assert len(seen) == count  # no view repeated


def test_modes_are_checked() -> None:
    assert check_tta(None, 2) == "none" and check_tta("Mirror", 3) == "mirror"
    assert set(TTA_MODES) == {"none", "mirror", "dihedral"}
    with pytest.raises(InputError, match="tta is 'flip'; expected one of none, mirror, dihedral"):
        check_tta("flip", 2)
    with pytest.raises(InputError, match="'dihedral'.*needs 2D images"):
        check_tta("dihedral", 3)


def test_averaging_maps_per_pixel_outputs_back_and_symmetrises_per_image_ones() -> None:
    x = torch.rand(1, 6, 6)
    valid = torch.ones(6, 6, dtype=torch.bool)
    for mode in TTA_MODES:
        # an output on the image grid that is the image itself: every view mapped back gives the image
        torch.testing.assert_close(averaged(lambda a, v: a, x, valid, mode, spatial_dims=2, per_pixel=True), x)
    corner = lambda a, v: a[:, 0, 0]  # noqa: E731  (a per-image output that is not symmetric)
    corners = torch.stack([x[:, 0, 0], x[:, 0, -1], x[:, -1, 0], x[:, -1, -1]]).mean(0)
    torch.testing.assert_close(averaged(corner, x, valid, "mirror", spatial_dims=2, per_pixel=False), corners)
    torch.testing.assert_close(averaged(corner, x, valid, "dihedral", spatial_dims=2, per_pixel=False), corners)
    torch.testing.assert_close(averaged(corner, x, valid, "none", spatial_dims=2, per_pixel=False), x[:, 0, 0])
    # the validity travels with the image
    v = torch.zeros(6, 6, dtype=torch.bool)
    v[0, 0] = True
    seen = averaged(lambda a, m: m[:1, :1].float().reshape(1), x, v, "mirror", spatial_dims=2, per_pixel=False)
    assert float(seen) == pytest.approx(0.25)  # valid at the top-left corner in the identity view only


# ------------------------------------------------------------------------------------------------
# the tasks and the predictor
# ------------------------------------------------------------------------------------------------
def _predictor(task: str, tta: str | None, override: str | None = None) -> Predictor:
    torch.manual_seed(0)
    if task == "classify":
        names = ["a", "b", "c"]
        model = MAEClassifier(3, in_chans=3, patch_size=8, **TINY).eval()
    else:
        names = ["background", "vessel"]
        model = MAESegmenter(2, in_chans=3, patch_size=8, feature_size=8, **TINY).eval()
    contract = make_contract(domain="fundus", spatial_dims=2, channels=[{"name": c} for c in "RGB"], patch_size=8,
                             input_size=SIZE, normalization=None)  # fmt: skip
    if tta is not None:
        contract["tta"] = tta
    contract["segment_mode"] = "sliding"
    meta = task_metadata(task=task, domain="fundus", class_names=names, contract=contract)
    return Predictor(model, {**meta, "model_class": type(model).__name__}, tta=override)


def _sample() -> object:
    return get_domain("fundus").synthetic(1, seed=3, size=SIZE, task="segment")[0]


def test_classification_averages_the_symmetries_the_checkpoint_records() -> None:
    sample = _sample()
    plain, mirrored = _predictor("classify", None), _predictor("classify", "mirror")
    assert plain.tta == "none" and mirrored.tta == "mirror"
    view = plain._eval_view(plain.load(sample)[1])
    task = get_task("classify")
    manual = torch.stack([
        task.infer(plain.model, view.image.flip(axes), view.valid.flip(axes)) if axes else task.infer(plain.model, view.image, view.valid)
        for axes in ((), (-1,), (-2,), (-2, -1))
    ]).mean(0)  # fmt: skip
    got = mirrored.predict(sample)
    torch.testing.assert_close(torch.tensor([got.probabilities[c] for c in "abc"]), manual, rtol=1e-5, atol=1e-6)
    one = plain.predict(sample)
    assert max(abs(got.probabilities[c] - one.probabilities[c]) for c in "abc") > 1e-6  # an untrained model is not symmetric
    assert got.report()["tta"] == "mirror" and one.report()["tta"] == "none"
    # an override wins over the checkpoint
    assert _predictor("classify", "mirror", override="none").predict(sample).probabilities == one.probabilities


def test_segmentation_maps_each_view_back_before_averaging() -> None:
    sample = _sample()
    pred = _predictor("segment", "dihedral")
    model_space = pred.load(sample)[1]
    task = get_task("segment")
    run = dict(input_size=[SIZE, SIZE], direct=None, overlap=0.25, sw_batch_size=4)
    manual = torch.stack([
        task.infer(pred.model, model_space.image.rot90(k, (-2, -1)), model_space.valid.rot90(k, (-2, -1)), **run).rot90(-k, (-2, -1))
        for k in range(4)
    ] + [
        task.infer(pred.model, model_space.image.flip(-1).rot90(k, (-2, -1)), model_space.valid.flip(-1).rot90(k, (-2, -1)),
                   **run).rot90(-k, (-2, -1)).flip(-1)
        for k in range(4)
    ]).mean(0)  # fmt: skip
    got = task.infer(pred.model, model_space.image, model_space.valid, tta="dihedral", **run)
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-6)
    label_map = pred.predict(sample).label_map
    assert label_map.shape == tuple(sample.spatial_shape)


def test_anomaly_checkpoints_take_no_tta() -> None:
    from unimae.core.mae import MaskedAutoencoder

    model = MaskedAutoencoder(in_chans=3, patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2, **TINY)
    contract = make_contract(domain="fundus", spatial_dims=2, channels=[{"name": c} for c in "RGB"], patch_size=8,
                             input_size=SIZE, normalization=None)  # fmt: skip
    meta = {**task_metadata(task="anomaly", domain="fundus", class_names=[], contract=contract), "model_class": "MaskedAutoencoder"}
    assert Predictor(model, meta).tta == "none"
    with pytest.raises(InputError, match="applies to classification and segmentation, not to anomaly"):
        Predictor(model, meta, tta="mirror")


# ------------------------------------------------------------------------------------------------
# from the config to the checkpoint, and the CLI's override
# ------------------------------------------------------------------------------------------------
QUIET = ["train.precision=fp32", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
         "train.num_workers=0", "train.max_steps=1", "train.epochs=null", "train.batch_size=2", "train.val_every=1",
         "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.num_samples=2", "data.num_val_samples=2"]  # fmt: skip


def _finetune(domain: str, task: str, out: Path, *extra: str) -> dict:
    size = 32 if domain != "fundus" else 64
    over = [*QUIET, f"data.input_size={size}", f"out_dir={out}", *(["model.feature_size=8"] if task == "segment" else []), *extra]
    return finetune(load_finetune_config(ROOT / "configs" / domain / f"{task}.yaml", over))


def test_the_checkpoint_records_the_domains_symmetries_or_the_configs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _finetune("fundus", "segment", tmp_path / "seg")
    assert json.loads((tmp_path / "seg" / "best.json").read_text())["contract"]["tta"] == "mirror"  # the fundus default
    _finetune("xray", "classify", tmp_path / "cls", "model.stem=patch")
    assert json.loads((tmp_path / "cls" / "best.json").read_text())["contract"]["tta"] == "none"  # a chest film has a left
    _finetune("xray", "classify", tmp_path / "cls2", "model.stem=patch", "data.tta=mirror")
    assert load_predictor(tmp_path / "cls2" / "best", device="cpu", precision="fp32").tta == "mirror"
    assert load_predictor(tmp_path / "cls2" / "best", device="cpu", precision="fp32", tta="none").tta == "none"

    # predict's override reaches the reports
    img = tmp_path / "film.png"
    from PIL import Image

    Image.fromarray((torch.rand(48, 48) * 255).byte().numpy()).save(img)
    predict_paths(tmp_path / "cls2" / "best", img, tmp_path / "pred", device="cpu", precision="fp32", progress=False, tta="none")
    reports = list((tmp_path / "pred").glob("*.json"))
    assert reports and all(json.loads(r.read_text())["tta"] == "none" for r in reports)


@pytest.mark.parametrize(("domain", "task", "value", "needle"), [
    ("fundus", "segment", "flip", "data.tta is 'flip'; expected one of none, mirror, dihedral"),
    ("ct", "segment", "dihedral", "needs 2D images"),
    ("fundus", "anomaly", "mirror", "not to anomaly"),
])  # fmt: skip
def test_a_bad_tta_stops_before_training(domain: str, task: str, value: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=needle.replace("(", r"\(")):
        _finetune(domain, task, tmp_path / "o", f"data.tta={value}")
    assert not (tmp_path / "o" / "metrics.csv").exists()
