"""MAE objectives, kept outside the model's ``forward``."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["mae_loss", "normalize_patches"]


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalised-pixel target (MAE): each patch and channel to zero mean, unit variance over its voxels."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(
    out: dict[str, Any], *, norm_pix: bool = True, gradient_weight: float = 0.5
) -> dict[str, torch.Tensor]:
    """Mean squared error on hidden, valid patches (and hidden channels), plus the optional gradient term.

    A ``(token, channel)`` pair is scored when the token is hidden or, with channel masking, the channel
    was dropped — and the token is valid (enough of it inside ``valid``). Returns ``loss`` (the total),
    ``pixel`` and, with a gradient branch, ``gradient``; each a scalar float32 tensor.
    """
    pred = out["pred"].float()
    target = out["patches"].float()
    if norm_pix:
        target = normalize_patches(target)
    err = (pred - target).pow(2).mean(-1)  # (B, N, C)
    weight = out["mask"][:, :, None].expand_as(err)
    if out.get("channel_keep") is not None:
        weight = weight | ~out["channel_keep"][:, None, :].to(weight.device)
    if out.get("token_valid") is not None:
        weight = weight & out["token_valid"][:, :, None]
    weight = weight.to(err.dtype)
    pixel = (err * weight).sum() / weight.sum().clamp(min=1.0)
    result = {"pixel": pixel, "loss": pixel}
    if "grad_pred" in out:
        gt = out["grad_target"].float()
        gt = normalize_patches(gt) if norm_pix else gt
        gerr = (out["grad_pred"].float() - gt).pow(2).mean(-1)[..., 0]  # (B, N)
        gw = out["mask"].to(gerr.dtype)
        if out.get("token_valid") is not None:
            gw = gw * out["token_valid"].to(gerr.dtype)
        gradient = (gerr * gw).sum() / gw.sum().clamp(min=1.0)
        result["gradient"] = gradient
        result["loss"] = pixel + gradient_weight * gradient
    return result
