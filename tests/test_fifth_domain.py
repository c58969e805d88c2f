"""A fifth domain in one file: registering a plugin is all it takes to train, evaluate, predict and serve it.

The toy domain below is single-channel 2D synthetic-aperture radar ("sar"): backscatter intensity in a
``.npz`` file of its own (``intensity`` (H, W), ``pixel_m``), bright ships on dark, speckled sea. It has its
own synthetic generator, reader, preprocessing (intensity -> dB -> standardised), augmentation, writer
(results back into a ``.npz`` on the source grid) and sniffer, and nothing outside this file knows about
it: the test registers it with :func:`unimae.domains.register_domain` and runs ``finetune`` ->
``evaluate`` -> ``predict`` -> the app's ``/sar_<task>`` endpoint (the Gradio app built in-process, the
endpoint's function called as the server would) for each of its tasks, with tiny models and a few steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path
from unimae.domains import domain_names, get_domain, guess_domain_name, register_domain, unregister_domain
from unimae.domains.base import DomainPlugin, Sample, channel_list

SIZE = 32
DB_MEAN, DB_STD = -12.0, 6.0  # the model-space normalisation of backscatter in dB


# ------------------------------------------------------------------------------------------------
# the toy domain
# ------------------------------------------------------------------------------------------------
def sar_scene(seed: int, index: int, size: int, ship_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """``(intensity (H, W) float32, ship mask (H, W) int64)``: gamma speckle over a sea of -18 dB, and with
    probability ``ship_prob`` one to three bright ships (+8 dB) a few pixels long."""
    rng = np.random.default_rng([int(seed), int(index)])
    sea = 10 ** (-18.0 / 10.0)
    mean = np.full((size, size), sea, dtype=np.float64)
    mask = np.zeros((size, size), dtype=np.int64)
    if rng.random() < ship_prob:
        for _ in range(int(rng.integers(1, 4))):
            r, c = (int(v) for v in rng.integers(2, size - 6, 2))
            h, w = (2, 5) if rng.random() < 0.5 else (5, 2)
            mean[r : r + h, c : c + w] = 10 ** (8.0 / 10.0)
            mask[r : r + h, c : c + w] = 1
    speckle = rng.gamma(4.0, 1.0 / 4.0, (size, size))  # 4-look intensity speckle
    return (mean * speckle).astype(np.float32), mask


def to_model_space(intensity: torch.Tensor) -> torch.Tensor:
    db = 10.0 * torch.log10(intensity.float().clamp_min(1e-6))
    return (db - DB_MEAN) / DB_STD


class SyntheticSAR(Dataset):
    """``n`` scenes in model space; sample ``i`` depends only on ``(seed, i)``."""

    def __init__(self, n: int, *, seed: int, size: int, task: str, ship_prob: float) -> None:
        self.n, self.seed, self.size, self.task, self.ship_prob = n, seed, size, task, ship_prob

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        intensity, ships = sar_scene(self.seed, i, self.size, self.ship_prob)
        image = to_model_space(torch.from_numpy(intensity))[None]
        meta = _meta(None, (self.size, self.size), 10.0)
        meta["normalization"] = {"kind": "db", "mean": DB_MEAN, "std": DB_STD}
        has_ship = torch.tensor(int(ships.any()), dtype=torch.long)
        mask = torch.from_numpy(ships) if self.task in ("segment", "anomaly") else None
        return Sample(image=image, meta=meta, label=has_ship if self.task in ("classify", "anomaly") else None,
                      mask=mask)


def _meta(path: Any, shape: tuple[int, int], pixel_m: float) -> dict[str, Any]:
    return {
        "spatial_dims": 2, "channels": channel_list(["VV"]), "spacing": (pixel_m, pixel_m), "spacing_unit": "m",
        "affine": None, "crs": None, "transform": None, "nodata": None,
        "valid": torch.ones(shape, dtype=torch.bool), "modality": "SAR", "path": None if path is None else str(path),
        "source_shape": shape,
    }  # fmt: skip


class CentreCrop:
    """A fixed-size centre crop / zero pad (training and evaluation alike: the toy needs no augmentation)."""

    def __init__(self, input_size: int | Sequence[int]) -> None:
        self.size = int(input_size if isinstance(input_size, int) else input_size[0])

    def __call__(self, sample: Sample, seed: int) -> Sample:
        h, w = sample.spatial_shape
        s = self.size
        image = torch.zeros((1, s, s), dtype=sample.image.dtype)
        valid = torch.zeros((s, s), dtype=torch.bool)
        mask = None if sample.mask is None else torch.zeros((s, s), dtype=torch.long)
        r0, c0 = (h - s) // 2, (w - s) // 2
        ys, xs = max(0, r0), max(0, c0)
        ye, xe = min(h, r0 + s), min(w, c0 + s)
        image[:, ys - r0 : ye - r0, xs - c0 : xe - c0] = sample.image[:, ys:ye, xs:xe]
        valid[ys - r0 : ye - r0, xs - c0 : xe - c0] = sample.valid[ys:ye, xs:xe]
        if mask is not None:
            mask[ys - r0 : ye - r0, xs - c0 : xe - c0] = sample.mask[ys:ye, xs:xe]
        meta = {**sample.meta, "valid": valid, "crop": (r0, c0, s, s)}
        return sample.replace(image=image, mask=mask, meta=meta)


class SARPlugin(DomainPlugin):
    """Single-channel synthetic-aperture radar backscatter (``.npz``: ``intensity``, ``pixel_m``)."""

    name: ClassVar[str] = "sar"
    spatial_dims: ClassVar[int] = 2
    modality: ClassVar[str] = "SAR"
    extensions: ClassVar[tuple[str, ...]] = (".npz",)
    title: ClassVar[str] = "SAR"
    description: ClassVar[str] = "Radar backscatter (`.npz`). Results come back on the scene's own grid."
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    class_names: ClassVar[tuple[str, ...]] = ("sea", "ship")
    seg_class_names: ClassVar[tuple[str, ...]] = ("sea", "ship")
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        "pretrain": {"patch_size": 8, "input_size": SIZE, "mask_ratio": 0.75},
        "finetune": {"patch_size": 8, "input_size": SIZE},
    }
    spacing_unit: ClassVar[str] = "m"
    result_suffix: ClassVar[str] = ".npz"

    def sniff(self, path: str | Path) -> float:
        """Sure of a ``.npz`` holding an ``intensity`` array; 0 for anything else."""
        p = Path(path)
        if not p.is_file() or p.suffix.lower() != ".npz":
            return 0.0
        try:
            with np.load(p) as z:
                return 1.0 if "intensity" in z.files else 0.0
        except (OSError, ValueError) as err:
            raise InputError("not a readable .npz file", p) from err

    def read(self, path: str | Path) -> Sample:
        p = Path(path)
        if not p.is_file():
            raise InputError("file not found", p)
        try:
            with np.load(p) as z:
                intensity = np.asarray(z["intensity"], dtype=np.float32)
                pixel_m = float(z["pixel_m"]) if "pixel_m" in z.files else 1.0
        except (OSError, ValueError, KeyError) as err:
            raise InputError("not a SAR scene (.npz with an 'intensity' array)", p) from err
        if intensity.ndim != 2:
            raise InputError(f"intensity must be (H, W), got shape {intensity.shape}", p)
        meta = _meta(p, tuple(int(s) for s in intensity.shape), pixel_m)
        meta["normalization"] = {"kind": "scale", "divisor": 1.0}
        return Sample(image=torch.from_numpy(intensity)[None], meta=meta)

    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        with np.load(path) as z:
            mask = torch.from_numpy(np.asarray(z["result"]).astype(np.int64))
        if like is not None and tuple(mask.shape) != like.spatial_shape:
            raise InputError(f"mask is {tuple(mask.shape)} but the image is {like.spatial_shape}", path)
        return mask

    def preprocess(self, sample: Sample) -> Sample:
        if sample.meta.get("normalization", {}).get("kind") == "db":
            return sample
        meta = {**sample.meta, "normalization": {"kind": "db", "mean": DB_MEAN, "std": DB_STD}}
        return sample.replace(image=to_model_space(sample.image), meta=meta)

    def augment(self, *, train: bool, input_size: int | Sequence[int] = SIZE) -> CentreCrop:
        return CentreCrop(input_size)

    def synthetic(self, n: int, *, seed: int = 0, size: int | Sequence[int] | None = None, task: str = "segment",
                  lesion_prob: float | None = None) -> SyntheticSAR:  # fmt: skip
        s = SIZE if size is None else int(size if isinstance(size, int) else size[0])
        return SyntheticSAR(n, seed=seed, size=s, task=task, ship_prob=0.5 if lesion_prob is None else lesion_prob)

    def write(self, array: Any, meta: dict[str, Any], path: str | Path, *, kind: str = "auto",
              nodata: float | None = None, class_names: Sequence[str] | None = None) -> Path:  # fmt: skip
        """The result as ``result`` in a ``.npz`` beside the scene's ``pixel_m``: on the source grid, checked."""
        arr = np.asarray(array)
        if tuple(arr.shape) != tuple(meta["source_shape"]):
            arr = self.to_source_grid(arr, meta, kind=kind)
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, result=arr, kind=np.array(str(kind)), pixel_m=np.array(float(meta["spacing"][0])))
        return path

    def plot(self, sample: Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.imshow(sample.image[0].numpy(), cmap="gray")
        return fig


def write_scene(path: Path, seed: int, index: int, size: int = 40) -> tuple[Path, np.ndarray]:
    """A scene file of the toy format (bigger than the model's input, so the source grid is the scene's)."""
    intensity, ships = sar_scene(seed, index, size, 1.0)
    np.savez(path, intensity=intensity, pixel_m=np.array(10.0))
    return path, ships


# ------------------------------------------------------------------------------------------------
# the journey: register, finetune, evaluate, predict, serve
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sar():
    register_domain(SARPlugin)
    yield get_domain("sar")
    unregister_domain("sar")


def _config(task: str, out: Path) -> dict[str, Any]:
    model = {"preset": "micro", "depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    if task == "segment":
        model["feature_size"] = 8
    if task == "anomaly":
        model.update(decoder_dim=32, decoder_depth=1, decoder_heads=2)
    steps = 6
    return {
        "domain": "sar", "task": task, "init": "none", "out_dir": str(out), "seed": 0, "resume": False,
        "model": model,
        "data": {"input_size": SIZE, "num_samples": 64, "num_val_samples": 8 if task == "anomaly" else 4,
                 **({"val_lesion_prob": 0.5} if task == "anomaly" else {})},
        "train": {"max_steps": steps, "batch_size": 4, "lr": 2e-3, "warmup_steps": 1, "min_lr": 1e-4,
                  "weight_decay": 0.02, "val_every": steps, "save_every": steps, "log_every": steps,
                  "progress": False, "layer_decay": None, "precision": "fp32", "device": "cpu", "num_workers": 0,
                  "keep_last": 1},
        **({"anomaly": {"k": 4, "fpr": 0.05}} if task == "anomaly" else {}),
    }  # fmt: skip


def test_the_registry_knows_the_fifth_domain(sar, tmp_path):
    assert domain_names()[:4] == ["ct", "fundus", "xray", "multispectral"] and "sar" in domain_names()
    scene, _ = write_scene(tmp_path / "harbour.npz", seed=1, index=0)
    assert guess_domain_name(scene) == "sar"  # its own sniffer claims it; no built-in domain does
    from unimae.apps.app import endpoint_names

    assert {"/sar_classify", "/sar_segment", "/sar_anomaly"} <= set(endpoint_names())


@pytest.mark.parametrize("task", ["segment", "classify", "anomaly"])
def test_finetune_evaluate_predict_and_serve_a_fifth_domain(sar, task, tmp_path):
    torch.set_num_threads(1)
    from unimae.apps.app import build_app
    from unimae.apps.evaluate import evaluate
    from unimae.apps.finetune import finetune
    from unimae.apps.predict import load_predictor, predict_paths
    from unimae.apps.ui_models import ModelCatalog
    from unimae.apps.ui_panel import AppSettings

    # finetune on the domain's synthetic data
    result = finetune(_config(task, tmp_path / "run"))
    best = tmp_path / "run" / "best.json"
    meta = json.loads(best.read_text())
    assert best.is_file() and result["task"] == task
    assert meta["domain"] == "sar" and meta["contract"]["modality"] == "SAR"

    # evaluate on fresh synthetic scenes
    metrics = evaluate(best, "synthetic", tmp_path / "eval", device="cpu", precision="fp32", num_samples=6)
    assert (tmp_path / "eval" / "metrics.json").is_file() and metrics["domain"] == "sar"
    headline = {"segment": "mean_dice", "classify": "accuracy", "anomaly": "image_auroc"}[task]
    assert 0.0 <= metrics["metrics"][headline] <= 1.0
    assert metrics["counts"]["cases"] == 6

    # predict on a file of the domain's own format: the result comes back on the scene's grid, in its format
    scene, ships = write_scene(tmp_path / "scene.npz", seed=3, index=0)
    pred = load_predictor(best, device="cpu").predict(scene)
    assert pred.domain == "sar" and pred.meta["source_shape"] == ships.shape
    summary = predict_paths(best, scene, tmp_path / "pred", device="cpu", progress=False)
    assert summary.ok, summary.errors
    files = summary.outputs[str(scene)]
    assert Path(files["report"]).is_file()
    if task == "segment":
        with np.load(files["seg"]) as z:
            assert files["seg"].name == "scene_seg.npz" and z["result"].shape == ships.shape
            assert set(np.unique(z["result"])) <= {0, 1}
        assert set(pred.class_fractions) == {"sea", "ship"}
    elif task == "anomaly":
        with np.load(files["heatmap"]) as z:
            assert z["result"].shape == ships.shape and np.isfinite(z["result"]).all()
        assert pred.score is not None and math.isfinite(pred.score)
    else:
        assert set(pred.probabilities) == {"sea", "ship"}

    # the app: its tab and endpoint come from the registry; call the endpoint's function in-process
    demo = build_app(ModelCatalog({f"sar_{task}": best}), settings=AppSettings(device="cpu", precision="fp32"))
    try:
        fns = {getattr(f, "api_name", None): f for f in demo.fns.values()}
        endpoint = fns[f"sar_{task}"]
        image, summary_out, downloads, report, status, view = endpoint.fn(str(scene), f"demo/sar_{task}",
                                                                           progress=None)  # fmt: skip
        assert Path(image).is_file() and "scene.npz" in status and report["domain"] == "sar"
        assert view.kind == "image" and view.plugin is sar
        assert "40×40, spacing 10×10 m" in status  # the input line: the scene's grid, in its unit
        if task == "classify":
            assert set(summary_out) == {"sea", "ship"}
        else:
            assert any(str(f).endswith(".npz") for f in downloads)  # the plugin's writer, the plugin's suffix
        with pytest.raises(Exception, match="is not something the SAR tab reads|not a sar input"):
            endpoint.fn(str(tmp_path / "run" / "best.json"), f"demo/sar_{task}", progress=None)
    finally:
        demo.close()


def test_the_fifth_domain_leaves_with_its_registration(sar, tmp_path):
    scene, _ = write_scene(tmp_path / "x.npz", seed=0, index=0)
    unregister_domain("sar")
    try:
        assert "sar" not in domain_names()
        with pytest.raises(InputError, match="cannot guess the domain of a .npz file"):
            guess_domain_name(scene)
    finally:
        register_domain(SARPlugin)
