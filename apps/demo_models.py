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

from unimae.apps.demo_recipes import PROFILE_NAMES, PROFILES, DemoProfile, DemoSpec, _only, _profile, demo_tasks
from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path

__all__ = [
    "DEMO_TASKS",
    "demo_tasks",
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
    ``"real"`` / ``"synthetic"``, ``data`` naming its source and licence, and ``reliable`` (optional; false when the
    benchmark found the model does not work: the app then withholds its verdict) a boolean. Raises
    :class:`InputError` otherwise."""
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
    if "reliable" in card and not isinstance(card["reliable"], bool):
        raise InputError(f"model_card reliable must be true or false, not {card['reliable']!r}", where or None)
    return dict(card)


def shipped_root() -> Path:
    """The folder of the domain packages (``domains/``; ``site-packages/unimae/domains`` when installed)."""
    import unimae.domains

    return Path(unimae.domains.__file__).resolve().parent


def shipped_models(root: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """The demo models shipped with the project: ``({"<domain>_<task>": <task>.json}, [problems])``.

    A model is ``<root>/<domain>/demo/<task>.json`` with ``<task>.safetensors`` beside it, for a domain x task of
    :func:`demo_tasks`. One that cannot be used (no weights, unreadable JSON, another domain or task than its place
    says, a model card lacking a key) is left out with a one-line reason: its panel keeps a synthetic-data model.
    """
    from unimae.core.checkpoint_io import FORMAT, read_checkpoint_meta
    from unimae.core.inference import parse_task_metadata

    base = Path(root).expanduser() if root is not None else shipped_root()
    found: dict[str, Path] = {}
    problems: list[str] = []
    for domain, task in demo_tasks():
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
# where the cache lives
# ------------------------------------------------------------------------------------------------
def __getattr__(name: str) -> Any:
    """``DEMO_TASKS`` (an earlier module constant): :func:`demo_tasks`."""
    if name == "DEMO_TASKS":
        return demo_tasks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    manifest = _read_manifest(root)
    if manifest is None:
        return None
    models = {k: root / v for k, v in (manifest.get("models") or {}).items()}
    examples = {d: [root / p for p in ps] for d, ps in (manifest.get("examples") or {}).items()}
    needed = [*models.values(), *(p.with_suffix(".safetensors") for p in models.values())]
    needed += [p for ps in examples.values() for p in ps]
    if (not models and not manifest.get("empty")) or any(not p.is_file() for p in needed):
        return None
    return DemoBundle(root, models, examples, manifest)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """``root/manifest.json`` when it is a readable demo manifest of this format, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != DEMO_FORMAT:
        return None
    return manifest


def _load_examples(root: Path) -> dict[str, list[Path]] | None:
    manifest = _read_manifest(root)
    if manifest is None:
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
    """Example files per domain (relative paths): each plugin's ``write_examples`` from its synthetic generator."""
    from unimae.domains import get_domain

    seed = profile.seed + 7
    out: dict[str, list[str]] = {}
    for name, settings in profile.examples.items():
        files = get_domain(name).write_examples(dest / "examples" / name, seed=seed, **settings)
        out[name] = [Path(f).relative_to(dest).as_posix() for f in files]
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
    p.add_argument("--profile", default="default", choices=sorted(PROFILE_NAMES), help=argparse.SUPPRESS)
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

