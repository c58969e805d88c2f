"""The app's built-in demo models: one per domain x task, trained on the project's own synthetic data.

Nothing is downloaded. On first use :func:`ensure_demo` fine-tunes small models with the same machinery
as ``unimae finetune`` (:func:`unimae.apps.finetune.finetune`, from scratch, synthetic data) and writes
example files in real formats (NIfTI, zipped DICOM, PNG, JPEG, DICOM, GeoTIFF) from the synthetic
generators. Everything lands in the user's cache folder::

    $UNIMAE_CACHE_DIR                      (if set), else
    $XDG_CACHE_HOME/unimae                 (if set), else
    ~/.cache/unimae
        demo-models-<hash>/                the hash covers the UniMAE version and the build recipe
            manifest.json                  written last: a folder without it is never used
            models/<domain>_<task>/best.{json,safetensors}   (+ metrics.csv, learning_curve.png)
            examples/<domain>/...

The build happens in a temporary folder that is renamed into place only when complete, under a file
lock, so an interrupted or concurrent build never leaves a half-built cache in use. Later starts only
read ``manifest.json``. ``unimae demo`` builds without starting the app (``--force`` rebuilds).

Profiles: ``default`` (the app's models; at most a few minutes on 2 CPU cores) and ``test`` (a handful of
steps, for the test suite: real models, not good ones).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unimae.core.errors import look_up
from unimae.core.fileio import atomic_path

__all__ = [
    "DEMO_TASKS",
    "DemoSpec",
    "DemoProfile",
    "PROFILES",
    "DemoBundle",
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
DEMO_REVISION = 3  # bump when training or scoring code changes what the same recipe builds (2: anomaly maps score
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


# model sizes: the "micro" preset (64 wide), two blocks; CT volumes at 9 mm (segmentation) and 6 mm (anomaly) so
# a 288 mm trunk fits the crop. Steps are few: the whole build takes a few minutes at most on 2 CPU cores.
_MICRO2 = {"preset": "micro", "depth": 2, "drop_path_rate": 0.0}
_CT_DATA = {"window": "soft_tissue", "spacing": [9.0, 9.0, 9.0]}


def _default_specs() -> tuple[DemoSpec, ...]:
    ms_model = {**_MICRO2, "patch_size": 8}
    anomaly = {"k": 4, "fpr": 0.05}
    n = 100_000  # synthetic training samples: each step draws fresh ones
    return (
        DemoSpec("ct", "segment", {**_MICRO2, "patch_size": 8, "feature_size": 8},
                 {"input_size": 32, "num_samples": n, "num_val_samples": 4, **_CT_DATA},
                 _train(400, 2, 4e-3, class_weights="auto")),
        # CT anomaly as configs/ct/anomaly.yaml: a variance head, trained hiding what the K masks hide, no flips
        DemoSpec("ct", "anomaly", {**_MICRO2, "embed_dim": 32, "num_heads": 2, "decoder_dim": 32, "decoder_depth": 1,
                                   "decoder_heads": 2, "patch_size": 8, "mask_ratio": 0.25, "predict_variance": True},
                 {"input_size": 32, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5, "flip_prob": 0.0,
                  **_CT_DATA}, _train(2500, 4), {**anomaly, "sigma": 1.0, "top_fraction": 0.001}),
        DemoSpec("fundus", "classify", {**_MICRO2, "patch_size": 8},
                 {"input_size": 96, "num_samples": n, "num_val_samples": 32, "crop_scale": [0.85, 1.0],
                  "rotate": 10.0}, _train(200, 16, 2e-3)),
        DemoSpec("fundus", "segment", {**_MICRO2, "patch_size": 16, "feature_size": 8},
                 {"input_size": 128, "num_samples": n, "num_val_samples": 4}, _train(150, 4, 3e-3)),
        DemoSpec("fundus", "anomaly", {**_MICRO2, "patch_size": 8},
                 {"input_size": 128, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5},
                 _train(150, 8), anomaly),
        DemoSpec("xray", "classify", {**_MICRO2, "patch_size": 8},
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32, "crop_scale": [0.85, 1.0],
                  "rotate": 5.0}, _train(250, 32, 2e-3)),
        DemoSpec("xray", "segment", {**_MICRO2, "patch_size": 16, "feature_size": 8},
                 {"input_size": 96, "num_samples": n, "num_val_samples": 4}, _train(100, 4, 3e-3)),
        DemoSpec("xray", "anomaly", {**_MICRO2, "patch_size": 4, "mask_ratio": 0.75},  # a nodule spans a patch
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5},
                 _train(300, 16, 1e-3), anomaly),
        DemoSpec("multispectral", "classify", ms_model,
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32}, _train(150, 16)),
        DemoSpec("multispectral", "segment", {**ms_model, "feature_size": 8},
                 {"input_size": 64, "num_samples": n, "num_val_samples": 4}, _train(150, 8, 3e-3)),
        DemoSpec("multispectral", "anomaly", ms_model,
                 {"input_size": 64, "num_samples": n, "num_val_samples": 32, "val_lesion_prob": 0.5},
                 _train(300, 8), anomaly),
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


def demo_version(profile: str | DemoProfile = "default") -> str:
    """A short hash of the UniMAE version, :data:`DEMO_REVISION` and the profile's recipes: a new recipe means a new
    cache folder."""
    prof = PROFILES[look_up(profile, PROFILES, what="demo profile")] if isinstance(profile, str) else profile
    blob = json.dumps({"format": DEMO_FORMAT, "revision": DEMO_REVISION, "unimae": _package_version(), "profile": asdict(prof)},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def demo_cache_dir(profile: str | DemoProfile = "default", root: str | Path | None = None) -> Path:
    """``<cache root>/demo-models-<version hash>`` (``-test`` appended for the test profile)."""
    prof = PROFILES[look_up(profile, PROFILES, what="demo profile")] if isinstance(profile, str) else profile
    suffix = "" if prof.name == "default" else f"-{prof.name}"
    return Path(root).expanduser() if root is not None else cache_root() / f"demo-models-{demo_version(prof)}{suffix}"


# ------------------------------------------------------------------------------------------------
# the bundle
# ------------------------------------------------------------------------------------------------
@dataclass
class DemoBundle:
    """A built demo cache: ``models`` ``{"<domain>_<task>": checkpoint JSON}``, ``examples`` ``{domain: [files]}``."""

    root: Path
    models: dict[str, Path]
    examples: dict[str, list[Path]]
    manifest: dict[str, Any]


def load_demo(root: str | Path) -> DemoBundle | None:
    """The bundle in ``root`` if it is complete (manifest present, every file there), else None."""
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
    if not models or any(not p.is_file() for p in needed):
        return None
    return DemoBundle(root, models, examples, manifest)


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

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # the engine's own lines: the bar says it
        result = finetune(spec.config(out_dir, seed), on_step=on_step)
    if bar is not None and done["n"] < steps:
        bar.update(steps - done["n"])
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # resumable state: not needed by the app
    return result


def build_demo(
    root: str | Path | None = None,
    *,
    profile: str = "default",
    progress: bool = True,
) -> DemoBundle:
    """Build every demo model and the example files into ``root`` (default: :func:`demo_cache_dir`).

    Works in a temporary sibling folder and renames it into place at the end (replacing an older
    build of the same folder). Returns the bundle.
    """
    prof = PROFILES[look_up(profile, PROFILES, what="demo profile")]
    root = demo_cache_dir(prof, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    bar = None
    t0 = time.perf_counter()
    try:
        if progress:
            from tqdm.auto import tqdm

            total = sum(int(s.train["max_steps"]) for s in prof.specs)
            print(f"unimae: building {len(prof.specs)} demo models from synthetic data (first start only) "
                  f"into {root}", file=sys.stderr, flush=True)  # fmt: skip
            bar = tqdm(total=total, desc="demo models", unit="step", file=sys.stderr, dynamic_ncols=True)
        examples = _write_examples(tmp, prof)
        models: dict[str, str] = {}
        results: dict[str, Any] = {}
        for spec in prof.specs:
            if bar is not None:
                bar.set_description(f"demo {spec.domain} {spec.task}")
            out = tmp / "models" / spec.name
            res = _train_one(spec, out, prof.seed, bar)
            best = out / "best.json"
            if not best.is_file():
                raise RuntimeError(f"fine-tuning {spec.name} wrote no best.json")
            models[spec.name] = best.relative_to(tmp).as_posix()
            results[spec.name] = {
                "monitor": res.get("monitor"), "best_value": res.get("best_value"), "steps": res.get("step"),
                "anomaly": res.get("anomaly"),
            }  # fmt: skip
        manifest = {
            "format": DEMO_FORMAT,
            "profile": prof.name,
            "version": demo_version(prof),
            "unimae": _package_version(),
            "models": models,
            "examples": examples,
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
    if progress:
        print(f"unimae: demo models ready in {bundle.manifest['build_seconds']:.0f} s", file=sys.stderr, flush=True)
    return bundle


def ensure_demo(
    root: str | Path | None = None, *, profile: str = "default", force: bool = False, progress: bool = True
) -> DemoBundle:
    """The demo bundle: loaded from the cache, or built (once, under a lock) when missing or ``force``."""
    prof = PROFILES[look_up(profile, PROFILES, what="demo profile")]
    root = demo_cache_dir(prof, root)
    if not force:
        bundle = load_demo(root)
        if bundle is not None:
            return bundle
    with _file_lock(root.with_name(f".{root.name}.lock")):
        if not force:
            bundle = load_demo(root)  # another process built it while we waited
            if bundle is not None:
                return bundle
        return build_demo(root, profile=prof.name, progress=progress)


# ------------------------------------------------------------------------------------------------
# `unimae demo`
# ------------------------------------------------------------------------------------------------
def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``unimae demo`` to an argparse ``subparsers`` object; it runs :func:`run_demo`."""
    p = subparsers.add_parser(
        "demo",
        help="build the app's demo models and example files (without starting the app)",
        description="Build the demo models (one per domain and task, fine-tuned on synthetic data) and the "
        "example files into the cache folder ($UNIMAE_CACHE_DIR, $XDG_CACHE_HOME/unimae or ~/.cache/unimae). "
        "An existing build is reused unless --force.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    p.add_argument("--dir", default=None, metavar="DIR", help="build into DIR instead of the cache folder")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    p.set_defaults(func=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    """Run ``unimae demo``: print where the models are and what they scored on synthetic validation data."""
    t0 = time.perf_counter()
    bundle = ensure_demo(args.dir, profile=getattr(args, "profile", "default"), force=bool(args.force), progress=True)
    print(f"unimae: {len(bundle.models)} demo models in {bundle.root} ({time.perf_counter() - t0:.1f} s)")
    for name, info in sorted((bundle.manifest.get("validation") or {}).items()):
        value = info.get("best_value")
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
        print(f"  {name:24s} {str(info.get('monitor')):22s} {shown}")
    return 0

