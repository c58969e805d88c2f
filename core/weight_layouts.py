"""The weight layouts :func:`~unimae.core.weight_import.import_weights` understands, and their renaming.

:func:`detect_layout` tells a (prefix-stripped) state dict's layout (``"timm"``, ``"mae"``, ``"monai"`` or
``"unimae"``); :func:`canonical` renames its tensors to UniMAE's names (``encoder.*`` plus the decoder) and
sets the position tables, the source keys that have no counterpart (with the reason) and what was adapted on
the way (MONAI's split q/k/v, its perceptron patch embedding, its missing qkv bias) aside in a
:class:`Canon`, which the importer then adapts to the target model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from unimae.core.encoder import ViTEncoder
from unimae.core.errors import InputError
from unimae.core.weight_files import MAE_DECODER_KEY

__all__ = ["Canon", "canonical", "detect_layout"]

_TIMM_ENCODER = re.compile(r"^(cls_token|patch_embed\..+|blocks\.\d+\..+|norm\.(weight|bias))$")
_UNUSED_REASONS = (
    (re.compile(r"^(head|head_dist|heads)\."), "classification head, not part of the encoder"),
    (re.compile(r"^fc_norm\."), "norm of the pooled feature (global-pool fine-tune head), not per-token"),
    (re.compile(r"\.ls[12]\.(gamma|scale)$"), "LayerScale, which UniMAE blocks do not have: not transferred"),
    (re.compile(r"^(dist_token|reg_token)$"), "extra prefix token, which UniMAE does not have"),
    (re.compile(r"(^|\.)(norm_cross_attn|cross_attn)\."), "cross-attention, unused by MONAI's MAE"),
    (re.compile(r"^norm_pre\."), "pre-transformer norm, which UniMAE does not have: not transferred"),
)



def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """The layout of a (prefix-stripped) state dict: ``"timm"``, ``"mae"``, ``"monai"`` or ``"unimae"``."""
    keys = list(state_dict)
    if any(k.startswith("patch_embedding.") or ".mlp.linear1." in k or k == "mask_tokens" for k in keys):
        return "monai"
    if any(k.startswith(("encoder.blocks.", "encoder.patch_embed.")) for k in keys) and "encoder.pos_embed" not in keys:
        return "unimae"
    timm_like = "patch_embed.proj.weight" in keys or any(re.match(r"^blocks\.\d+\.attn\.qkv\.", k) for k in keys)
    if timm_like:
        if any(MAE_DECODER_KEY.match(k) for k in keys):
            return "mae" if "pos_embed" in keys or "decoder_pos_embed" in keys else "unimae"
        return "timm" if "pos_embed" in keys else "unimae"
    sample = ", ".join(keys[:5])
    raise InputError(
        f"unrecognised weights layout (keys start: {sample}); known: timm ViT, MAE/RETFound/medical_mae, "
        "MONAI MaskedAutoEncoderViT, UniMAE"
    )


@dataclass
class Canon:
    """A source state dict renamed to UniMAE names (``encoder.*`` + decoder), with its side information."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # canonical key -> source key
    unused: dict[str, str] = field(default_factory=dict)  # source key -> reason
    adapted: dict[str, str] = field(default_factory=dict)  # canonical key -> what was done
    pos: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # "encoder"/"decoder" -> (key, table)
    pos_prefix_rows: int | None = None  # class-token rows in the encoder table (None: decide by shape)
    pred_order: str = "channel_pixel"  # row order of the source decoder_pred
    spectral: bool = False

    def put(self, key: str, value: torch.Tensor, src: str) -> None:
        self.tensors[key] = value
        self.origin[key] = src


def _unused_reason(key: str) -> str:
    for pattern, why in _UNUSED_REASONS:
        if pattern.search(key):
            return why
    return "no counterpart in UniMAE"


def _canon_timm_family(sd: dict[str, torch.Tensor], layout: str) -> Canon:
    c = Canon(pos_prefix_rows=None, pred_order="pixel_channel" if layout == "mae" else "channel_pixel")
    for k, v in sd.items():
        if layout != "unimae" and k == "pos_embed":
            c.pos["encoder"] = (k, v)
        elif layout != "unimae" and k == "decoder_pos_embed":
            if layout == "timm":
                c.unused[k] = "decoder keys are not part of the timm layout (use layout='mae')"
            else:
                c.pos["decoder"] = (k, v)
        elif k.startswith("encoder."):  # UniMAE's own names
            c.put(k, v, k)
        elif _TIMM_ENCODER.match(k) and not _unused_reason(k).startswith("LayerScale"):
            c.put("encoder." + k, v, k)
        elif MAE_DECODER_KEY.match(k) or (layout == "unimae" and k.startswith("gradient_")):
            if layout == "timm":
                c.unused[k] = "decoder keys are not part of the timm layout (use layout='mae')"
            else:
                c.put(k, v, k)
        else:
            c.unused[k] = _unused_reason(k)
    c.spectral = "encoder.patch_embed.band_embed" in c.tensors
    return c


