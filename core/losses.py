"""Training objectives kept outside the models' ``forward``: the MAE loss and the segmentation task's masked Dice + CE."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unimae.core.errors import InputError

__all__ = ["mae_loss", "normalize_patches", "gaussian_nll", "LOGVAR_RANGE", "NLL_BETA", "MaskedDiceCELoss"]

LOGVAR_RANGE = (-10.0, 6.0)
"""Predicted log-variances are clamped to this range (in the loss and the anomaly map) for stability."""
NLL_BETA = 0.5
"""beta of the beta-NLL (Seitzer et al., ICLR 2022): each value's NLL is weighted by ``var**beta`` (detached).
Plain NLL (beta 0) lets the model explain hard regions away with a large variance and the mean is
learned badly (on the CT phantoms the liver's squared error stayed 4x higher); beta 1 is the MSE's gradient."""


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalised-pixel target (MAE): each patch and channel to zero mean, unit variance over its voxels."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def gaussian_nll(
    pred: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, beta: float = NLL_BETA
) -> torch.Tensor:
    """Per-value Gaussian negative log-likelihood ``0.5 * ((target - pred)^2 / var + log var)`` (without the
    constant), ``logvar`` clamped to :data:`LOGVAR_RANGE`, weighted by ``var.detach() ** beta`` (beta-NLL)."""
    logvar = logvar.float().clamp(*LOGVAR_RANGE)
    nll = 0.5 * ((target - pred).pow(2) * torch.exp(-logvar) + logvar)
    if beta:
        nll = nll * torch.exp(beta * logvar.detach())
    return nll


def mae_loss(
    out: dict[str, Any], *, norm_pix: bool = True, gradient_weight: float = 0.5, nll_beta: float = NLL_BETA
) -> dict[str, torch.Tensor]:
    """Mean squared error on hidden, valid patches (and hidden channels), plus the optional gradient term.

    A ``(token, channel)`` pair is scored when the token is hidden or, with channel masking, the channel
    was dropped — and the token is valid (enough of it inside ``valid``). When the model predicts a
    variance (``out["logvar"]``) the pixel term is the (beta-)Gaussian NLL of :func:`gaussian_nll` instead of
    the squared error. Returns ``loss`` (the total), ``pixel`` and, with a gradient branch, ``gradient``;
    each a scalar float32 tensor.
    """
    pred = out["pred"].float()
    target = out["patches"].float()
    if norm_pix:
        target = normalize_patches(target)
    if out.get("logvar") is not None:
        err = gaussian_nll(pred, out["logvar"], target, nll_beta).mean(-1)  # (B, N, C)
    else:
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


class MaskedDiceCELoss(nn.Module):
    """MONAI Dice + cross-entropy over the pixels inside ``valid`` only.

    With every pixel valid (and the same weights) this equals MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True)``; invalid pixels (outside the field of view, nodata, padding) add nothing to either
    term: their softmax and one-hot target are zeroed for MONAI's :class:`~monai.losses.DiceLoss`, and
    the cross-entropy is averaged over valid pixels (weighted by ``weight`` like ``F.cross_entropy``).

    Args:
        num_classes: output channels K.
        include_background: score class 0 in the Dice term (False for a background class).
        weight: ``(K,)`` cross-entropy class weights, or None.
        lambda_dice, lambda_ce: weights of the two terms.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        include_background: bool = True,
        weight: torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.num_classes = int(num_classes)
        self.dice = DiceLoss(include_background=include_background, softmax=False, to_onehot_y=False)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``logits`` ``(B, K, *S)``, ``target`` ``(B, *S)`` class indices, ``valid`` ``(B, *S)`` -> loss parts."""
        logits = logits.float()
        target = target.long()
        k = logits.shape[1]
        if int(target.min()) < 0 or int(target.max()) >= k:
            raise InputError(f"mask values must lie in [0, {k - 1}] for {k} classes, found {int(target.min())}..{int(target.max())}")
        v = torch.ones_like(target, dtype=torch.bool) if valid is None else valid.bool()
        vf = v[:, None].to(logits.dtype)
        probs = torch.softmax(logits, 1) * vf
        onehot = F.one_hot(target, k).movedim(-1, 1).to(logits.dtype) * vf
        dice = self.dice(probs, onehot)
        ce_map = F.cross_entropy(logits, target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing)
        w = v.to(logits.dtype) if self.weight is None else self.weight[target] * v.to(logits.dtype)
        ce = (ce_map * v.to(logits.dtype)).sum() / w.sum().clamp(min=1e-8)
        return {"loss": self.lambda_dice * dice + self.lambda_ce * ce, "dice": dice, "ce": ce}
