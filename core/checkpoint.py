"""Checkpoints as models: the model classes a checkpoint can name, building one, loading its weights.

The files themselves (paths, atomic writes, the JSON and its schema) are :mod:`unimae.core.checkpoint_io`,
re-exported here; this module adds what needs the model code. The dependency points one way: this
module imports the model classes, they never import it (a model class that user code defines joins
with :func:`register_model_class`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unimae.core.checkpoint_io import (
    FORMAT,
    SCHEMA,
    VERSION,
    checkpoint_paths,
    checkpoint_schema,
    encoder_config,
    load_tensors,
    model_arguments,
    read_checkpoint_meta,
    save_checkpoint,
    save_tensors,
)
from unimae.core.encoder_config import EncoderConfig
from unimae.core.errors import InputError, look_up
from unimae.core.mae import MaskedAutoencoder
from unimae.core.models import MAEClassifier, MAESegmenter

__all__ = [
    "FORMAT",
    "VERSION",
    "SCHEMA",
    "register_model_class",
    "model_classes",
    "checkpoint_paths",
    "save_tensors",
    "load_tensors",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "checkpoint_schema",
    "model_arguments",
    "encoder_config",
    "build_model",
]

_MODEL_CLASSES: dict[str, Callable[..., nn.Module]] = {
    cls.__name__: cls for cls in (MaskedAutoencoder, MAEClassifier, MAESegmenter)
}


def register_model_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls`` loadable from checkpoints by its class name (usable as a decorator)."""
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def model_classes() -> dict[str, Callable[..., nn.Module]]:
    """The loadable model classes: the built-in ones plus any registered by user code."""
    return dict(_MODEL_CLASSES)


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Instantiate the model a checkpoint's metadata describes (weights not loaded), whatever its schema."""
    if meta.get("format") != FORMAT:
        raise InputError(f"not a UniMAE checkpoint (format {meta.get('format')!r}); import foreign weights instead")
    name = look_up(str(meta.get("model_class")), _MODEL_CLASSES, what="model class")
    cls = _MODEL_CLASSES[name]
    if checkpoint_schema(meta) == 1:  # every constructor argument, flat
        return cls(**meta.get("model_config", {}))
    return cls(**meta.get("model_config", {}), encoder=EncoderConfig.from_dict(meta.get("encoder") or {}))


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
