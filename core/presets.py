"""Model size presets: one table of data, not one function per size (cf. timm's ViT variants)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from unimae.core.errors import look_up

__all__ = ["MODEL_PRESETS", "model_preset", "expand_preset"]

#: encoder width/depth/heads follow ViT-Ti/S/B/L; decoders follow MAE (512 x 8) for base and up and
#: are scaled down for the small sizes. ``micro`` is for demos and CPU tests.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(embed_dim=64, depth=4, num_heads=2, decoder_dim=64, decoder_depth=1, decoder_heads=2),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=256, decoder_depth=4, decoder_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_dim=512, decoder_depth=8, decoder_heads=16),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_dim=512, decoder_depth=8, decoder_heads=16),
}


def model_preset(name: str) -> dict[str, Any]:
    """A copy of the preset's constructor arguments; an unknown name lists the known ones."""
    return dict(MODEL_PRESETS[look_up(name, MODEL_PRESETS, what="model preset")])


def expand_preset(
    section: Mapping[str, Any], *, accepted: Collection[str] | None = None, default: str | None = None
) -> dict[str, Any]:
    """A model section with its ``preset`` key expanded: the preset's values (only the ``accepted`` keys,
    when given), then the section's explicit keys, which win. ``default`` is the preset of a section
    without a ``preset`` key; ``preset: null`` means none.

    The one place a preset becomes constructor arguments (pretraining, fine-tuning, :func:`build_mae`,
    :meth:`EncoderConfig.from_preset <unimae.core.encoder_config.EncoderConfig.from_preset>`).
    """
    args = dict(section)
    name = args.pop("preset", default)
    out = {k: v for k, v in (model_preset(name) if name else {}).items() if accepted is None or k in accepted}
    out.update(args)
    return out
