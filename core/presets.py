"""Model size presets: one table of data, not one function per size (cf. timm's ViT variants)."""

from __future__ import annotations

from typing import Any

from unimae.core.errors import look_up

__all__ = ["MODEL_PRESETS", "model_preset"]

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