_MONAI_BLOCK_RENAMES = (
    ("attn.out_proj.", "attn.proj."),
    ("mlp.linear1.", "mlp.fc1."),
    ("mlp.linear2.", "mlp.fc2."),
)


def _canon_monai(sd: dict[str, torch.Tensor], target: ViTEncoder) -> Canon:
    c = Canon(pos_prefix_rows=0, pred_order="pixel_channel")
    split_qkv: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for k, v in sd.items():
        m = re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$", k)
        if m:
            group, idx, rest = m.groups()
            base = "encoder.blocks" if group == "blocks" else "decoder_blocks"
            if rest in ("weight", "bias"):  # the LayerNorm closing the nn.Sequential
                c.put(f"{'encoder.norm' if group == 'blocks' else 'decoder_norm'}.{rest}", v, k)
                continue
            q = re.match(r"^attn\.to_([qkv])\.(weight|bias)$", rest)
            if q:
                split_qkv.setdefault(f"{base}.{idx}.attn.qkv.{q.group(2)}", {})[q.group(1)] = (k, v)
                continue
            known = ("norm1.", "norm2.", "attn.qkv.") + tuple(a for a, _ in _MONAI_BLOCK_RENAMES)
            if rest.startswith(known):
                for a, b in _MONAI_BLOCK_RENAMES:
                    if rest.startswith(a):
                        rest = b + rest[len(a):]
                c.put(f"{base}.{idx}.{rest}", v, k)
            else:
                c.unused[k] = _unused_reason(k)
        elif k == "patch_embedding.position_embeddings":
            c.pos["encoder"] = (k, v)
        elif k == "decoder_pos_embedding":
            c.pos["decoder"] = (k, v)
        elif k in ("patch_embedding.patch_embeddings.weight", "patch_embedding.patch_embeddings.bias"):
            c.put("encoder.patch_embed.proj." + k.rsplit(".", 1)[1], v, k)
        elif k == "patch_embedding.patch_embeddings.1.bias":
            c.put("encoder.patch_embed.proj.bias", v, k)
        elif k == "patch_embedding.patch_embeddings.1.weight":
            # perceptron: Linear over patches flattened "(p1 p2 p3 c)"; (patch, channels) come from the target
            pvox, cin = math.prod(target.patch_size), target.in_chans
            if v.ndim == 2 and v.shape[1] == pvox * cin and target.channel_mode == "fixed":
                w = v.reshape(v.shape[0], *target.patch_size, cin)
                w = w.permute(0, w.ndim - 1, *range(1, w.ndim - 1)).contiguous()
                c.put("encoder.patch_embed.proj.weight", w, k)
                c.adapted["encoder.patch_embed.proj.weight"] = (
                    "MONAI perceptron Linear '(p c)' reshaped to conv layout (channels, *patch)"
                )
            else:
                c.unused[k] = (
                    "skipped: MONAI perceptron patch embedding whose (patch, channels) do not match the "
                    f"target's {target.patch_size} x {cin}"
                )
        elif k == "cls_token":
            c.put("encoder.cls_token", v, k)
        elif k == "mask_tokens":
            c.put("mask_token", v, k)
        elif k.startswith(("decoder_embed.", "decoder_pred.")):
            c.put(k, v, k)
        else:
            c.unused[k] = _unused_reason(k)
    if "encoder.patch_embed.proj.bias" in c.tensors and "encoder.patch_embed.proj.weight" not in c.tensors:
        src = c.origin.pop("encoder.patch_embed.proj.bias")
        del c.tensors["encoder.patch_embed.proj.bias"]
        c.unused[src] = "skipped with the patch projection weight"
    for key, parts in split_qkv.items():
        if set(parts) == {"q", "k", "v"}:
            c.put(key, torch.cat([parts[n][1] for n in "qkv"], 0), parts["q"][0])
            c.adapted[key] = "MONAI to_q/to_k/to_v concatenated into qkv"
        else:
            for src, _ in parts.values():
                c.unused[src] = "incomplete q/k/v projections"
    # MONAI's attention defaults to qkv_bias=False; UniMAE's blocks have a qkv bias: zero is exact
    for key in list(c.tensors):
        if key.endswith(".attn.qkv.weight"):
            bias_key = key[: -len("weight")] + "bias"
            if bias_key not in c.tensors:
                w = c.tensors[key]
                c.tensors[bias_key] = w.new_zeros(w.shape[0])
                c.adapted[bias_key] = "zero bias (source attention has no qkv bias)"
    return c


def canonical(sd: dict[str, torch.Tensor], layout: str, target: ViTEncoder) -> Canon:
    """``sd`` (of ``layout``, not ``"auto"``) renamed to UniMAE's names for the encoder ``target``."""
    return _canon_monai(sd, target) if layout == "monai" else _canon_timm_family(sd, layout)
