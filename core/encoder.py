"""The unified ViT encoder: one model for ``(B, C, H, W)`` images and ``(B, C, D, H, W)`` volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from unimae.core.conv_stem import ConvStem
from unimae.core.encoder_config import CHANNEL_MODES, STEMS, EncoderConfig
from unimae.core.errors import InputError, check_finite
from unimae.core.masking import MaskSpec
from unimae.core.patch_embed import PatchEmbed, SpectralPatchEmbed, pad_to_patch, patchify, to_tuple, unpatchify
from unimae.core.pos_embed import sincos_pos_embed

__all__ = ["ViTEncoder", "EncoderConfig", "AttentionBlock", "build_blocks", "key_padding_mask", "CHANNEL_MODES", "STEMS"]

def _cpu_autocast() -> bool:
    """Whether autocast (bf16 / fp16) is on for the CPU in this thread."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


class AttentionBlock(Block):
    """timm's pre-norm transformer :class:`Block`, choosing its attention kernel per call.

    On a CPU under bf16 autocast, PyTorch's fused scaled-dot-product attention is slower than the plain
    ``softmax(q k^T) v`` it replaces: its backward alone took 169 ms of an 843 ms ViT-B MAE step (2 x 224^2,
    one thread) against 47 ms in fp32, while the plain path runs as bf16 matrix products. So under CPU
    autocast the block takes the plain path (the whole step: 0.885 -> 0.687 s); everywhere else (fp32, CUDA)
    the fused kernel, unless timm's own setting turned it off. Same parameters and state-dict keys as
    :class:`Block`; the two paths compute the same function."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fused_default = bool(getattr(self.attn, "fused_attn", False))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hasattr(self.attn, "fused_attn"):
            self.attn.fused_attn = self._fused_default and not (x.device.type == "cpu" and _cpu_autocast())
        return super().forward(x, *args, **kwargs)


def build_blocks(
    dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    norm_layer: type[nn.Module] = nn.LayerNorm,
    act_layer: type[nn.Module] = nn.GELU,
) -> nn.ModuleList:
    """``depth`` :class:`AttentionBlock` s (timm blocks) with linearly rising drop path."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
    return nn.ModuleList(
        AttentionBlock(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_path=rates[i],
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        for i in range(depth)
    )


def key_padding_mask(keep: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``(B, L)`` True-for-real-token -> additive attention mask ``(B, 1, 1, L)`` (None if nothing is padded)."""
    if keep is None:
        return None
    out = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    out.masked_fill_(~keep, float("-inf"))
    return out[:, None, None, :]


class ViTEncoder(nn.Module):
    """A ViT encoder with a unified 2D/3D patch embedding and fixed or spectral channel handling.

    Position embeddings are fixed sin-cos built for whatever token grid the input has, so there is no
    ``img_size``: any input size works (sizes not divisible by the patch are zero-padded and the
    padding is marked invalid).

    Args:
        config: the :class:`~unimae.core.encoder_config.EncoderConfig` (or its dict); its fields may
            also be given as keyword arguments, which override ``config``'s.
        norm_layer, act_layer: layer classes passed to timm's ``Block`` (not part of the config: they
            are code, not data a checkpoint could record).

    The config's ``stem="conv"`` makes a hybrid encoder: stride-2 convolution stages before the
    transformer (:class:`~unimae.core.conv_stem.ConvStem`), the default of the shipped fine-tuning
    recipes, which train on small data.
    """

    def __init__(
        self,
        config: EncoderConfig | Mapping[str, Any] | None = None,
        /,
        *,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        **fields: Any,
    ) -> None:
        super().__init__()
        cfg = EncoderConfig.from_args(config, owner=type(self).__name__, **fields)
        self.encoder_config = cfg
        self.stem = cfg.stem
        linear = self.stem == "patch"
        self.spatial_dims = cfg.spatial_dims
        self.channel_mode = cfg.channel_mode
        self.patch_size = to_tuple(cfg.patch_size, self.spatial_dims)
        self.embed_dim = cfg.embed_dim
        self.depth = cfg.depth
        embed_dim, channels = cfg.embed_dim, cfg.channels
        if cfg.channel_mode == "spectral":
            self.patch_embed: nn.Module = SpectralPatchEmbed(
                channels, embed_dim, self.patch_size, self.spatial_dims, spectral_dim=cfg.spectral_dim, project=linear
            )
            self.channels = list(self.patch_embed.channels)
            self.in_chans = len(self.channels)
        else:
            in_chans = cfg.in_chans
            self.patch_embed = PatchEmbed(in_chans, embed_dim, self.patch_size, self.spatial_dims, project=linear)
            self.channels = [dict(c) for c in channels] if channels else [{"name": f"ch{i}", "wavelength": None} for i in range(in_chans)]
            self.in_chans = in_chans
        self.conv_stem: ConvStem | None = None
        if not linear:
            stem_in = cfg.spectral_dim if cfg.channel_mode == "spectral" else self.in_chans
            self.conv_stem = ConvStem(stem_in, embed_dim, self.patch_size, self.spatial_dims, width=cfg.stem_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cfg.class_token else None
        self.blocks = build_blocks(embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path_rate, norm_layer, act_layer)
        self.norm = norm_layer(embed_dim)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    # -- input handling ----------------------------------------------------------------------------
    def prepare(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, channels: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Validate, pad and patchify an input batch.

        Returns a dict with ``patches`` ``(B, N, C, P)``, ``grid``, ``valid`` ``(B, *S')`` or None (padding
        included), ``band_idx`` (spectral) and ``spatial_shape`` (before padding).
        """
        if x.ndim != self.spatial_dims + 2:
            want = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise InputError(f"expected a {self.spatial_dims}D batch {want}, got shape {tuple(x.shape)}")
        check_finite(x, "input image")
        band_idx = None
        if self.channel_mode == "spectral":
            band_idx = self.patch_embed.band_indices(channels)
            if x.shape[1] != len(band_idx):
                raise InputError(
                    f"input has {x.shape[1]} channels but {len(band_idx)} bands were named "
                    f"({', '.join(self.patch_embed.band_names[i] for i in band_idx)})"
                )
        else:
            self.patch_embed.check_channels(x.shape[1])
        if valid is not None:
            if valid.ndim == x.ndim:  # (B, 1, *S)
                valid = valid[:, 0]
            if tuple(valid.shape) != (x.shape[0], *x.shape[2:]):
                raise InputError(f"valid mask shape {tuple(valid.shape)} does not match image {tuple(x.shape)}")
            valid = valid.bool()
        spatial = tuple(x.shape[2:])
        x, valid = pad_to_patch(x, self.patch_size, valid)
        grid = tuple(s // p for s, p in zip(x.shape[2:], self.patch_size))
        return {
            "patches": patchify(x, self.patch_size),
            "grid": grid,
            "valid": valid,
            "band_idx": band_idx,
            "spatial_shape": spatial,
        }

    def embed(
        self, patches: torch.Tensor, grid: Sequence[int], band_idx: Sequence[int] | None = None,
        channel_keep: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch tokens plus position embedding: ``(B, N, E)`` (no class token).

        ``hidden`` ``(B, N)`` (True = hidden from the encoder, MAE) matters only to a conv stem, which
        zeroes those patches so that no visible token sees their content.
        """
        if self.conv_stem is not None:
            image = unpatchify(patches, grid, self.patch_size)  # (B, C, *S')
            if self.channel_mode == "spectral":
                image = self.patch_embed.mix(image, band_idx, channel_keep)
            elif channel_keep is not None:
                image = image * channel_keep.to(image.dtype).reshape(*channel_keep.shape, *([1] * len(grid)))
            visible = None if hidden is None else ~hidden.reshape(hidden.shape[0], *grid)
            tokens = self.conv_stem(image, visible).flatten(2).transpose(1, 2)
        elif self.channel_mode == "spectral":
            tokens = self.patch_embed(patches, band_idx, channel_keep)
        else:
            tokens = self.patch_embed(patches, channel_keep)
        return tokens + sincos_pos_embed(grid, self.embed_dim, tokens.device, tokens.dtype)

    # -- forward -------------------------------------------------------------------------------
    def forward_tokens(
        self,
        tokens: torch.Tensor,
        keep: MaskSpec | None = None,
        return_layers: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Run the transformer on embedded tokens ``(B, N, E)``, optionally only on the visible ones.

        Returns ``tokens`` ``(B, 1 + L, E)`` (normalised, class token first if any), ``keep_pad`` and,
        when ``return_layers`` (1-based block indices, negative counts from the end) is given,
        ``features``: a list of ``(B, 1 + L, E)`` outputs of those blocks (not normalised).
        """
        keep_pad = None
        if keep is not None:
            idx = keep.ids_keep[..., None].expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, idx)
            keep_pad = keep.keep_pad
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
            if keep_pad is not None:
                keep_pad = torch.cat([keep_pad.new_ones(keep_pad.shape[0], 1), keep_pad], dim=1)
        attn_mask = key_padding_mask(keep_pad, tokens.dtype)
        wanted = set()
        if return_layers:
            wanted = {i if i > 0 else self.depth + 1 + i for i in return_layers}
            bad = [i for i in wanted if not 1 <= i <= self.depth]
            if bad:
                raise ValueError(f"return_layers {list(return_layers)} out of range for depth {self.depth}")
        features = []
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, attn_mask=attn_mask)
            if i in wanted:
                features.append(tokens)
        out: dict[str, Any] = {"tokens": self.norm(tokens), "keep_pad": keep_pad}
        if return_layers:
            out["features"] = features
        return out

    def forward(
        self,
        x: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
        channels: Sequence[str] | None = None,
        return_layers: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Encode a full image or volume (no masking), e.g. for fine-tuning heads.

        Returns ``tokens`` ``(B, 1 + N, E)``, ``grid``, ``valid`` and optionally ``features``.
        """
        prep = self.prepare(x, valid, channels)
        tokens = self.embed(prep["patches"], prep["grid"], prep["band_idx"])
        out = self.forward_tokens(tokens, None, return_layers)
        out.update(grid=prep["grid"], valid=prep["valid"], spatial_shape=prep["spatial_shape"])
        return out

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "patch_embed.band_embed"}


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

