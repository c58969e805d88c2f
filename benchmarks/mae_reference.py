"""The MONAI side of ``mae_throughput.py``: the reference implementation the throughput benchmark compares against.

It builds MONAI's ``MaskedAutoEncoderViT`` with the architecture of a benchmark setting, maps and copies its
weights into UniMAE's ``MaskedAutoencoder`` (both sides start identical), gives MONAI's side its training target
and loss (``monai_patchify``, ``monai_loss``), and checks that both models compute the same function
(``check_equivalence``: one fp32 forward/backward with the same weights, input and mask).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unimae.core.losses import mae_loss
from unimae.core.mae import MaskedAutoencoder
from unimae.core.pos_embed import sincos_pos_embed

if TYPE_CHECKING:  # the benchmark's settings; only for the annotations (the benchmark imports this module)
    from mae_throughput import Setting


def build_monai(s: Setting, mask_ratio: float) -> nn.Module:
    """MONAI's ``MaskedAutoEncoderViT`` with setting ``s``'s architecture, as close to UniMAE's as MONAI allows."""
    try:
        import einops  # noqa: F401  (MONAI's attention block needs it)
    except ImportError as err:
        raise SystemExit("MONAI's MaskedAutoEncoderViT needs einops: pip install einops") from err
    from monai.networks.nets import MaskedAutoEncoderViT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.meshgrid indexing warning inside MONAI
        return MaskedAutoEncoderViT(
            in_channels=s.in_chans,
            img_size=s.img_size,
            patch_size=s.patch,
            hidden_size=s.embed_dim,
            mlp_dim=int(s.embed_dim * s.mlp_ratio),
            num_layers=s.depth,
            num_heads=s.num_heads,
            masking_ratio=mask_ratio,
            decoder_hidden_size=s.decoder_dim,
            decoder_mlp_dim=int(s.decoder_dim * s.mlp_ratio),
            decoder_num_layers=s.decoder_depth,
            decoder_num_heads=s.decoder_heads,
            proj_type="conv",
            pos_embed_type="sincos",
            decoder_pos_embed_type="sincos",
            spatial_dims=s.spatial_dims,
            qkv_bias=True,  # as MAE and timm's Block in UniMAE
        )


def monai_to_ours_names(s: Setting) -> dict[str, str]:
    """MONAI ``MaskedAutoEncoderViT`` parameter name -> UniMAE ``MaskedAutoencoder`` parameter name."""
    names = {
        "cls_token": "encoder.cls_token",
        "patch_embedding.patch_embeddings.weight": "encoder.patch_embed.proj.weight",
        "patch_embedding.patch_embeddings.bias": "encoder.patch_embed.proj.bias",
        "mask_tokens": "mask_token",
    }
    block = {"norm1": "norm1", "attn.qkv": "attn.qkv", "attn.out_proj": "attn.proj", "norm2": "norm2",
             "mlp.linear1": "mlp.fc1", "mlp.linear2": "mlp.fc2"}
    for src, dst, depth, norm in (
        ("blocks", "encoder.blocks", s.depth, "encoder.norm"),
        ("decoder_blocks", "decoder_blocks", s.decoder_depth, "decoder_norm"),
    ):
        for i in range(depth):
            for a, b in block.items():
                for p in ("weight", "bias"):
                    names[f"{src}.{i}.{a}.{p}"] = f"{dst}.{i}.{b}.{p}"
        for p in ("weight", "bias"):  # MONAI appends the final LayerNorm to the nn.Sequential
            names[f"{src}.{depth}.{p}"] = f"{norm}.{p}"
    for layer in ("decoder_embed", "decoder_pred"):
        for p in ("weight", "bias"):
            names[f"{layer}.{p}"] = f"{layer}.{p}"
    return names


