"""Checkpoint files: ``NAME.safetensors`` (tensors) + ``NAME.json`` (model description and input contract).

Nothing here unpickles, and nothing here imports the model code: listing checkpoints and reading their
metadata stays cheap (the app does it before the models are imported). Building a model from a
checkpoint is :mod:`unimae.core.checkpoint`'s job. A checkpoint JSON looks like:

.. code-block:: json

    {"format": "unimae-checkpoint", "version": 1, "schema": 2,
     "model_class": "MAEClassifier", "model_config": {"num_classes": 2, "pool": "avg", "...": "..."},
     "encoder": {"spatial_dims": 2, "in_chans": 3, "patch_size": 16, "embed_dim": 768, "...": "..."},
     "contract": {"domain": "fundus", "spatial_dims": 2, "channels": [...], "patch_size": 16,
                  "input_size": [224, 224], "normalization": {...}},
     "...": "anything else the writer adds (task, classes, step, metrics)"}

``version`` is the file pair's format. ``schema`` is how the model is described:

* schema 1 (no ``schema`` key; written before the encoder had its own config): ``model_config`` holds
  every constructor argument, encoder fields included, flat;
* schema 2: ``encoder`` holds the :class:`~unimae.core.encoder_config.EncoderConfig` and ``model_config``
  only the model's own arguments (head, decoder, masking).

:func:`model_arguments` reads both as one flat dict; a schema newer than :data:`SCHEMA` is refused.

Both files are written atomically (temporary file, then rename), tensors first and JSON last, so a
reader that finds the JSON finds matching tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unimae.core.encoder_config import EncoderConfig, encoder_args
from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path

__all__ = [
    "FORMAT",
    "VERSION",
    "SCHEMA",
    "checkpoint_paths",
    "save_tensors",
    "load_tensors",
    "save_checkpoint",
    "read_checkpoint_meta",
    "checkpoint_schema",
    "model_arguments",
    "encoder_config",
    "to_jsonable",
]

FORMAT = "unimae-checkpoint"
VERSION = 1
#: the newest model description this code writes and reads (see the module docstring)
SCHEMA = 2


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``run/last``, ``run/last.json`` or ``run/last.safetensors`` -> (tensor file, JSON file)."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def to_jsonable(value: Any, *, finite: bool = False) -> Any:
    """``value`` with JSON types only: mappings with string keys, lists (tuples, tensors, numpy arrays),
    Python scalars (numpy scalars), strings (paths). ``finite``: a NaN scalar becomes None and an infinite
    one the string ``"inf"`` / ``"-inf"`` (strict JSON); otherwise they are kept."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, finite=finite) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if hasattr(value, "tolist"):  # numpy scalars
        value = value.tolist()
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``PATH.safetensors`` and ``meta`` to ``PATH.json``, atomically. Returns the JSON path."""
    tensor_path, json_path = checkpoint_paths(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(tensor_path) as tmp:
        save_file(clean, str(tmp))
    text = json.dumps(to_jsonable(meta), indent=2, sort_keys=False)
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
    """Save a model and its input contract: schema 2 for a model with an ``encoder_config`` and
    ``model_args`` (the built-in ones), else its flat ``config`` of constructor arguments (schema 1, e.g.
    a model class that user code registered)."""
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    described: dict[str, Any]
    encoder = getattr(module, "encoder_config", None)
    if isinstance(encoder, EncoderConfig) and isinstance(getattr(module, "model_args", None), dict):
        described = {"schema": SCHEMA, "model_class": type(module).__name__, "model_config": dict(module.model_args),
                     "encoder": encoder.to_dict()}  # fmt: skip
    elif hasattr(module, "config"):
        described = {"model_class": type(module).__name__, "model_config": module.config}
    else:
        raise TypeError(f"{type(module).__name__} has no `config` of constructor arguments; cannot checkpoint it")
    meta = {"format": FORMAT, "version": VERSION, **described, "contract": contract or {}, **extra}
    return save_tensors(path, module.state_dict(), meta)


def checkpoint_schema(meta: dict[str, Any]) -> int:
    """The metadata's schema (1 when absent); one newer than this code reads raises :class:`InputError`."""
    schema = meta.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise InputError(f"checkpoint schema {schema!r} is not a version number")
    if schema > SCHEMA:
        raise InputError(f"checkpoint schema {schema} is newer than this UniMAE reads ({SCHEMA}); update UniMAE")
    return schema


def model_arguments(meta: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of the checkpoint's model as one flat dict, whatever the schema
    (schema 2: the model's own arguments and the encoder's fields)."""
    own = dict(meta.get("model_config") or {})
    if checkpoint_schema(meta) == 1:
        return own
    return {**own, **dict(meta.get("encoder") or {})}


def encoder_config(meta: dict[str, Any]) -> EncoderConfig:
    """The checkpoint's :class:`EncoderConfig` (schema 1: the encoder fields of the flat ``model_config``,
    which recorded all of them but ``class_token`` in an MAE, always True there)."""
    return EncoderConfig.from_dict(encoder_args(model_arguments(meta)))
