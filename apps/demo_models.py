"""The app's built-in demo models: one per domain x task.

Two kinds, both offline:

* **shipped** (trained on real, public data): ``domains/<domain>/demo/<task>.safetensors`` + ``<task>.json``
  inside the domain's own package, installed with it. The JSON is a task checkpoint's (what ``unimae finetune``
  writes) plus a ``model_card`` (:data:`MODEL_CARD_KEYS`: what it was trained on, the data and its licence, the
  held-out metric beside the from-scratch CNN baseline's, intended use, what it is not for, how to retrain it).
  They load at start with no build (:func:`shipped_models`). fp16 weights are upcast when loaded.
* **built** (trained on the project's own synthetic data) for every panel without a shipped model: on first use
  :func:`ensure_demo` fine-tunes small models with the same machinery as ``unimae finetune``
  (:func:`unimae.apps.finetune.finetune`, from scratch) and writes a ``model_card`` saying so
  (``trained_on: "synthetic"``). Example files in real formats (NIfTI, zipped DICOM, PNG, JPEG, DICOM, GeoTIFF) come
  from the synthetic generators. Everything lands in the user's cache folder::

    $UNIMAE_CACHE_DIR                      (if set), else
    $XDG_CACHE_HOME/unimae                 (if set), else
    ~/.cache/unimae
        demo-models-<hash>/                the hash covers the UniMAE version and the recipes it builds
            manifest.json                  written last: a folder without it is never used
            models/<domain>_<task>/best.{json,safetensors}   (+ metrics.csv, learning_curve.png)
        demo-examples-<hash>/              the example files (seconds to write)
            manifest.json
            <domain>/...

Each build happens in a temporary folder that is renamed into place only when complete, under a file
lock, so an interrupted or concurrent build never leaves a half-built cache in use. Later starts only
read ``manifest.json``. ``unimae demo`` builds without starting the app (``--force`` rebuilds); ``unimae app``
serves the shipped models at once and builds the others in a child process (:func:`start_background_build`).

Profiles: ``default`` (the app's models; the whole build at most 2 minutes on 2 CPU cores shared with another
busy process) and ``test`` (a handful of steps, for the test suite: real models, not good ones; the test
profile never uses shipped models unless asked).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path

__all__ = [
    "DEMO_TASKS",
    "DemoSpec",
    "DemoProfile",
    "PROFILES",
    "DemoBundle",
    "MODEL_CARD_KEYS",
    "SYNTHETIC_NOTICE",
    "check_model_card",
    "shipped_root",
    "shipped_models",
    "ensure_examples",
    "start_background_build",
    "cache_root",
    "demo_cache_dir",
    "demo_version",
    "load_demo",
    "build_demo",
    "ensure_demo",
    "add_demo_parser",
    "run_demo",
]

DEMO_FORMAT = 1
DEMO_REVISION = 4  # bump when training or scoring code changes what the same recipe builds (4: model cards; 2: anomaly maps score
# only the patches the MAE was trained to reconstruct, so the thresholds of an older build are stale; 3: CT
# examples on the models' 9 mm grid)
DEMO_TASKS: tuple[tuple[str, str], ...] = (
    ("ct", "segment"),
    ("ct", "anomaly"),
    ("fundus", "classify"),
    ("fundus", "segment"),
    ("fundus", "anomaly"),
    ("xray", "classify"),
    ("xray", "segment"),
    ("xray", "anomaly"),
    ("multispectral", "classify"),
    ("multispectral", "segment"),
    ("multispectral", "anomaly"),
)


#: the one line every panel with a synthetic-data model shows, before and after a run
SYNTHETIC_NOTICE = "demo model trained on synthetic images: its output on real images is not meaningful"
#: what a shipped model's ``model_card`` must say (``data`` a dict with name, source, licence, citation)
MODEL_CARD_KEYS = ("trained_on", "data", "metrics", "intended_use", "not_for", "retrain")
_CARD_DATA_KEYS = ("name", "source", "licence", "citation")
TRAINED_ON = ("real", "synthetic")


# ------------------------------------------------------------------------------------------------
# shipped models (real data), in the domain packages
# ------------------------------------------------------------------------------------------------
def check_model_card(card: Any, where: str | Path = "") -> dict[str, Any]:
    """The ``model_card`` of a demo checkpoint, checked: a dict with :data:`MODEL_CARD_KEYS`, ``trained_on`` one of
    ``"real"`` / ``"synthetic"`` and ``data`` naming its source and licence. Raises :class:`InputError` otherwise."""
    if not isinstance(card, Mapping):
        raise InputError("no model_card in the checkpoint JSON", where or None)
    missing = [k for k in MODEL_CARD_KEYS if k not in card]
    if missing:
        raise InputError(f"model_card lacks {', '.join(missing)}", where or None)
    if card["trained_on"] not in TRAINED_ON:
        raise InputError(f"model_card trained_on must be 'real' or 'synthetic', not {card['trained_on']!r}", where or None)
    data = card["data"]
    if not isinstance(data, Mapping) or any(k not in data for k in _CARD_DATA_KEYS):
        raise InputError(f"model_card data must be a dict with {', '.join(_CARD_DATA_KEYS)}", where or None)
    if not isinstance(card["metrics"], Mapping):
        raise InputError("model_card metrics must be a dict", where or None)
    return dict(card)


def shipped_root() -> Path:
    """The folder of the domain packages (``domains/``; ``site-packages/unimae/domains`` when installed)."""
    import unimae.domains

    return Path(unimae.domains.__file__).resolve().parent


def shipped_models(root: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """The demo models shipped with the project: ``({"<domain>_<task>": <task>.json}, [problems])``.

    A model is ``<root>/<domain>/demo/<task>.json`` with ``<task>.safetensors`` beside it, for a domain x task of
    :data:`DEMO_TASKS`. One that cannot be used (no weights, unreadable JSON, another domain or task than its place
    says, a model card lacking a key) is left out with a one-line reason: its panel keeps a synthetic-data model.
    """
    from unimae.core.checkpoint_io import FORMAT, read_checkpoint_meta
    from unimae.core.inference import parse_task_metadata

    base = Path(root).expanduser() if root is not None else shipped_root()
    found: dict[str, Path] = {}
    problems: list[str] = []
    for domain, task in DEMO_TASKS:
        json_path = base / domain / "demo" / f"{task}.json"
        if not json_path.is_file():
            continue
        try:
            if not json_path.with_suffix(".safetensors").is_file():
                raise InputError(f"weights {task}.safetensors missing", json_path)
            meta = read_checkpoint_meta(json_path)
            if meta.get("format") != FORMAT:
                raise InputError("not a UniMAE checkpoint", json_path)
            check_model_card(meta.get("model_card"), json_path)
            info = parse_task_metadata(meta, json_path)
            if (info["domain"], info["task"]) != (domain, task):
                raise InputError(f"a {info['domain']} {info['task']} model in the place of {domain} {task}", json_path)
        except InputError as err:
            problems.append(str(err))
            continue
        found[f"{domain}_{task}"] = json_path
    return found, problems


# ------------------------------------------------------------------------------------------------
# recipes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSpec:
    """How one demo model is fine-tuned: sections of a ``unimae finetune`` config.

    Attributes:
        domain, task: which model.
        model: the ``model`` section (a preset plus overrides).
        data: the ``data`` section (synthetic data: ``input_size``, sizes, preprocessing keys).
        train: the ``train`` section.
        anomaly: the ``anomaly`` section (anomaly models).
    """

    domain: str
    task: str
    model: Mapping[str, Any]
    data: Mapping[str, Any]
    train: Mapping[str, Any]
    anomaly: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.domain}_{self.task}"

    def config(self, out_dir: Path, seed: int) -> dict[str, Any]:
        """The finetune config dict (what ``load_finetune_config`` would return for a YAML file): from scratch."""
        cfg: dict[str, Any] = {
            "domain": self.domain,
            "task": self.task,
            "init": "none",
            "out_dir": str(out_dir),
            "seed": int(seed),
            "resume": False,
            "model": dict(self.model),
            "data": dict(self.data),
            "train": dict(self.train),
        }
        if self.task == "anomaly":
            cfg["anomaly"] = dict(self.anomaly)
        return cfg


@dataclass(frozen=True)
class DemoProfile:
    """A set of demo recipes plus the example files' sizes.

    Attributes:
        name: ``"default"`` or ``"test"``.
        specs: one :class:`DemoSpec` per domain x task.
        examples: per-domain example settings (sizes / spacing) matching the models' training data.
        seed: the seed of every model and example.
    """

    name: str
    specs: tuple[DemoSpec, ...]
    examples: Mapping[str, Mapping[str, Any]]
    seed: int = 0


def _train(steps: int, batch: int, lr: float = 1.5e-3, **extra: Any) -> dict[str, Any]:
    return {
        "max_steps": steps, "batch_size": batch, "lr": lr, "warmup_steps": max(1, steps // 15), "min_lr": lr / 20,
        "weight_decay": 0.02, "val_every": steps, "save_every": steps, "log_every": max(1, steps // 10),
        "progress": False, "layer_decay": None, "precision": "fp32", "device": "cpu", "num_workers": 0,
        "keep_last": 1, **extra,
    }  # fmt: skip


# model sizes: the "micro" preset (64 wide), two blocks; CT volumes at 9 mm so a 288 mm trunk fits the crop. Steps
# are few, one CPU thread (issue 10: the first start within 2 minutes on 2 cores while another process keeps one
# busy). Measured on the shared development machine (load 8-10 on 2 cores): 183 s of CPU time for all 11 models
# including imports and examples (CT anomaly and CT segment about half of it). The price is models that are rough
# even on their own synthetic data (validation: CT Dice 0.70, CT anomaly image AUROC 0.64).
_MICRO2 = {"preset": "micro", "depth": 2, "drop_path_rate": 0.0}
_CT_DATA = {"window": "soft_tissue", "spacing": [9.0, 9.0, 9.0]}


def _default_specs() -> tuple[DemoSpec, ...]:
    ms_model = {**_MICRO2, "patch_size": 8}
    anomaly = {"k": 4, "fpr": 0.05}
    n = 100_000  # synthetic training samples: each step draws fresh ones
    return (
        DemoSpec("ct", "segment", {**_MICRO2, "patch_size": 8, "feature_size": 8},
                 {"input_size": 32, "num_samples": n, "num_val_samples": 4, **_CT_DATA},
                 _train(150, 2, 4e-3, class_weights="auto")),
        # CT anomaly as configs/ct/anomaly.yaml: a variance head, trained hiding what the K masks hide, no flips
        DemoSpec("ct", "anomaly", {**_MICRO2, "embed_dim": 32, "num_heads": 2, "decoder_dim": 32, "decoder_depth": 1,
                                   "decoder_heads": 2, "patch_size": 8, "mask_ratio": 0.25, "predict_variance": True},
                 {"input_size": 32, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5, "flip_prob": 0.0,
                  **_CT_DATA}, _train(700, 4), {**anomaly, "sigma": 1.0, "top_fraction": 0.001}),
        DemoSpec("fundus", "classify", {**_MICRO2, "patch_size": 8},
                 {"input_size": 96, "num_samples": n, "num_val_samples": 32, "crop_scale": [0.85, 1.0],
                  "rotate": 10.0}, _train(80, 16, 2e-3)),
        DemoSpec("fundus", "segment", {**_MICRO2, "patch_size": 16, "feature_size": 8},
                 {"input_size": 128, "num_samples": n, "num_val_samples": 4}, _train(60, 4, 3e-3)),
        DemoSpec("fundus", "anomaly", {**_MICRO2, "patch_size": 8},
                 {"input_size": 128, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5},
                 _train(60, 8), anomaly),
        DemoSpec("xray", "classify", {**_MICRO2, "patch_size": 8},
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32, "crop_scale": [0.85, 1.0],
                  "rotate": 5.0}, _train(70, 32, 2e-3)),
        DemoSpec("xray", "segment", {**_MICRO2, "patch_size": 16, "feature_size": 8},
                 {"input_size": 96, "num_samples": n, "num_val_samples": 4}, _train(50, 4, 3e-3)),
        DemoSpec("xray", "anomaly", {**_MICRO2, "patch_size": 4, "mask_ratio": 0.75},  # a nodule spans a patch
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5},
                 _train(80, 16, 1e-3), anomaly),
        DemoSpec("multispectral", "classify", ms_model,
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32}, _train(60, 16)),
        DemoSpec("multispectral", "segment", {**ms_model, "feature_size": 8},
                 {"input_size": 64, "num_samples": n, "num_val_samples": 4}, _train(60, 8, 3e-3)),
        DemoSpec("multispectral", "anomaly", ms_model,
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5},
                 _train(100, 8), anomaly),
    )  # fmt: skip


def _test_specs() -> tuple[DemoSpec, ...]:
    """The same models, much smaller: a few steps on small inputs (the test suite's profile)."""
    tiny = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    decoder = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
    out = []
    for spec in _default_specs():
        model = {**spec.model, **tiny, **(decoder if spec.task == "anomaly" else {}), "preset": "micro"}
        size = {"ct": 24, "multispectral": 32}.get(spec.domain, 64)
        data = {**spec.data, "input_size": size, "num_val_samples": 8 if spec.task == "anomaly" else 2}
        out.append(DemoSpec(spec.domain, spec.task, model, data, _train(4, 2), spec.anomaly))
    return tuple(out)


# example files: sizes chosen so the picture is on the scale the model was trained on
_DEFAULT_EXAMPLES = {
    # the demo CT models' own 9 mm grid: the anomaly model knows the noise texture of its training phantoms only, and
    # reads a volume resampled from 3 mm (smoother) as abnormal throughout (measured: normal example 49 % flagged)
    "ct": {"size": (32, 32, 32), "spacing": (9.0, 9.0, 9.0)},
    "fundus": {"size": 128},
    "xray": {"size": 96},
    "multispectral": {"size": 96, "nodata_corner": 18},
}
_TEST_EXAMPLES = {
    "ct": {"size": (26, 24, 24), "spacing": (9.0, 9.0, 9.0)},
    "fundus": {"size": 64},
    "xray": {"size": 64},
    "multispectral": {"size": 40, "nodata_corner": 8},
}

PROFILES: dict[str, DemoProfile] = {
    "default": DemoProfile("default", _default_specs(), _DEFAULT_EXAMPLES),
    "test": DemoProfile("test", _test_specs(), _TEST_EXAMPLES),
}


# ------------------------------------------------------------------------------------------------
# where the cache lives
# ------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$UNIMAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/unimae``, else ``~/.cache/unimae``."""
    own = os.environ.get("UNIMAE_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "unimae"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("unimae")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "0+unknown"


def _profile(profile: str | DemoProfile) -> DemoProfile:
    return PROFILES[look_up(profile, PROFILES, what="demo profile")] if isinstance(profile, str) else profile


def _only(prof: DemoProfile, build: Sequence[str] | None) -> DemoProfile:
    """The profile restricted to the models named in ``build`` (None: all of them)."""
    if build is None:
        return prof
    unknown = sorted(set(build) - {s.name for s in prof.specs})
    if unknown:
        raise InputError(f"no demo recipe for {', '.join(unknown)}")
    return dc_replace(prof, specs=tuple(s for s in prof.specs if s.name in set(build)))


def demo_version(profile: str | DemoProfile = "default", build: Sequence[str] | None = None) -> str:
    """A short hash of the UniMAE version, :data:`DEMO_REVISION` and the recipes built (``build``: the names of the
    models built, default all of the profile's): a new recipe, or another set of shipped models, means a new folder."""
    prof = _only(_profile(profile), build)
    blob = json.dumps({"format": DEMO_FORMAT, "revision": DEMO_REVISION, "unimae": _package_version(),
                       "profile": asdict(dc_replace(prof, examples={}))}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def demo_cache_dir(profile: str | DemoProfile = "default", root: str | Path | None = None,
                   build: Sequence[str] | None = None) -> Path:  # fmt: skip
    """``<cache root>/demo-models-<version hash>`` (``-test`` appended for the test profile)."""
    prof = _profile(profile)
    suffix = "" if prof.name == "default" else f"-{prof.name}"
    return Path(root).expanduser() if root is not None else cache_root() / f"demo-models-{demo_version(prof, build)}{suffix}"


def examples_cache_dir(profile: str | DemoProfile = "default", models_root: str | Path | None = None) -> Path:
    """Where the example files live: ``<cache root>/demo-examples-<hash>``, or ``<models_root>-examples`` beside a
    models folder given explicitly."""
    prof = _profile(profile)
    if models_root is not None:
        models_root = Path(models_root).expanduser()
        return models_root.with_name(f"{models_root.name}-examples")
    blob = json.dumps({"format": DEMO_FORMAT, "revision": DEMO_REVISION, "unimae": _package_version(),
                       "examples": prof.examples, "seed": prof.seed}, sort_keys=True, default=str)  # fmt: skip
    suffix = "" if prof.name == "default" else f"-{prof.name}"
    return cache_root() / f"demo-examples-{hashlib.sha256(blob.encode()).hexdigest()[:12]}{suffix}"


# ------------------------------------------------------------------------------------------------
# the bundle
# ------------------------------------------------------------------------------------------------
@dataclass
class DemoBundle:
    """The demo models and examples: ``models`` ``{"<domain>_<task>": checkpoint JSON}`` (built and shipped),
    ``examples`` ``{domain: [files]}``; ``shipped`` names the shipped ones, ``pending`` the ones not built yet."""

    root: Path
    models: dict[str, Path]
    examples: dict[str, list[Path]]
    manifest: dict[str, Any]
    examples_root: Path | None = None
    shipped: dict[str, Path] = field(default_factory=dict)
    pending: tuple[str, ...] = ()

    @property
    def paths(self) -> list[Path]:
        """The folders the app may serve files from (models cache, examples)."""
        return [p for p in (self.root, self.examples_root) if p is not None]


def load_demo(root: str | Path) -> DemoBundle | None:
    """The built models in ``root`` if the build is complete (manifest present, every file there), else None."""
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != DEMO_FORMAT:
        return None
    models = {k: root / v for k, v in (manifest.get("models") or {}).items()}
    examples = {d: [root / p for p in ps] for d, ps in (manifest.get("examples") or {}).items()}
    needed = [*models.values(), *(p.with_suffix(".safetensors") for p in models.values())]
    needed += [p for ps in examples.values() for p in ps]
    if (not models and not manifest.get("empty")) or any(not p.is_file() for p in needed):
        return None
    return DemoBundle(root, models, examples, manifest)


def _load_examples(root: Path) -> dict[str, list[Path]] | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != DEMO_FORMAT:
        return None
    examples = {d: [root / p for p in ps] for d, ps in (manifest.get("examples") or {}).items()}
    if not examples or any(not p.is_file() for ps in examples.values() for p in ps):
        return None
    return examples


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``; a no-op where unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - non-POSIX
            pass
        yield


def _write_examples(dest: Path, profile: DemoProfile) -> dict[str, list[str]]:
    """Example files per domain (relative paths), from the synthetic generators."""
    from unimae.apps import ui_examples as ux

    seed = profile.seed + 7
    ex = profile.examples
    out: dict[str, list[str]] = {}

    def rel(p: Path) -> str:
        return p.relative_to(dest).as_posix()

    d = dest / "examples" / "ct"
    d.mkdir(parents=True, exist_ok=True)
    ct = ex["ct"]
    out["ct"] = [
        rel(ux.write_ct_nifti(d / "phantom_lesions.nii.gz", seed=seed, index=0, size=ct["size"], spacing=ct["spacing"])),
        rel(ux.write_ct_dicom_zip(d / "phantom_series_dicom.zip", seed=seed, index=1, size=ct["size"],
                                  spacing=ct["spacing"])),  # fmt: skip
        rel(ux.write_ct_nifti(d / "phantom_normal.nii.gz", seed=seed, index=2, size=ct["size"], spacing=ct["spacing"],
                              lesion_prob=0.0)),  # fmt: skip
    ]
    d = dest / "examples" / "fundus"
    d.mkdir(parents=True, exist_ok=True)
    fs = ex["fundus"]["size"]
    out["fundus"] = [
        rel(ux.write_fundus_image(d / "fundus_lesions.png", seed=seed, index=0, size=fs, lesion_prob=1.0)),
        rel(ux.write_fundus_image(d / "fundus_healthy.png", seed=seed, index=1, size=fs, lesion_prob=0.0)),
        rel(ux.write_fundus_image(d / "fundus_photo.jpg", seed=seed, index=2, size=fs, lesion_prob=1.0)),
    ]
    d = dest / "examples" / "xray"
    d.mkdir(parents=True, exist_ok=True)
    xs = ex["xray"]["size"]
    out["xray"] = [
        rel(ux.write_xray_png(d / "chest_consolidation.png", seed=seed, index=0, size=xs, findings=("consolidation",))),
        rel(ux.write_xray_png(d / "chest_normal.png", seed=seed, index=1, size=xs)),
        rel(ux.write_xray_dicom(d / "chest_cardiomegaly_mono1.dcm", seed=seed, index=2, size=xs,
                                findings=("cardiomegaly", "nodule"))),  # fmt: skip
        rel(ux.write_xray_png(d / "chest_nodules_16bit.png", seed=seed, index=3, size=xs, findings=("nodule",), bits=16)),
    ]
    d = dest / "examples" / "multispectral"
    d.mkdir(parents=True, exist_ok=True)
    ms = ex["multispectral"]
    out["multispectral"] = [
        rel(ux.write_scene_geotiff(d / "s2_landcover.tif", seed=seed, index=0, size=ms["size"],
                                   nodata_corner=ms["nodata_corner"])),  # fmt: skip
        rel(ux.write_scene_geotiff(d / "s2_anomalies.tif", seed=seed, index=1, size=ms["size"], task="anomaly",
                                   lesion_prob=1.0)),  # fmt: skip
    ]
    return out


@contextlib.contextmanager
def _threads() -> Iterator[None]:
    """Train the (tiny) demo models on one CPU thread (``$UNIMAE_DEMO_THREADS`` to change it).

    Their layers are too small to gain much from several threads, and threads that wait for each other at
    every operation stall badly when another process holds a core: measured on 2 cores with one kept busy, two
    threads ran the CT segmenter at about 9 s per step, one thread at a fraction of a second.
    """
    import torch

    before = torch.get_num_threads()
    try:
        n = max(1, int(os.environ.get("UNIMAE_DEMO_THREADS", "1")))
    except ValueError:
        n = 1
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_one(spec: DemoSpec, out_dir: Path, seed: int, bar: Any) -> dict[str, Any]:
    from unimae.apps.finetune import finetune

    steps = int(spec.train["max_steps"])
    done = {"n": 0}

    def on_step(step: int, metrics: Mapping[str, Any]) -> None:
        if bar is not None:
            bar.update(step - done["n"])
            loss = metrics.get("loss")
            if isinstance(loss, float):
                bar.set_postfix_str(f"{spec.name} loss {loss:.3f}", refresh=False)
        done["n"] = step

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), _threads():  # the engine's own lines: the bar
        result = finetune(spec.config(out_dir, seed), on_step=on_step)
    if bar is not None and done["n"] < steps:
        bar.update(steps - done["n"])
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # resumable state: not needed by the app
    return result


def _synthetic_card(spec: DemoSpec, result: Mapping[str, Any]) -> dict[str, Any]:
    """The model card of a model built here: trained on synthetic images, and what that means."""
    monitor, value = result.get("monitor"), result.get("best_value")
    metrics = {}
    if isinstance(value, (int, float)):
        metrics[f"synthetic validation {monitor}"] = round(float(value), 4)
    return {
        "trained_on": "synthetic",
        "data": {"name": f"UniMAE synthetic {spec.domain} images", "source": f"unimae.domains.{spec.domain}.synthetic "
                 "(generated on this machine)", "licence": "Apache-2.0 (generated by the project)", "citation": None},
        "metrics": metrics,
        "intended_use": "demonstration of the app on its synthetic examples",
        "not_for": f"real images ({SYNTHETIC_NOTICE}); diagnosis or any decision",
        "retrain": "unimae demo --force",
        "steps": int(spec.train["max_steps"]),
    }  # fmt: skip


def _add_card(json_path: Path, card: Mapping[str, Any]) -> None:
    meta = json.loads(json_path.read_text())
    meta["model_card"] = dict(card)
    with atomic_path(json_path) as t:
        t.write_text(json.dumps(meta, indent=2, default=str) + "\n")


def build_demo(
    root: str | Path | None = None,
    *,
    profile: str = "default",
    progress: bool = True,
    build: Sequence[str] | None = None,
) -> DemoBundle:
    """Build the demo models named in ``build`` (default: all of the profile's) into ``root`` (default:
    :func:`demo_cache_dir`). Each gets a ``model_card`` saying it was trained on synthetic images.

    Works in a temporary sibling folder and renames it into place at the end (replacing an older
    build of the same folder). Returns the bundle (models only; :func:`ensure_demo` adds the examples).
    """
    prof = _only(_profile(profile), build)
    root = demo_cache_dir(prof, root, build)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    bar = None
    t0 = time.perf_counter()
    try:
        if progress and prof.specs:
            from tqdm.auto import tqdm

            total = sum(int(s.train["max_steps"]) for s in prof.specs)
            print(f"unimae: building {len(prof.specs)} demo models from synthetic data (first start only) "
                  f"into {root}", file=sys.stderr, flush=True)  # fmt: skip
            bar = tqdm(total=total, desc="demo models", unit="step", file=sys.stderr, dynamic_ncols=True)
        models: dict[str, str] = {}
        results: dict[str, Any] = {}
        for spec in prof.specs:
            if bar is not None:
                bar.set_description(f"demo {spec.domain} {spec.task}")
            out = tmp / "models" / spec.name
            t_model = time.perf_counter()
            res = _train_one(spec, out, prof.seed, bar)
            best = out / "best.json"
            if not best.is_file():
                raise RuntimeError(f"fine-tuning {spec.name} wrote no best.json")
            _add_card(best, _synthetic_card(spec, res))
            models[spec.name] = best.relative_to(tmp).as_posix()
            results[spec.name] = {
                "monitor": res.get("monitor"), "best_value": res.get("best_value"), "steps": res.get("step"),
                "anomaly": res.get("anomaly"), "seconds": round(time.perf_counter() - t_model, 1),
            }  # fmt: skip
        manifest = {
            "format": DEMO_FORMAT,
            "profile": prof.name,
            "version": demo_version(prof),
            "unimae": _package_version(),
            "models": models,
            "empty": not models,
            "validation": results,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with atomic_path(tmp / "manifest.json") as t:
            t.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the trainer's "resume=true" advice does not apply here
        shutil.rmtree(tmp, ignore_errors=True)
        raise KeyboardInterrupt("demo build interrupted; nothing was kept, the next start builds again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    bundle = load_demo(root)
    if bundle is None:  # pragma: no cover - would be a bug in the writer above
        raise RuntimeError(f"the demo build in {root} is incomplete")
    if progress and prof.specs:
        print(f"unimae: demo models ready in {bundle.manifest['build_seconds']:.0f} s", file=sys.stderr, flush=True)
    return bundle


def ensure_examples(profile: str | DemoProfile = "default", root: str | Path | None = None) -> tuple[Path, dict[str, list[Path]]]:
    """The example files (written once, in seconds, under a lock): ``(folder, {domain: [files]})``."""
    prof = _profile(profile)
    root = Path(root).expanduser() if root is not None else examples_cache_dir(prof)
    found = _load_examples(root)
    if found is not None:
        return root, found
    with _file_lock(root.with_name(f".{root.name}.lock")):
        found = _load_examples(root)
        if found is not None:
            return root, found
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.writing-", dir=root.parent))
        try:
            rel = _write_examples(tmp, prof)
            with atomic_path(tmp / "manifest.json") as t:
                t.write_text(json.dumps({"format": DEMO_FORMAT, "profile": prof.name, "examples": rel}, indent=2) + "\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    found = _load_examples(root)
    if found is None:  # pragma: no cover - would be a bug in the writer above
        raise RuntimeError(f"the demo examples in {root} are incomplete")
    return root, found


def _plan(profile: str | DemoProfile, shipped: Mapping[str, Path] | None) -> tuple[DemoProfile, dict[str, Path], list[str]]:
    """``(profile, shipped models used, names of the models to build)``. ``shipped`` None: the package's shipped
    models for the default profile (their problems printed), none for the test profile."""
    prof = _profile(profile)
    if shipped is None:
        if prof.name == "default":
            shipped, problems = shipped_models()
            for line in problems:
                print(f"unimae: note: shipped demo model not used: {line}", file=sys.stderr, flush=True)
        else:
            shipped = {}
    shipped = {k: Path(v) for k, v in shipped.items()}
    return prof, shipped, [s.name for s in prof.specs if s.name not in shipped]


def _bundle(models: DemoBundle | None, root: Path, shipped: Mapping[str, Path], examples: tuple[Path, dict],
            pending: Sequence[str] = ()) -> DemoBundle:  # fmt: skip
    built = {k: v for k, v in (models.models if models is not None else {}).items() if k not in shipped}
    manifest = models.manifest if models is not None else {}
    return DemoBundle(root, {**built, **shipped}, examples[1], manifest, examples[0], dict(shipped), tuple(pending))


def ensure_demo(
    root: str | Path | None = None,
    *,
    profile: str = "default",
    force: bool = False,
    progress: bool = True,
    shipped: Mapping[str, Path] | None = None,
) -> DemoBundle:
    """The demo bundle: the shipped models, plus the others loaded from the cache or built (once, under a lock)
    when missing or ``force``; and the example files.

    Args:
        root: the folder of the built models (default: :func:`demo_cache_dir`; the examples then go beside it).
        shipped: ``{"<domain>_<task>": JSON}`` used instead of building those models; default: the package's
            (:func:`shipped_models`) for the default profile, none for the test profile.
    """
    prof, shipped, build = _plan(profile, shipped)
    examples = ensure_examples(prof, examples_cache_dir(prof, root) if root is not None else None)
    root = demo_cache_dir(prof, root, build)
    if not force:
        bundle = load_demo(root)
        if bundle is not None:
            return _bundle(bundle, root, shipped, examples)
    with _file_lock(root.with_name(f".{root.name}.lock")):
        if not force:
            bundle = load_demo(root)  # another process built it while we waited
            if bundle is not None:
                return _bundle(bundle, root, shipped, examples)
        for stale in root.parent.glob(f".{root.name}.building-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        return _bundle(build_demo(root, profile=prof.name, progress=progress, build=build), root, shipped, examples)


def start_background_build(profile: str = "default") -> tuple[DemoBundle, subprocess.Popen | None]:
    """For ``unimae app``: the demo bundle as far as it is ready now, and the child process building the rest.

    The shipped models and the examples are ready at once; the built models are loaded when their cache is
    complete, else ``unimae demo`` runs in a child process (its progress bar in this terminal) and the bundle's
    ``pending`` names the models it will add (:func:`load_demo` of ``bundle.root`` once the child exits with 0).
    """
    prof, shipped, build = _plan(profile, None)  # the child plans the same way: the package's shipped models
    examples = ensure_examples(prof)
    root = demo_cache_dir(prof, None, build)
    bundle = load_demo(root)
    if bundle is not None or not build:
        if bundle is None:
            bundle = ensure_demo(profile=prof.name, progress=False, shipped=shipped)
        return _bundle(bundle, root, shipped, examples), None
    cmd = [sys.executable, "-m", "unimae.apps.cli", "demo", "--profile", prof.name]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return _bundle(None, root, shipped, examples, pending=build), proc


# ------------------------------------------------------------------------------------------------
# `unimae demo`
# ------------------------------------------------------------------------------------------------
def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``unimae demo`` to an argparse ``subparsers`` object; it runs :func:`run_demo`."""
    p = subparsers.add_parser(
        "demo",
        help="build the app's demo models and example files (without starting the app)",
        description="Build the demo models that are not shipped with the project (one per domain and task, "
        "fine-tuned on synthetic data) and the example files into the cache folder ($UNIMAE_CACHE_DIR, "
        "$XDG_CACHE_HOME/unimae or ~/.cache/unimae). An existing build is reused unless --force.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    p.add_argument("--dir", default=None, metavar="DIR", help="build into DIR instead of the cache folder")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    p.set_defaults(func=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    """Run ``unimae demo``: print where the models are and what they scored on synthetic validation data."""
    import signal
    import threading

    def stop(signum, frame):  # noqa: ARG001 - SIGTERM (e.g. the app stopping) ends the build like Ctrl-C
        raise KeyboardInterrupt("stopped by SIGTERM")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)  # the trainer installs its own while a model trains, then restores this
    t0 = time.perf_counter()
    bundle = ensure_demo(args.dir, profile=getattr(args, "profile", "default"), force=bool(args.force), progress=True)
    built = len(bundle.models) - len(bundle.shipped)
    print(f"unimae: {len(bundle.models)} demo models: {built} built from synthetic data in {bundle.root}, "
          f"{len(bundle.shipped)} shipped (real data) ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    for name, info in sorted((bundle.manifest.get("validation") or {}).items()):
        value = info.get("best_value")
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
        print(f"  {name:24s} synthetic  {str(info.get('monitor')):22s} {shown}  ({info.get('seconds', '?')} s)")
    for name, path in sorted(bundle.shipped.items()):
        print(f"  {name:24s} real       {path}")
    return 0

