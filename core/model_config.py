"""A config's ``model`` section -> constructor arguments: the one resolution pretraining and fine-tuning share.

``unimae pretrain`` builds a :class:`~unimae.core.mae.MaskedAutoencoder`, ``unimae finetune`` a classifier,
segmenter or MAE, possibly starting from a pretraining checkpoint. Both go through
:func:`resolve_model_args`: the size preset is expanded (:func:`~unimae.core.presets.expand_preset`),
the section's explicit keys win over it, the init checkpoint's architecture
(:func:`init_architecture`) wins over both, and the result is checked against the data (dimensions,
channels). What the section may contain is :func:`model_keys`.

Domain-agnostic: the caller passes what it knows of the domain (its name, dimensions and a channel-name
resolver), never the plugin's type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from unimae.core.checkpoint_io import model_arguments
from unimae.core.encoder_config import ARCHITECTURE_KEYS, ENCODER_KEYS, EncoderModel
from unimae.core.errors import InputError
from unimae.core.presets import expand_preset

__all__ = ["model_keys", "init_architecture", "resolve_model_args", "build_configured"]

#: MAE settings that stay the fine-tuning config's when a whole MAE is continued (anomaly training)
_TRAINING_CHOICES = ("drop_path_rate", "mask_ratio", "predict_variance")


def model_keys(cls: type[nn.Module]) -> list[str]:
    """``preset``, the model's own constructor arguments and, for a model on a UniMAE encoder, the
    encoder's fields: the keys a ``model`` section may set for ``cls``."""
    own = [
        n for n, p in inspect.signature(cls.__init__).parameters.items()
        if n not in ("self", "encoder") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]  # fmt: skip
    return ["preset", *own, *(ENCODER_KEYS if issubclass(cls, EncoderModel) else ())]


def init_architecture(meta: Mapping[str, Any], *, whole: bool = False) -> dict[str, Any]:
    """The constructor arguments an init checkpoint fixes: its encoder's architecture
    (:data:`~unimae.core.encoder_config.ARCHITECTURE_KEYS` that it records), or with ``whole`` (an MAE
    continued as an MAE) every argument but the training choices (stochastic depth, masking ratio and
    whether to add a variance head stay the config's). Reads schema 1 and 2 checkpoints alike."""
    cfg = model_arguments(dict(meta))
    if whole:
        return {k: v for k, v in cfg.items() if k not in _TRAINING_CHOICES}
    return {k: cfg[k] for k in ARCHITECTURE_KEYS if k in cfg}


def resolve_model_args(
    model_cls: type[nn.Module],
    section: Mapping[str, Any],
    *,
    domain: str,
    spatial_dims: int,
    data_channels: Sequence[Mapping[str, Any]] | None,
    data_chans: int,
    resolve_channels: Callable[[Any], list[dict] | None],
    arch: Mapping[str, Any] | None = None,
    default_preset: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Constructor arguments for ``model_cls`` from a ``model`` section; returns ``(kwargs, notes)``.

    Args:
        section: the config's ``model`` section (keys checked by the caller against :func:`model_keys`).
        domain, spatial_dims: the data's domain name (for messages) and dimensionality.
        data_channels: the data's channel descriptions ``[{"name", "wavelength"}]`` when known.
        data_chans: the data's channel count.
        resolve_channels: turns ``model.channels`` (a list, a band-preset name or None) into descriptions.
        arch: constructor arguments fixed by an init checkpoint (:func:`init_architecture`); they win
            over the section, and each one that overrides a section value gives a note.
        default_preset: the preset of a section without a ``preset`` key.

    Raises:
        InputError: dimensions or channels that do not match the data, a spectral model without bands.
    """
    accepted = set(model_keys(model_cls)) - {"preset"}
    kwargs = expand_preset(section, accepted=accepted, default=default_preset)
    kwargs["channels"] = resolve_channels(kwargs.get("channels"))
    notes: list[str] = []
    if arch:
        changed = [k for k, v in arch.items() if k in kwargs and k != "channels" and kwargs[k] != v]
        if changed:
            notes.append(
                "architecture from the init checkpoint: " + ", ".join(f"{k}={arch[k]!r} (config {kwargs[k]!r})" for k in changed)
            )
        kwargs.update({k: v for k, v in arch.items() if k in accepted and (k != "channels" or v)})
    dims = kwargs.setdefault("spatial_dims", spatial_dims)
    if dims != spatial_dims:
        raise InputError(f"model.spatial_dims is {dims} but {domain} data are {spatial_dims}D")
    names = [str(c["name"]) for c in data_channels] if data_channels else None
    channels = kwargs.get("channels")
    if kwargs.get("channel_mode", "fixed") == "spectral":
        channels = channels or ([dict(c) for c in data_channels] if data_channels else None)
        if not channels:
            raise InputError("model.channel_mode=spectral needs model.channels (a band preset or a list)")
        known = {c["name"] for c in channels}
        missing = [n for n in names or [] if n not in known]
        if missing:
            raise InputError(f"the data have bands {missing} that the model does not know ({sorted(known)})")
        kwargs["in_chans"] = len(channels)
    else:
        chans = kwargs.setdefault("in_chans", data_chans)
        if chans != data_chans:
            if arch and "in_chans" in arch:
                raise InputError(f"the init checkpoint's model takes {chans} channel(s) but the {domain} data have {data_chans}")
            raise InputError(f"model.in_chans is {chans} but the {domain} data have {data_chans} channel(s)")
        if channels is None and data_channels and len(data_channels) == chans:
            channels = [{"name": str(c["name"]), "wavelength": c.get("wavelength")} for c in data_channels]
    kwargs["channels"] = channels
    return kwargs, notes


def build_configured(model_cls: type[nn.Module], kwargs: Mapping[str, Any]) -> nn.Module:
    """``model_cls(**kwargs)``, a bad value reported as a one-line :class:`InputError` (``model: ...``)."""
    try:
        return model_cls(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as err:
        raise InputError(f"model: {err}") from None
