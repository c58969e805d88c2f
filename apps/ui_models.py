"""The app's model picker: the demo models plus every task checkpoint found under ``--models``.

Each entry is labelled from its checkpoint JSON (domain, task, classes). Clients pick a model by its
*key* (``demo/fundus_segment``, ``models/run1/best``): a key is resolved on the server, so an API caller
can never make the app open an arbitrary path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimae.core.checkpoint_io import FORMAT, checkpoint_paths, read_checkpoint_meta
from unimae.core.errors import InputError
from unimae.core.inference import parse_task_metadata

__all__ = ["ModelEntry", "ModelCatalog", "scan_checkpoints"]

_MAX_CLASSES_SHOWN = 6


@dataclass(frozen=True)
class ModelEntry:
    """One runnable task checkpoint.

    Attributes:
        key: what clients send (``demo/<domain>_<task>`` or ``models/<path relative to --models>``).
        path: the checkpoint's JSON file.
        domain, task, class_names, multi_label: from the checkpoint JSON.
        source: ``"demo"`` or ``"local"``.
        model_card: the JSON's ``model_card`` (what the model was trained on, data, licence, metrics, intended
            use), or None when it has none (a user's own checkpoint).
    """

    key: str
    path: Path
    domain: str
    task: str
    class_names: tuple[str, ...]
    multi_label: bool = False
    source: str = "local"
    model_card: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def trained_on(self) -> str | None:
        """``"real"`` or ``"synthetic"`` (from the model card; a demo model without one was built from synthetic
        data), None when unknown (a user's checkpoint without a card)."""
        card = self.model_card or {}
        value = card.get("trained_on")
        if value in ("real", "synthetic"):
            return str(value)
        return "synthetic" if self.source == "demo" else None

    @property
    def label(self) -> str:
        """``name · classes`` for the picker (the tab already says domain and task)."""
        names = list(self.class_names)
        shown = ", ".join(names[:_MAX_CLASSES_SHOWN]) + (f", +{len(names) - _MAX_CLASSES_SHOWN}" if len(names) > _MAX_CLASSES_SHOWN else "")
        kind = " (multi-label)" if self.multi_label else ""
        if self.source == "demo":
            data = (self.model_card or {}).get("data") or {}
            name = {"real": f"demo model, real data ({data.get('name', 'public images')})",
                    "synthetic": "demo model, synthetic data"}.get(self.trained_on or "", "demo model")  # fmt: skip
        else:
            name = self.key.removeprefix("models/")
        return f"{name} · {self.domain} {self.task}{kind} · {shown}"

    def as_row(self) -> list[str]:
        return [self.key, self.domain, self.task, ", ".join(self.class_names), self.source, self.trained_on or "",
                str(self.path)]  # fmt: skip


def _entry(json_path: Path, key: str, source: str) -> ModelEntry:
    meta = read_checkpoint_meta(json_path)
    if meta.get("format") != FORMAT:
        raise InputError("not a UniMAE checkpoint", json_path)
    tensors, _ = checkpoint_paths(json_path)
    if not tensors.is_file():
        raise InputError(f"weights {tensors.name} missing", json_path)
    info = parse_task_metadata(meta, json_path)
    card = meta.get("model_card")
    return ModelEntry(
        key=key,
        path=json_path,
        domain=info["domain"],
        task=info["task"],
        class_names=tuple(info["class_names"]),
        multi_label=bool(info["multi_label"]),
        source=source,
        model_card=dict(card) if isinstance(card, Mapping) else None,
    )


def scan_checkpoints(root: str | Path, *, prefix: str = "models", source: str = "local") -> tuple[list[ModelEntry], list[str]]:
    """Every task checkpoint under ``root`` (recursively): ``(entries, one-line reasons for skipped files)``.

    A JSON that is not a UniMAE checkpoint at all is ignored silently; training-state files
    (``*.state.json``) are not models. Keys are ``PREFIX/<path relative to root, without .json>``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError("models folder not found", root)
    entries: list[ModelEntry] = []
    skipped: list[str] = []
    for json_path in sorted(root.rglob("*.json")):
        if json_path.name.endswith(".state.json") or any(p.startswith(".") for p in json_path.relative_to(root).parts):
            continue
        rel = json_path.relative_to(root).with_suffix("").as_posix()
        try:
            entries.append(_entry(json_path, f"{prefix}/{rel}", source))
        except InputError as err:
            if "not a UniMAE checkpoint" not in str(err) and "not valid JSON" not in str(err):
                skipped.append(str(err))
    return entries, skipped


class ModelCatalog:
    """Demo models first, then the checkpoints under ``models_dir``; :meth:`refresh` rescans the folder.

    Args:
        demo: ``{"<domain>_<task>": checkpoint JSON path}`` of the demo models (shipped and built).
        models_dir: a folder of the user's checkpoints (scanned recursively), or None.
        pending: ``"<domain>_<task>"`` demo models still being built (first start): asking for one says so.
    """

    def __init__(self, demo: dict[str, Path] | None = None, models_dir: str | Path | None = None,
                 pending: Iterable[str] = ()) -> None:  # fmt: skip
        self.models_dir = Path(models_dir).expanduser() if models_dir is not None else None
        self._demo: list[ModelEntry] = []
        for name, path in sorted((demo or {}).items()):
            self._demo.append(_entry(Path(path), f"demo/{name}", "demo"))
        self._local: list[ModelEntry] = []
        self.skipped: list[str] = []
        self.pending: set[str] = set(pending) - set(demo or {})
        self.build_failed: str | None = None
        self._lock = threading.Lock()
        self.refresh()

    def add_demo(self, models: Mapping[str, Path]) -> None:
        """Add demo models built after start-up (they are no longer pending)."""
        new = [_entry(Path(path), f"demo/{name}", "demo") for name, path in sorted(models.items())]
        with self._lock:
            have = {e.key for e in self._demo}
            self._demo = sorted(self._demo + [e for e in new if e.key not in have], key=lambda e: e.key)
            self.pending -= set(models)

    def build_ended(self, reason: str) -> None:
        """The background build of the pending demo models failed: say why when one is asked for."""
        with self._lock:
            self.build_failed = reason

    def refresh(self) -> list[str]:
        """Rescan ``models_dir``; returns the skipped files' reasons."""
        if self.models_dir is None:
            return []
        entries, skipped = scan_checkpoints(self.models_dir)
        with self._lock:
            self._local, self.skipped = entries, skipped
        return skipped

    def entries(self, domain: str | None = None, task: str | None = None) -> list[ModelEntry]:
        with self._lock:
            items = self._demo + self._local
        return [e for e in items if (domain is None or e.domain == domain) and (task is None or e.task == task)]

    def choices(self, domain: str, task: str) -> list[tuple[str, str]]:
        """``(label, key)`` pairs for a picker."""
        return [(e.label, e.key) for e in self.entries(domain, task)]

    def default_key(self, domain: str, task: str) -> str | None:
        found = self.entries(domain, task)
        return found[0].key if found else None

    def resolve(self, key: str | None, domain: str, task: str) -> ModelEntry:
        """The entry for ``key`` (default: the first model for this domain and task).

        Raises :class:`InputError` for an unknown key or a model of another domain or task.
        """
        if not key:
            found = self.entries(domain, task)
            if not found:
                raise InputError(self._missing(domain, task))
            return found[0]
        for attempt in range(2):
            hit = next((e for e in self.entries() if e.key == key), None)
            if hit is not None:
                break
            if attempt == 0 and self.models_dir is not None:
                self.refresh()  # a checkpoint saved after start-up
        if hit is None and key == f"demo/{domain}_{task}" and f"{domain}_{task}" in self.pending:
            raise InputError(self._missing(domain, task))
        if hit is None:
            known = ", ".join(e.key for e in self.entries(domain, task)) or "none"
            raise InputError(f"unknown model {key!r}; {domain} {task} models: {known}")
        if hit.domain != domain or hit.task != task:
            raise InputError(f"model {key!r} is a {hit.domain} {hit.task} model, not {domain} {task}")
        return hit

    def _missing(self, domain: str, task: str) -> str:
        if f"{domain}_{task}" in self.pending:
            if self.build_failed:
                return f"the {domain} {task} demo model could not be built ({self.build_failed}); run `unimae demo`"
            return (f"the {domain} {task} demo model is still being built from synthetic data (first start only, "
                    "progress in the terminal); try again in a minute")  # fmt: skip
        return f"no {domain} {task} model is available; build the demo models or pass --models"

    def rows(self) -> list[list[str]]:
        return [e.as_row() for e in self.entries()]

    @staticmethod
    def columns() -> Sequence[str]:
        return ("key", "domain", "task", "classes", "source", "trained on", "checkpoint")

    def __iter__(self) -> Iterable[ModelEntry]:
        return iter(self.entries())
