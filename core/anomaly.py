"""Anomaly localisation from reconstruction error (MemMC-MAE's premise).

A masked autoencoder trained on normal images only reconstructs normal anatomy well and anomalies
badly. With ``K`` complementary masks every patch is reconstructed exactly once while hidden; the
per-pixel error (in the normalised-patch space the model was trained in), smoothed, is the anomaly
map, and the mean of its top fraction is the image score. A model that predicts a variance per pixel
(``predict_variance``) gives the uncertainty-normalised error ``(x - mu)^2 / sigma^2`` instead (Mao et al.,
MICCAI 2020): edges it cannot place exactly get a large variance and are discounted, homogeneous
tissue gets a small one and a lesion there stands out. Thresholds are calibrated on normal
validation images at a chosen false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import GaussianFilter

from unimae.core.losses import LOGVAR_RANGE, normalize_patches
from unimae.core.mae import MaskedAutoencoder
from unimae.core.masking import complementary_masks, token_validity
from unimae.core.patch_embed import unpatchify

__all__ = ["anomaly_map", "image_scores", "calibrate_threshold"]


@torch.no_grad()
def anomaly_map(
    model: MaskedAutoencoder,
    x: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    channels: Sequence[str] | None = None,
    k: int = 4,
    sigma: float | None = None,
    norm_pix: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-pixel anomaly map ``(B, *S)`` (float32, 0 outside ``valid``): the squared error or, for a model
    with ``predict_variance``, the squared error divided by the predicted variance; then smoothed. Pixels of
    patches with less than the model's ``min_valid_fraction`` of valid area are 0 before smoothing (the model
    never learned to reconstruct them).

    Args:
        model: a MAE (trained on normal images).
        x: ``(B, C, *S)`` in model space.
        valid: ``(B, *S)`` pixel validity.
        channels: band names (spectral models).
        k: number of complementary masks (each hides ``1/k`` of the patches).
        sigma: Gaussian smoothing in pixels (default: a quarter of the patch size; 0 disables).
        norm_pix: compare in normalised-patch space (as trained with the normalised-pixel target).
        generator: seeds the mask partition.
    """
    b = x.shape[0]
    prep = model.encoder.prepare(x, valid, channels)  # validates and gives the token grid (cheap)
    grid, patch = prep["grid"], model.patch_size
    n, voxels = prep["patches"].shape[1], prep["patches"].shape[-1]
    masks = complementary_masks(n, k, generator=generator, device=x.device)
    errors = torch.zeros(b, n, voxels, device=x.device)
    keep_all = _all_channels(model, x)
    for hidden_set in masks:
        hidden = hidden_set[None].expand(b, -1)
        out = model(x, valid=valid, channels=channels, mask=hidden, channel_keep=keep_all)
        target = out["patches"].float()
        if norm_pix:
            target = normalize_patches(target)
        err = (out["pred"].float() - target).pow(2)
        if out.get("logvar") is not None:
            err = err * torch.exp(-out["logvar"].float().clamp(*LOGVAR_RANGE))
        err = err.mean(2)  # (B, N, P): mean over channels
        errors = torch.where(hidden[..., None], err, errors)
    # only patches the MAE was trained to reconstruct are scored: one less than ``min_valid_fraction`` valid (the rim
    # of a fundus field of view, a body outline, a nodata edge) is never hidden nor scored in training, so its error
    # says nothing about the image (measured: CT phantom AUROC 0.69-0.83 -> 0.87-0.94 over three runs)
    # (an input too small or thin to have any such patch, e.g. a 12-slice volume under 16-voxel patches, keeps them all)
    tok = token_validity(prep["valid"], patch, model.min_valid_fraction)
    if tok is not None:
        keep = tok | ~tok.any(1, keepdim=True)
        errors = errors * keep[..., None].to(errors.dtype)
    amap = unpatchify(errors[:, :, None], grid, patch)  # (B, 1, *S')
    crop = tuple(slice(0, s) for s in x.shape[2:])
    amap = amap[(..., *crop)]
    sigma = float(patch[0]) / 4.0 if sigma is None else float(sigma)
    if sigma > 0:
        amap = GaussianFilter(len(grid), sigma).to(amap.device)(amap)
    amap = amap[:, 0]
    if valid is not None:
        v = valid[:, 0] if valid.ndim == x.ndim else valid
        amap = amap * v.to(amap.dtype)
    return amap


def _all_channels(model: MaskedAutoencoder, x: torch.Tensor) -> torch.Tensor | None:
    """Keep every channel at inference (no channel masking) for channel-patch-masked models."""
    if model.masking != "channel_patch":
        return None
    return torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)


def image_scores(amap: torch.Tensor, valid: torch.Tensor | None = None, top_fraction: float = 0.01) -> torch.Tensor:
    """Image anomaly score ``(B,)``: the mean of the top ``top_fraction`` of pixel errors inside ``valid``."""
    flat = amap.flatten(1)
    if valid is not None:
        flat = flat.masked_fill(~valid.flatten(1).bool(), float("-inf"))
        counts = valid.flatten(1).sum(1).clamp(min=1)
    else:
        counts = torch.full((flat.shape[0],), flat.shape[1], device=flat.device)
    scores = []
    for row, count in zip(flat, counts.tolist()):
        top = max(1, int(round(count * top_fraction)))
        vals = torch.topk(row, top).values
        vals = vals[torch.isfinite(vals)]
        scores.append(vals.mean() if vals.numel() else row.new_zeros(()))
    return torch.stack(scores)


def calibrate_threshold(normal_values: torch.Tensor, fpr: float = 0.05) -> float:
    """The threshold above which a fraction ``fpr`` of values from *normal* data fall."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    values = normal_values.detach().flatten().float()
    if values.numel() == 0:
        raise ValueError("no normal values to calibrate a threshold on")
    return float(torch.quantile(values, 1.0 - fpr))
