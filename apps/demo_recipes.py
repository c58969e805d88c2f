"""The recipes of the app's demo models: one per registered domain x task, from the domain plugins.

Each plugin's ``demo_models`` gives the domain-specific part of a ``unimae finetune`` config (model sizes,
synthetic data, steps); this module adds what every demo model shares (the ``micro`` preset with two blocks,
the ``train`` defaults, the anomaly calibration) and makes the two profiles: ``default`` (the app's) and
``test`` (the same models, tiny: a few steps on small inputs). The example files' sizes come from each
plugin's ``demo_examples``. :mod:`unimae.apps.demo_models` builds and caches them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

from unimae.core.errors import InputError, look_up
from unimae.core.tasks import get_task

__all__ = ["DemoSpec", "DemoProfile", "PROFILES", "PROFILE_NAMES", "demo_tasks"]


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
        if get_task(self.task).calibrated:  # the anomaly section: scoring and calibration settings
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


# model sizes: the "micro" preset (64 wide), two blocks, unless a domain's recipe says otherwise (its plugin's
# ``demo_models``: the domain-specific sizes, data and steps). Steps are few, one CPU thread (issue 10: the first
# start within 2 minutes on 2 cores while another process keeps one busy). Measured that way on the development
# machine: 79 s wall for the 7 synthetic models, imports and examples included (CT segment 29 s, CT anomaly 10 s).
# The price is models that are rough even on their own synthetic data (validation: CT Dice 0.70, CT anomaly image
# AUROC 0.69).
_DEMO_MODEL = {"preset": "micro", "depth": 2, "drop_path_rate": 0.0}
_DEMO_ANOMALY = {"k": 4, "fpr": 0.05}
_DEMO_SAMPLES = 100_000  # synthetic training samples: each step draws fresh ones


def _default_specs() -> tuple[DemoSpec, ...]:
    """One recipe per registered domain x task whose plugin has a demo recipe (``demo_models``), in registry order."""
    from unimae.domains import domain_names, get_domain

    specs = []
    for name in domain_names():
        plugin = get_domain(name)
        for task in plugin.tasks:
            recipe = plugin.demo_models.get(task)
            if recipe is None:
                continue
            train = dict(recipe.get("train") or {})
            steps, batch, lr = train.pop("max_steps"), train.pop("batch_size"), train.pop("lr", 1.5e-3)
            specs.append(DemoSpec(
                name, task, {**_DEMO_MODEL, **(recipe.get("model") or {})},
                {"num_samples": _DEMO_SAMPLES, **(recipe.get("data") or {})}, _train(steps, batch, lr, **train),
                {**_DEMO_ANOMALY, **(recipe.get("anomaly") or {})} if get_task(task).calibrated else {},
            ))  # fmt: skip
    return tuple(specs)


def _test_specs() -> tuple[DemoSpec, ...]:
    """The same models, much smaller: a few steps on small inputs (the test suite's profile)."""
    from unimae.domains import get_domain

    tiny = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    decoder = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
    out = []
    for spec in _default_specs():
        model = {**spec.model, **tiny, **(decoder if get_task(spec.task).mae_training else {}), "preset": "micro"}
        size = get_domain(spec.domain).demo_test_size
        data = {**spec.data, "input_size": size, "num_val_samples": 8 if get_task(spec.task).calibrated else 2}
        out.append(DemoSpec(spec.domain, spec.task, model, data, _train(4, 2), spec.anomaly))
    return tuple(out)


def _examples(profile: str) -> dict[str, dict[str, Any]]:
    """Per registered domain, the sizes of its example files in ``profile`` (its plugin's ``demo_examples``),
    chosen so the picture is on the scale the demo model was trained on."""
    from unimae.domains import domain_names, get_domain

    return {name: dict(get_domain(name).demo_examples[profile]) for name in domain_names()
            if profile in get_domain(name).demo_examples}  # fmt: skip


PROFILE_NAMES = ("default", "test")


class _Profiles(MutableMapping):
    """``{name: DemoProfile}``, made from the domain registry when first read: importing this module (e.g. for
    ``unimae --help``) imports no plugin and no torch; a test may still replace a profile (``PROFILES["test"] = ...``)."""

    def __init__(self) -> None:
        self._data: dict[str, DemoProfile] | None = None

    def _profiles(self) -> dict[str, DemoProfile]:
        if self._data is None:
            self._data = {"default": DemoProfile("default", _default_specs(), _examples("default")),
                          "test": DemoProfile("test", _test_specs(), _examples("test"))}  # fmt: skip
        return self._data

    def __getitem__(self, name: str) -> DemoProfile:
        return self._profiles()[name]

    def __setitem__(self, name: str, profile: DemoProfile) -> None:
        self._profiles()[name] = profile

    def __delitem__(self, name: str) -> None:
        del self._profiles()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles())

    def __len__(self) -> int:
        return len(self._profiles())


PROFILES: MutableMapping[str, DemoProfile] = _Profiles()


def demo_tasks() -> tuple[tuple[str, str], ...]:
    """``(domain, task)`` of every demo model (the default profile's recipes)."""
    return tuple((s.domain, s.task) for s in PROFILES["default"].specs)


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
