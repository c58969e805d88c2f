"""Run configuration: a flat YAML file plus ``key=value`` overrides from the command line.

A config has three sections and four top-level keys; every key maps 1:1 onto a constructor argument
(docs/ARCHITECTURE.md), so a config is never passed whole into a module:

.. code-block:: yaml

    domain: fundus             # the domain plugin (unimae.domains.get_domain)
    out_dir: runs/fundus       # where the run writes (metrics, previews, checkpoints, model)
    seed: 0                    # seeds data order, augmentation, masks and initialisation
    resume: false              # true: continue from out_dir/checkpoints/last; or a checkpoint path
    model:                     # -> MaskedAutoencoder: `preset` expanded, then its own and the encoder's keys
      preset: base
      patch_size: 16
    data:                      # -> plugin.train_dataset(train, input_size=..., num_samples=..., **rest)
      train: null              # a folder / CSV manifest; null = the domain's synthetic data
    train:                     # -> engine.TrainConfig(**train)
      max_steps: 10000

Overrides use dotted keys and YAML scalars: ``train.max_steps=20``, ``model.preset=tiny``,
``data.input_size=[96,96,96]``, ``train.clip_grad=null``, ``resume=true``.

The stable, documented override keys are listed in :data:`STABLE_KEYS`. Which keys a section accepts is
decided by the code that consumes it (:func:`check_keys` takes the known names); an unknown key is an
:class:`~unimae.core.errors.InputError` naming the known keys of that section and the closest match.

The grammar functions (:func:`load_yaml`, :func:`parse_override`, :func:`apply_overrides`) take the
top-level keys and sections as keywords, so fine-tuning's config (``unimae.apps.finetune_config``: ``task``,
``init``, an ``anomaly`` section) is read by the same code.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from unimae.core.errors import InputError, look_up

__all__ = [
    "SECTIONS",
    "TOP_LEVEL_KEYS",
    "STABLE_KEYS",
    "load_yaml",
    "parse_value",
    "parse_override",
    "apply_overrides",
    "check_keys",
    "run_settings",
    "load_config",
    "dump_config",
    "dump_yaml",
]

SECTIONS = ("model", "data", "train")
TOP_LEVEL_KEYS = ("domain", "out_dir", "seed", "resume")

#: Override keys whose meaning will not change between releases.
STABLE_KEYS: dict[str, str] = {
    "out_dir": "output folder of the run",
    "model.preset": "model size: micro, tiny, small, base or large",
    "train.max_steps": "number of optimizer steps",
    "train.batch_size": "samples per device per micro-batch",
    "train.lr": "absolute peak learning rate (default: train.blr x effective batch / 256)",
    "train.precision": "auto (bf16 where supported), fp32 or bf16",
    "data.train": "folder or CSV manifest of training images; null = synthetic data",
    "data.val": "folder or CSV manifest for the validation loss; null = none",
    "resume": "true = continue from out_dir/checkpoints/last; or a checkpoint path",
}

_SCALARS = (str, int, float, bool, type(None), list)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``1e-4``, ``3E5``) as numbers."""

    yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(
    path: str | Path, *, top_level: Sequence[str] = TOP_LEVEL_KEYS, sections: Sequence[str] = SECTIONS
) -> dict[str, Any]:
    """Read a config file into ``{top-level keys..., model: {}, data: {}, train: {}}`` (one entry per section
    of ``sections``; ``top_level`` and ``sections`` are the keys a config may hold at its top).

    Raises:
        InputError: a missing or unreadable file, invalid YAML, a non-mapping document or section,
            or an unknown top-level key.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("config file not found", p)
    try:
        raw = _safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read config ({err})", p) from err
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InputError(f"invalid YAML{line}: {getattr(err, 'problem', err)}", p) from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"a config must be a mapping of keys, got {type(raw).__name__}", p)
    cfg: dict[str, Any] = {s: {} for s in sections}
    for key, value in raw.items():
        key = str(key)
        if key in sections:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise InputError(f"section {key!r} must be a mapping, got {type(value).__name__}", p)
            cfg[key] = {str(k): v for k, v in value.items()}
        else:
            _top_level(key, f"in {p.name}", (*top_level, *sections))
            cfg[key] = value
    return cfg


def _top_level(key: str, where: str, known: Sequence[str]) -> str:
    try:
        return look_up(key, known, what="top-level key")
    except InputError as err:
        raise InputError(f"{err} ({where})") from None


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar or flow list: ``20``, ``1e-4``, ``true``, ``null``, ``[96,96,96]``.

    Anything that YAML would turn into a mapping, a date or another non-scalar stays the raw string
    (so ``out_dir=runs/a:b`` is a path, not a mapping).
    """
    try:
        value = _safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(value, _SCALARS):
        return text
    return value


