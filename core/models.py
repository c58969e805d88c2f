"""Fine-tuning models: the UniMAE encoder with a classification or segmentation head.

Both take an :class:`~unimae.core.encoder_config.EncoderConfig` (``encoder=``) or its fields as keyword
arguments (so a pretraining config and a schema-1 checkpoint's flat ``model_config`` map onto them), with
the fine-tuning defaults :data:`~unimae.core.encoder_config.FINETUNE_DEFAULTS`. :func:`load_encoder_from_mae`
copies an MAE's encoder weights into them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unimae.core.encoder import ViTEncoder
from unimae.core.encoder_config import FINETUNE_DEFAULTS, EncoderConfig, EncoderModel, encoder_args
from unimae.core.heads import ClassificationHead, SegmentationDecoder, default_feature_layers, tokens_to_grid
from unimae.core.masking import token_validity
from unimae.core.patch_embed import pad_to_patch

__all__ = ["MAEClassifier", "MAESegmenter", "encoder_args", "load_encoder_from_mae"]


def _finetune_encoder(owner: str, encoder: EncoderConfig | Mapping[str, Any] | None, fields: dict[str, Any]) -> ViTEncoder:
    return ViTEncoder(EncoderConfig.from_args(encoder, defaults=FINETUNE_DEFAULTS, owner=owner, **fields))


class MAEClassifier(EncoderModel, nn.Module):
    """Encoder + pooled linear head. ``multi_label`` only records how logits are meant (sigmoid vs softmax).

    Args:
        num_classes: number of classes (or findings, for multi-label).
        multi_label: logits are independent sigmoids (BCE) instead of a softmax (CE).
        pool: ``"avg"`` or ``"cls"``.
        head_dropout: dropout before the linear layer.
        encoder: the :class:`~unimae.core.encoder_config.EncoderConfig` (or its dict).
        Remaining keyword arguments: encoder fields, over ``encoder``'s.
    """

    def __init__(
        self,
        num_classes: int,
        multi_label: bool = False,
        pool: str = "avg",
        head_dropout: float = 0.0,
        *,
        encoder: EncoderConfig | Mapping[str, Any] | None = None,
        **encoder_fields: Any,
    ) -> None:
        super().__init__()
        self.model_args = {"num_classes": num_classes, "multi_label": multi_label, "pool": pool,
                           "head_dropout": head_dropout}  # fmt: skip
        self.encoder = _finetune_encoder(type(self).__name__, encoder, encoder_fields)
        self.head = ClassificationHead(self.encoder.embed_dim, num_classes, pool, head_dropout)
        self.multi_label = bool(multi_label)

    def forward(
        self, x: torch.Tensor, *, valid: torch.Tensor | None = None, channels: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Logits ``(B, num_classes)``; the average pool only covers tokens inside ``valid``."""
        out = self.encoder(x, valid=valid, channels=channels)
        tv = token_validity(out["valid"], self.encoder.patch_size) if out["valid"] is not None else None
        if tv is not None and not bool(tv.any(1).all()):
            tv = None  # a sample with no valid token: fall back to all tokens rather than divide by zero
        return self.head(out["tokens"], self.encoder.num_prefix_tokens, tv)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


class MAESegmenter(EncoderModel, nn.Module):
    """Encoder + hierarchical conv decoder with a full-resolution path (2D or 3D).

    Args:
        num_classes: output classes including background.
        feature_size: decoder stem width (see :class:`SegmentationDecoder`).
        num_features: encoder depths fed to the decoder.
        feature_layers: explicit 1-based block indices (default: evenly spaced, ending at the last block).
        encoder: the :class:`~unimae.core.encoder_config.EncoderConfig` (or its dict).
        Remaining keyword arguments: encoder fields, over ``encoder``'s.
    """

    def __init__(
        self,
        num_classes: int,
        feature_size: int = 16,
        num_features: int = 4,
        feature_layers: Sequence[int] | None = None,
        *,
        encoder: EncoderConfig | Mapping[str, Any] | None = None,
        **encoder_fields: Any,
    ) -> None:
        super().__init__()
        self.model_args = {"num_classes": num_classes, "feature_size": feature_size, "num_features": num_features,
                           "feature_layers": None if feature_layers is None else list(feature_layers)}  # fmt: skip
        self.encoder = _finetune_encoder(type(self).__name__, encoder, encoder_fields)
        cfg, depth = self.encoder_config, self.encoder.depth
        # in spectral mode the conv path reads the image projected into the shared spectral space
        stem_in = cfg.spectral_dim if cfg.channel_mode == "spectral" else self.encoder.in_chans
        self.decoder = SegmentationDecoder(
            cfg.spatial_dims, stem_in, cfg.embed_dim, self.encoder.patch_size, num_classes,
            feature_size=feature_size, num_features=min(num_features, depth),
        )
        n = self.decoder.num_features
        self.feature_layers = list(feature_layers) if feature_layers else default_feature_layers(depth, n)
        if len(self.feature_layers) != n:
            raise ValueError(f"feature_layers {self.feature_layers} must list {n} block indices")
        self.num_classes = int(num_classes)

    def forward(
        self, x: torch.Tensor, *, valid: torch.Tensor | None = None, channels: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Logits ``(B, num_classes, *S)`` at the input's size (patch padding is cropped off)."""
        out = self.encoder(x, valid=valid, channels=channels, return_layers=self.feature_layers)
        grid, prefix = out["grid"], self.encoder.num_prefix_tokens
        feats = [tokens_to_grid(f, grid, prefix) for f in out["features"][:-1]]
        feats.append(tokens_to_grid(out["tokens"], grid, prefix))  # the last one normalised
        image = x
        if self.encoder.channel_mode == "spectral":
            # the conv path sees the bands in the encoder's shared spectral space
            band_idx = self.encoder.patch_embed.band_indices(channels)
            resp = self.encoder.patch_embed.responses(band_idx).to(x.dtype)  # (C, K)
            image = torch.einsum("bc...,ck->bk...", x, resp) / len(band_idx)
        padded, _ = pad_to_patch(image, self.encoder.patch_size)
        logits = self.decoder(padded, feats)
        crop = tuple(slice(0, s) for s in x.shape[2:])
        return logits[(..., *crop)]

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


def load_encoder_from_mae(model: nn.Module, mae_state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy ``encoder.*`` weights of a MaskedAutoencoder state dict into ``model.encoder``.

    Returns ``(missing, unexpected)`` encoder keys; shape mismatches count as missing.
    """
    target = model.encoder.state_dict()
    src = {k[len("encoder."):]: v for k, v in mae_state.items() if k.startswith("encoder.")}
    usable = {k: v for k, v in src.items() if k in target and target[k].shape == v.shape}
    model.encoder.load_state_dict(usable, strict=False)
    missing = sorted(set(target) - set(usable))
    unexpected = sorted(set(src) - set(usable))
    return missing, unexpected
