"""Checkpoints: ``NAME.safetensors`` (tensors) + ``NAME.json`` (model config and preprocessing contract).

Nothing here unpickles. A checkpoint records everything needed to rebuild the model and feed it:

.. code-block:: json

    {"format": "unimae-checkpoint", "version": 1,
     "model_class": "MaskedAutoencoder", "model_config": {...constructor arguments...},
     "contract": {"domain": "fundus", "spatial_dims": 2, "channels": [...], "patch_size": 16,
                  "input_size": [224, 224], "normalization": {...}},
     "...": "anything else the writer adds (task, classes, step, metrics)"}

Both files are written atomically (temporary file, then rename), tensors first and JSON last, so a
reader that finds the JSON finds matching tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unimae.core.errors import InputError, look_up
from unimae.core.fileio import atomic_path

__all__ = [
    "FORMAT",
    "register_model_class",
    "model_classes",
    "checkpoint_paths",
    "save_tensors",
    "load_tensors",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "build_model",
]

FORMAT = "unimae-checkpoint"
VERSION = 1

_MODEL_CLASSES: dict[str, Callable[..., nn.Module]] = {}


def register_model_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls`` loadable from checkpoints by its class name (usable as a decorator)."""
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def model_classes() -> dict[str, Callable[..., nn.Module]]:
    """The loadable model classes: the built-in ones plus any registered by user code."""
    if "MaskedAutoencoder" not in _MODEL_CLASSES:
        from unimae.core import models  # noqa: F401  (registers MAEClassifier, MAESegmenter)
        from unimae.core.mae import MaskedAutoencoder

        register_model_class(MaskedAutoencoder)
    return dict(_MODEL_CLASSES)


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``run/last``, ``run/last.json`` or ``run/last.safetensors`` -> (tensor file, JSON file)."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``PATH.safetensors`` and ``meta`` to ``PATH.json``, atomically. Returns the JSON path."""
    tensor_path, json_path = checkpoint_paths(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(tensor_path) as tmp:
        save_file(clean, str(tmp))
    text = json.dumps(_jsonable(meta), indent=2, sort_keys=False)
    with atomic_path(json_path) as tmp:
        tmp.write_text(text + "\n")
    return json_path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON half of a checkpoint; a missing or malformed file raises :class:`InputError`."""
    tensor_path, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise InputError(f"checkpoint metadata {json_path.name} not found (expected beside {tensor_path.name})", path)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"checkpoint metadata is not valid JSON ({err})", json_path) from err
    if not isinstance(meta, dict):
        raise InputError("checkpoint metadata is not a JSON object", json_path)
    return meta


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read both halves of a checkpoint without unpickling anything."""
    tensor_path, _ = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    if not tensor_path.is_file():
        raise InputError(f"checkpoint weights {tensor_path.name} not found", path)
    try:
        tensors = load_file(str(tensor_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"checkpoint weights are unreadable or corrupt ({err})", tensor_path) from err
    return tensors, meta


def save_checkpoint(
    path: str | Path, model: nn.Module, *, contract: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """Save a model built from its constructor arguments (``model.config``) plus its input contract."""
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if not hasattr(module, "config"):
        raise TypeError(f"{type(module).__name__} has no `config` of constructor arguments; cannot checkpoint it")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(module).__name__,
        "model_config": module.config,
        "contract": contract or {},
        **extra,
    }
    return save_tensors(path, module.state_dict(), meta)


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Instantiate the model a checkpoint's metadata describes (weights not loaded)."""
    if meta.get("format") != FORMAT:
        raise InputError(f"not a UniMAE checkpoint (format {meta.get('format')!r}); import foreign weights instead")
    classes = model_classes()
    name = look_up(str(meta.get("model_class")), classes, what="model class")
    return classes[name](**meta.get("model_config", {}))


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", strict: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model and load its weights. Returns ``(model in eval mode, metadata)``."""
    tensors, meta = load_tensors(path, device="cpu")
    model = build_model(meta)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise InputError(
            f"checkpoint does not match its model config: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}",
            path,
        )
    return model.to(device).eval(), meta
