"""The masked autoencoder: encode only visible patches, a light decoder, named outputs.

After He et al. 2021 (MAE), with a unified 2D/3D embedding (Uni4Eye), channel + patch masking
(ChA-MAEViT), foreground-aware masking that never shows or scores invalid patches (SelectiveMAE),
and an optional second decoder branch that reconstructs the Sobel gradient map (Uni4Eye).
The loss lives in :mod:`unimae.core.losses`, not in ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unimae.core.encoder import ViTEncoder, _init_weights, build_blocks
from unimae.core.encoder_config import EncoderConfig, EncoderModel
from unimae.core.errors import look_up
from unimae.core.masking import (
    MaskSpec,
    channel_masking,
    masks_to_spec,
    random_masking,
    token_validity,
)
from unimae.core.patch_embed import patchify, unpatchify
from unimae.core.pos_embed import sincos_pos_embed
from unimae.core.presets import expand_preset

__all__ = ["MaskedAutoencoder", "build_mae", "sobel_magnitude", "reconstruct_image", "MASKING_MODES"]

MASKING_MODES = ("random", "channel_patch")


class MaskedAutoencoder(EncoderModel, nn.Module):
    """MAE over 2D images or 3D volumes with fixed or spectral channels.

    Args:
        encoder: the :class:`~unimae.core.encoder_config.EncoderConfig` (or its dict); its fields
            (``spatial_dims``, ``in_chans``, ``channel_mode``, ``channels``, ``patch_size``, ``embed_dim``,
            ``depth``, ``num_heads``, ``mlp_ratio``, ``drop_path_rate``, ``spectral_dim``, ``class_token``,
            ``stem``, ``stem_width``) may also be given as keyword arguments, which win.
        decoder_dim, decoder_depth, decoder_heads: the light decoder (its MLP ratio is the encoder's).
        mask_ratio: fraction of (valid) patches hidden from the encoder.
        masking: ``"random"`` (patches) or ``"channel_patch"`` (patches and whole channels, ChA-MAEViT).
        channel_mask_ratio: fraction of channels hidden per sample with ``"channel_patch"``.
        min_valid_fraction: a patch with less valid area than this is never visible nor scored.
        gradient_branch: add a decoder branch predicting the Sobel gradient map (Uni4Eye).
        gradient_depth: transformer blocks of that branch.
        predict_variance: the decoder also predicts a log-variance per target value (``logvar`` in the
            output), trained with the Gaussian negative log-likelihood; the anomaly map then divides the
            squared error by the predicted variance (Mao et al., MICCAI 2020), which discounts the edges the
            model knows it cannot place exactly.
    """

    def __init__(
        self,
        *,
        encoder: EncoderConfig | Mapping[str, Any] | None = None,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        masking: str = "random",
        channel_mask_ratio: float = 0.5,
        min_valid_fraction: float = 0.5,
        gradient_branch: bool = False,
        gradient_depth: int = 1,
        predict_variance: bool = False,
        **encoder_fields: Any,
    ) -> None:
        super().__init__()
        look_up(masking, MASKING_MODES, what="masking")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.model_args = {
            "decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads,
            "mask_ratio": mask_ratio, "masking": masking, "channel_mask_ratio": channel_mask_ratio,
            "min_valid_fraction": min_valid_fraction, "gradient_branch": gradient_branch,
            "gradient_depth": gradient_depth, "predict_variance": predict_variance,
        }  # fmt: skip
        self.encoder = ViTEncoder(EncoderConfig.from_args(encoder, owner=type(self).__name__, **encoder_fields))
        embed_dim, mlp_ratio = self.encoder.embed_dim, self.encoder_config.mlp_ratio
        self.mask_ratio = float(mask_ratio)
        self.masking = masking
        self.channel_mask_ratio = float(channel_mask_ratio)
        self.min_valid_fraction = float(min_valid_fraction)
        self.patch_size = self.encoder.patch_size
        self.decoder_dim = int(decoder_dim)
        n_out = self.encoder.in_chans
        self.voxels_per_patch = math.prod(self.patch_size)

        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = build_blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, n_out * self.voxels_per_patch)
        self.predict_variance = bool(predict_variance)
        if self.predict_variance:
            self.decoder_logvar = nn.Linear(decoder_dim, n_out * self.voxels_per_patch)
        self.gradient_branch = bool(gradient_branch)
        if self.gradient_branch:
            self.gradient_blocks = build_blocks(decoder_dim, gradient_depth, decoder_heads, mlp_ratio)
            self.gradient_norm = nn.LayerNorm(decoder_dim)
            self.gradient_pred = nn.Linear(decoder_dim, self.voxels_per_patch)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_weights)
        if self.gradient_branch:
            for m in (self.gradient_blocks, self.gradient_norm, self.gradient_pred):
                m.apply(_init_weights)
        if self.predict_variance:  # starts at unit variance everywhere
            nn.init.zeros_(self.decoder_logvar.weight)
            nn.init.zeros_(self.decoder_logvar.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def spatial_dims(self) -> int:
        return self.encoder.spatial_dims

    @property
    def channels(self) -> list[dict]:
        return self.encoder.channels

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
        channels: Sequence[str] | None = None,
        mask: torch.Tensor | None = None,
        channel_keep: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Mask, encode the visible patches, decode all patches.

        Args:
            x: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` in model space.
            valid: ``(B, *S)`` or ``(B, 1, *S)`` pixel validity (nodata / field of view / padding).
            channels: band names of ``x``'s channels (spectral mode; default: all known bands in order).
            mask: explicit hidden-token mask ``(B, N)`` (e.g. from :func:`complementary_masks`);
                invalid tokens are always hidden.
            channel_keep: explicit ``(B, C)`` kept-channel mask; drawn at random with
                ``masking="channel_patch"`` when not given.
            mask_ratio: override the configured ratio for this call.
            generator: seeds the masks.

        Returns:
            dict with ``pred`` ``(B, N, C, P)`` (normalised-pixel space if trained so), ``patches`` the
            input patches ``(B, N, C, P)``, ``mask`` ``(B, N)`` True = hidden, ``token_valid`` ``(B, N)``
            or None, ``channel_keep`` ``(B, C)`` or None, ``grid``, ``spatial_shape``; with
            ``predict_variance`` ``logvar`` ``(B, N, C, P)`` (unclamped; see :data:`~unimae.core.losses.LOGVAR_RANGE`)
            and, with the gradient branch, ``grad_pred`` and ``grad_target`` ``(B, N, 1, P)``.
        """
        enc = self.encoder
        prep = enc.prepare(x, valid, channels)
        patches, grid, band_idx = prep["patches"], prep["grid"], prep["band_idx"]
        b, n, c, _ = patches.shape
        tok_valid = token_validity(prep["valid"], self.patch_size, self.min_valid_fraction)
        if tok_valid is not None and bool(tok_valid.all()):
            tok_valid = None
        if channel_keep is None and self.masking == "channel_patch":
            channel_keep = channel_masking(b, c, self.channel_mask_ratio, generator=generator, device=x.device)
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
            if tuple(mask.shape) != (b, n):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match (batch, tokens) = {(b, n)}")
            spec = masks_to_spec(mask if tok_valid is None else mask | ~tok_valid)
        else:
            ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
            spec = random_masking(b, n, ratio, token_valid=tok_valid, generator=generator, device=x.device)

        tokens = enc.embed(patches, grid, band_idx, channel_keep, hidden=spec.mask if enc.conv_stem is not None else None)
        latent = enc.forward_tokens(tokens, spec)["tokens"]
        dec = self._decode(latent, spec, grid)
        pred = self.decoder_pred(dec)  # (B, N, n_out * P)
        pred = pred.reshape(b, n, -1, self.voxels_per_patch)
        logvar = self.decoder_logvar(dec).reshape(b, n, -1, self.voxels_per_patch) if self.predict_variance else None
        if band_idx is not None and (len(band_idx) != pred.shape[2] or band_idx != list(range(pred.shape[2]))):
            pred = pred[:, :, band_idx]
            logvar = None if logvar is None else logvar[:, :, band_idx]
        out: dict[str, Any] = {
            "pred": pred,
            "patches": patches,
            "mask": spec.mask,
            "token_valid": tok_valid,
            "channel_keep": channel_keep,
            "grid": grid,
            "spatial_shape": prep["spatial_shape"],
        }
        if logvar is not None:
            out["logvar"] = logvar
        if self.gradient_branch:
            g = dec
            for blk in self.gradient_blocks:
                g = blk(g)
            out["grad_pred"] = self.gradient_pred(self.gradient_norm(g)).reshape(b, n, 1, self.voxels_per_patch)
            padded = unpatchify(patches, grid, self.patch_size)
            out["grad_target"] = patchify(sobel_magnitude(padded.float().mean(1, keepdim=True)), self.patch_size)
        return out

    def _decode(self, latent: torch.Tensor, spec: MaskSpec, grid: Sequence[int]) -> torch.Tensor:
        """Decoder over all ``N`` tokens (mask tokens where hidden); returns ``(B, N, decoder_dim)`` normalised."""
        y = self.decoder_embed(latent)
        prefix = self.encoder.num_prefix_tokens
        head, vis = y[:, :prefix], y[:, prefix:]
        b, n = spec.mask.shape
        full = self.mask_token.to(y.dtype).expand(b, n + 1, -1).clone()  # slot n collects batch padding
        ids = spec.ids_keep
        if spec.keep_pad is not None:
            ids = torch.where(spec.keep_pad, ids, torch.full_like(ids, n))
        full.scatter_(1, ids[..., None].expand(-1, -1, y.shape[-1]), vis)
        full = full[:, :n] + sincos_pos_embed(grid, self.decoder_dim, y.device, y.dtype)
        z = torch.cat([head, full], dim=1)
        for blk in self.decoder_blocks:
            z = blk(z)
        return self.decoder_norm(z)[:, prefix:]


def build_mae(preset: str | None = "base", **kwargs: Any) -> MaskedAutoencoder:
    """Build a :class:`MaskedAutoencoder` from a size preset plus constructor overrides."""
    return MaskedAutoencoder(**expand_preset({"preset": preset, **kwargs}))


def _sobel_kernel(nd: int) -> torch.Tensor:
    """``(nd, 1, 3, ..., 3)`` Sobel kernels, one derivative axis each (separable smoothing elsewhere)."""
    smooth = torch.tensor([1.0, 2.0, 1.0])
    deriv = torch.tensor([-1.0, 0.0, 1.0])
    kernels = []
    for axis in range(nd):
        k = torch.ones(())
        for a in range(nd):
            k = torch.tensordot(k, deriv if a == axis else smooth, dims=0)
        kernels.append(k / (2.0 * 4.0 ** (nd - 1)))  # unit response to a unit ramp
    return torch.stack(kernels)[:, None]


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of ``(B, 1, *S)`` (2D or 3D), replicate-padded, same shape."""
    nd = x.ndim - 2
    k = _sobel_kernel(nd).to(x)
    xp = nn.functional.pad(x, [1, 1] * nd, mode="replicate")
    conv = nn.functional.conv2d if nd == 2 else nn.functional.conv3d
    g = conv(xp, k)
    return g.pow(2).sum(1, keepdim=True).add(1e-12).sqrt()


def reconstruct_image(out: dict[str, Any], patch_size: Sequence[int], norm_pix: bool = True) -> dict[str, torch.Tensor]:
    """Image-space views of a forward pass for previews: ``masked`` input and ``reconstruction``.

    Hidden patches are de-normalised with the statistics of the true patch (as in MAE's visualisation)
    when the model was trained with the normalised-pixel target; visible patches show the input.
    Both are ``(B, C, *S)`` cropped to the unpadded input size.
    """
    patches = out["patches"].float()
    pred = out["pred"].float()
    if norm_pix:
        mean = patches.mean(-1, keepdim=True)
        std = patches.var(-1, keepdim=True, unbiased=False).add(1e-6).sqrt()
        pred = pred * std + mean
    hidden = out["mask"][:, :, None, None]
    if out.get("channel_keep") is not None:
        hidden = hidden | ~out["channel_keep"][:, None, :, None]
    recon = torch.where(hidden, pred, patches)
    masked = torch.where(hidden, torch.zeros_like(patches), patches)
    crop = tuple(slice(0, s) for s in out["spatial_shape"])
    grid = out["grid"]
    return {
        "masked": unpatchify(masked, grid, patch_size)[(..., *crop)],
        "reconstruction": unpatchify(recon, grid, patch_size)[(..., *crop)],
    }