def copy_monai_into_ours(s: Setting, monai: nn.Module, ours: nn.Module) -> list[str]:
    """Copy MONAI's weights into ours (both start identical); returns MONAI's parameters ours lacks.

    Raises if any of our parameters is not covered or a shape differs: the architectures must match.
    """
    names = monai_to_ours_names(s)
    m_params = dict(monai.named_parameters())
    o_params = dict(ours.named_parameters())
    mapped = set(names.values())
    missing = sorted(set(o_params) - mapped)
    if missing:
        raise RuntimeError(f"UniMAE parameters with no MONAI counterpart: {missing[:5]}")
    with torch.no_grad():
        for src, dst in names.items():
            a, b = m_params[src], o_params[dst]
            if a.shape != b.shape:
                raise RuntimeError(f"shape mismatch {src} {tuple(a.shape)} vs {dst} {tuple(b.shape)}")
            b.copy_(a)
    return sorted(set(m_params) - set(names))


def monai_patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """MONAI-side target: ``(B, C, *S)`` -> ``(B, N, C * p^d)``, tokens in the row-major order of MONAI's
    conv patch embedding (``flatten(2)``), values per patch in conv-kernel order ``(c, p1, p2[, p3])``
    (einops: ``b c (h p1) (w p2) -> b (h w) (c p1 p2)``), the layout ``decoder_pred`` is trained against."""
    b, c, *spatial = x.shape
    nd = len(spatial)
    grid = [sz // patch for sz in spatial]
    shape = [b, c]
    for g in grid:
        shape += [g, patch]
    x = x.reshape(shape)
    perm = [0] + [2 + 2 * i for i in range(nd)] + [1] + [3 + 2 * i for i in range(nd)]
    return x.permute(perm).reshape(b, math.prod(grid), c * patch**nd)


def monai_loss(pred: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE per patch, averaged over the masked patches (``mask`` 1 = hidden, as MONAI returns it)."""
    err = (pred.float() - target.float()).pow(2).mean(-1)
    w = mask.to(err.dtype)
    return (err * w).sum() / w.sum().clamp(min=1.0)


def count_params(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "trained": sum(p.numel() for p in params if p.grad is not None),  # valid right after a backward
    }



def check_equivalence(s: Setting, ours: MaskedAutoencoder, monai: nn.Module, device: torch.device) -> dict[str, Any]:
    """One fp32 forward/backward on both sides with identical weights, input and mask.

    MONAI's fixed sin-cos tables order their channels differently (2D: ``[sin w, cos w, sin h, cos h]``
    vs ours ``[sin h, cos h, sin w, cos w]``; 3D similarly), which changes no FLOP; for this check only,
    MONAI's tables are temporarily replaced by ours so that both compute the same function.
    Returns the largest prediction and loss differences and the parameter counts (with "trained" =
    parameters that received a gradient).
    """
    b = 2
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(b, s.in_chans, *s.img_size, generator=gen).to(device)
    pe = monai.patch_embedding.position_embeddings
    dpe = monai.decoder_pos_embedding
    saved = (pe.detach().clone(), dpe.detach().clone())
    ours.zero_grad(set_to_none=True)
    monai.zero_grad(set_to_none=True)
    try:
        with torch.no_grad():
            pe.copy_(sincos_pos_embed(s.grid, s.embed_dim, device)[None])
            dpe.copy_(sincos_pos_embed(s.grid, s.decoder_dim, device)[None])
        torch.manual_seed(4321)  # MONAI draws its mask from the global RNG
        pred_m, mask_m = monai(x)
        loss_m = monai_loss(pred_m, mask_m, monai_patchify(x, s.patch))
        loss_m.backward()
        out = ours(x, mask=mask_m.bool())
        loss_o = mae_loss(out, norm_pix=False)["loss"]
        loss_o.backward()
        pred_o = out["pred"].reshape(b, s.num_tokens, -1)
        result = {
            "max_abs_pred_diff": float((pred_o - pred_m).detach().abs().max()),
            "pred_scale": float(pred_m.detach().abs().max()),
            "loss_ours": float(loss_o.detach()),
            "loss_monai": float(loss_m.detach()),
            "params_ours": count_params(ours),
            "params_monai": count_params(monai),
        }
    finally:
        with torch.no_grad():
            pe.copy_(saved[0])
            dpe.copy_(saved[1])
        ours.zero_grad(set_to_none=True)
        monai.zero_grad(set_to_none=True)
    return result

