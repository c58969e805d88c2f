"""One typed description of the encoder, shared by the MAE, the classifier and the segmenter.

Before this module every model constructor restated the encoder's fourteen arguments with its own
defaults, and a checkpoint recorded whatever ``locals()`` held. Now :class:`EncoderConfig` holds them
once: the models build it from the keyword arguments they still accept (configs and old checkpoints
pass those), :class:`~unimae.core.encoder.ViTEncoder` is built from it, and a checkpoint stores it as
its own ``"encoder"`` section (schema 2, see :mod:`unimae.core.checkpoint_io`).

Defaults are the ViT-B/16 encoder of the MAE paper. The one default that differs between model kinds
is stochastic depth: none while pretraining (MAE), 0.1 in the fine-tuning models
(:data:`FINETUNE_DEFAULTS`, the MAE fine-tuning recipe for ViT-B); it is stated here, once.

This module imports no torch, so reading a checkpoint's description stays cheap (the app lists
models before it imports the model code).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unimae.core.errors import look_up
from unimae.core.presets import expand_preset

__all__ = [
    "ENCODER_KEYS",
    "ARCHITECTURE_KEYS",
    "FINETUNE_DEFAULTS",
    "CHANNEL_MODES",
    "STEMS",
    "EncoderConfig",
    "EncoderModel",
    "encoder_args",
]

CHANNEL_MODES = ("fixed", "spectral")
STEMS = ("patch", "conv")


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that shapes a :class:`~unimae.core.encoder.ViTEncoder` (its layer classes aside).

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_chans: input channels for ``channel_mode="fixed"`` (spectral mode counts ``channels`` instead
            and keeps this value only as given).
        channel_mode: ``"fixed"`` (a conv over ``in_chans``) or ``"spectral"`` (wavelength-conditioned).
        channels: the known bands ``[{"name", "wavelength"}]`` (required for spectral, recorded otherwise).
        patch_size: patch edge length or per-axis sizes.
        embed_dim, depth, num_heads, mlp_ratio: transformer size (see ``MODEL_PRESETS``).
        drop_path_rate: stochastic depth at the last block.
        spectral_dim: width of the shared spectral space (spectral mode).
        class_token: prepend a learned class token.
        stem: ``"patch"`` (one linear map per patch, ViT/MAE) or ``"conv"`` (stride-2 convolution stages
            before the transformer, :class:`~unimae.core.conv_stem.ConvStem`).
        stem_width: channels of the conv stem's first stage (doubled per stage).

    Values are checked and normalised on construction (integers stay integers, a per-axis patch size
    is a tuple), so two configs that build the same encoder compare equal.
    """

    spatial_dims: int = 2
    in_chans: int = 3
    channel_mode: str = "fixed"
    channels: tuple[dict[str, Any], ...] | None = None
    patch_size: int | tuple[int, ...] = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    spectral_dim: int = 32
    class_token: bool = True
    stem: str = "patch"
    stem_width: int = 32

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise in place once, here
        for name in ("spatial_dims", "in_chans", "embed_dim", "depth", "num_heads", "spectral_dim", "stem_width"):
            put(self, name, _integer(name, getattr(self, name)))
        for name in ("mlp_ratio", "drop_path_rate"):
            put(self, name, _number(name, getattr(self, name)))
        put(self, "class_token", bool(self.class_token))
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        look_up(self.channel_mode, CHANNEL_MODES, what="channel_mode")
        look_up(self.stem, STEMS, what="stem")
        put(self, "patch_size", _patch(self.patch_size, self.spatial_dims))
        if self.channels is not None:
            put(self, "channels", tuple(dict(c) for c in self.channels))
        if self.channel_mode == "spectral":
            if not self.channels:
                raise ValueError("channel_mode='spectral' needs the known `channels` (names and wavelengths)")
        elif self.channels and len(self.channels) != self.in_chans:
            raise ValueError(f"{len(self.channels)} channel descriptions for in_chans={self.in_chans}")

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def from_args(
        cls,
        config: EncoderConfig | Mapping[str, Any] | None = None,
        /,
        *,
        defaults: Mapping[str, Any] | None = None,
        owner: str = "EncoderConfig",
        **args: Any,
    ) -> EncoderConfig:
        """The config a model constructor was given: ``config`` (or its dict), then keyword ``args``
        over it; ``defaults`` (e.g. :data:`FINETUNE_DEFAULTS`) fill only fields that neither sets.

        An argument that is not an encoder field raises ``TypeError`` naming ``owner``, as Python
        would for an unknown keyword.
        """
        unknown = [k for k in args if k not in ENCODER_KEYS]
        if unknown:
            raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
        if isinstance(config, EncoderConfig):
            return config.replace(**args) if args else config
        given = {**dict(config or {}), **args}
        unknown = [k for k in given if k not in ENCODER_KEYS]
        if unknown:
            raise TypeError(f"{owner}() got an unexpected encoder field {unknown[0]!r}")
        return cls(**{**dict(defaults or {}), **given})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EncoderConfig:
        """Read :meth:`to_dict`'s output (a checkpoint's ``"encoder"`` section); unknown fields raise ``TypeError``."""
        return cls.from_args(values, owner="EncoderConfig")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EncoderConfig:
        """A size preset's encoder (``micro`` ... ``large``) with explicit fields over it."""
        return cls.from_args(expand_preset({"preset": name, **overrides}, accepted=ENCODER_KEYS))

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    # -- reading -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values in field order: the checkpoint's ``"encoder"`` section and constructor keywords."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["channels"] = None if self.channels is None else [dict(c) for c in self.channels]
        if not isinstance(self.patch_size, int):
            out["patch_size"] = list(self.patch_size)
        return out

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the weights' shapes and meaning (:data:`ARCHITECTURE_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k in ARCHITECTURE_KEYS}


#: the encoder's fields in constructor order (what a model section may set besides the model's own keys)
ENCODER_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EncoderConfig))
#: the fields an initial checkpoint fixes when fine-tuning from it; stochastic depth is a training choice
ARCHITECTURE_KEYS: tuple[str, ...] = tuple(k for k in ENCODER_KEYS if k != "drop_path_rate")
#: the fine-tuning models' encoder defaults where they differ from pretraining's (MAE: drop path 0.1 for ViT-B)
FINETUNE_DEFAULTS: dict[str, Any] = {"drop_path_rate": 0.1}


def encoder_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder fields contained in a flat model config dict (e.g. a schema-1 checkpoint's ``model_config``)."""
    return {k: config[k] for k in ENCODER_KEYS if k in config}


class EncoderModel:
    """Mixin for models built on one :class:`~unimae.core.encoder.ViTEncoder` (``self.encoder``).

    A model sets ``self.model_args`` (its own constructor arguments, JSON values) and gets
    ``encoder_config`` and ``config``: the flat dict of every constructor argument that rebuilds it,
    kept for code that read ``model.config`` before the encoder had its own config.
    """

    model_args: dict[str, Any]

    @property
    def encoder_config(self) -> EncoderConfig:
        return self.encoder.encoder_config  # type: ignore[attr-defined]

    @property
    def config(self) -> dict[str, Any]:
        return {**self.model_args, **self.encoder_config.to_dict()}


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _patch(value: Any, dims: int) -> int | tuple[int, ...]:
    """An edge length stays an int; per-axis sizes become a tuple of ``dims`` ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        sizes = tuple(_integer("patch_size", v) for v in value)
        if len(sizes) != dims:
            raise ValueError(f"patch_size {value!r} must have {dims} entries for {dims}D inputs")
        return sizes
    return _integer("patch_size", value)