def parse_override(
    text: str,
    *,
    top_level: Sequence[str] = TOP_LEVEL_KEYS,
    sections: Sequence[str] = SECTIONS,
    example: str = "train.max_steps=20",
) -> tuple[tuple[str, ...], Any]:
    """``"train.max_steps=20"`` -> ``(("train", "max_steps"), 20)``; ``"resume=true"`` -> ``(("resume",), True)``.

    ``top_level`` and ``sections`` are the keys a config holds (see :func:`load_yaml`); ``example`` is the
    override shown when ``text`` is not ``key=value``."""
    if "=" not in text:
        raise InputError(f"override {text!r} is not key=value (e.g. {example})")
    key, _, value = text.partition("=")
    key = key.strip()
    parts = tuple(key.split("."))
    if not key or any(not part for part in parts):
        raise InputError(f"override {text!r} has an empty key")
    where = f"in override {text!r}"
    if len(parts) == 1:
        if parts[0] in sections:
            raise InputError(f"{parts[0]!r} is a section; set one of its keys, e.g. {parts[0]}.<key>=value ({where})")
        _top_level(parts[0], where, (*top_level, *sections))
    elif len(parts) == 2:
        if parts[0] not in sections:
            try:
                look_up(parts[0], sections, what="section")
            except InputError as err:
                raise InputError(f"{err} ({where})") from None
    else:
        raise InputError(f"override key {key!r} is nested too deeply; use section.key=value ({where})")
    return parts, parse_value(value.strip())


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str], **grammar: Any) -> dict[str, Any]:
    """A copy of ``cfg`` with ``key=value`` overrides applied in order (later ones win); ``grammar``: the
    keywords of :func:`parse_override` (``top_level``, ``sections``, ``example``)."""
    out = copy.deepcopy(dict(cfg))
    for section in grammar.get("sections", SECTIONS):
        out.setdefault(section, {})
    for text in overrides:
        parts, value = parse_override(text, **grammar)
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            out[parts[0]][parts[1]] = value
    return out


def check_keys(section: str, values: Mapping[str, Any], known: Collection[str]) -> None:
    """Raise :class:`InputError` for the first key of ``values`` not in ``known`` (with a close-match hint)."""
    for key in values:
        if key not in known:
            look_up(str(key), sorted(known), what=f"{section} key")


def run_settings(cfg: Mapping[str, Any]) -> tuple[int, bool | str | None]:
    """A run config's checked ``seed`` (a non-negative integer, default 0) and ``resume`` (true, false, or a
    checkpoint path; the strings ``"true"`` / ``"false"`` read as those); its ``out_dir`` must be set."""
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if not cfg.get("out_dir"):
        raise InputError("the config names no out_dir (set out_dir=runs/NAME)")
    resume = cfg.get("resume", False)
    if not isinstance(resume, (bool, str)) and resume is not None:
        raise InputError(f"resume must be true, false or a checkpoint path, got {resume!r}")
    if isinstance(resume, str):
        resume = {"true": True, "false": False, "": False}.get(resume.strip().lower(), resume)
    return seed, resume


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`load_yaml` then :func:`apply_overrides`. Section keys are checked later by their consumer."""
    return apply_overrides(load_yaml(path), overrides)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The resolved config as YAML, top-level keys first, sections in order (for ``out_dir/config.yaml``)."""
    ordered: dict[str, Any] = {k: cfg[k] for k in TOP_LEVEL_KEYS if k in cfg}
    for section in SECTIONS:
        ordered[section] = dict(cfg.get(section) or {})
    return dump_yaml(ordered)


def dump_yaml(ordered: Mapping[str, Any]) -> str:
    """``ordered`` (keys in the order to write them) as YAML, paths as strings."""
    return yaml.safe_dump(_plain(ordered), sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
