"""Import pretrained ViT / MAE weights that users already have into UniMAE models.

Three foreign layouts are understood, plus UniMAE's own:

* ``"timm"``: a timm ``VisionTransformer`` state dict (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``; ``head`` / ``fc_norm`` unused);
* ``"mae"``: the MAE family (facebookresearch/mae, RETFound, medical_mae): the timm encoder keys plus
  ``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm`` and
  ``decoder_pred``, usually nested under ``"model"``;
* ``"monai"``: MONAI's ``MaskedAutoEncoderViT`` (``patch_embedding.patch_embeddings``,
  ``blocks.N.{attn.qkv,attn.out_proj,mlp.linear1,mlp.linear2}``, the trailing ``LayerNorm`` of the
  ``blocks`` / ``decoder_blocks`` sequentials, ``mask_tokens``, ``decoder_pos_embedding``);
* ``"unimae"``: a UniMAE state dict (``encoder.*`` plus the decoder), e.g. from another model size.

Position embeddings. UniMAE adds *fixed* sin-cos position embeddings built for each input's grid, so
a source ``pos_embed`` is never loaded as a parameter. Sin-cos tables of the common conventions (MAE's,
MONAI's, timm's ``build_sincos2d``) hold the same columns as UniMAE's in a different channel order. The
importer recognises such a table up to that channel permutation and permutes the whole residual stream
of the imported transformer (patch projection rows, class token, norms, attention and MLP weights,
``decoder_embed`` columns) so that the imported model computes exactly what the source computed, with
its output channels in UniMAE's order (:attr:`ImportReport.encoder_permutation` maps them back). The
same is done for the decoder stream and ``decoder_pos_embed``. Because UniMAE builds its table for each
input's grid, a recognised table is in effect resampled exactly to any new grid (224 -> 512 inputs, or
a grid of a different aspect). A position table's class-token row is
folded into ``cls_token`` (UniMAE adds no position to the class token, so this is exact). A *learned*
table (supervised timm ViTs) cannot be expressed as a fixed sin-cos embedding: it is reported as not
transferred, and such a model needs fine-tuning to adjust to the sin-cos positions.

Adaptation to the target model:

* input channels 1 <-> 3 <-> N with timm's ``adapt_input_conv`` convention (3 -> 1 sums the RGB kernels,
  1 -> N repeats them divided by N, 3 -> N cycles them rescaled by 3 / N);
* patch size: the kernel is resampled with the FlexiViT pseudo-inverse of bicubic resizing (equal to
  timm's ``resample_patch_embed`` in 2D, applied axis by axis so it works in 3D);
* 2D -> 3D: the in-plane kernel is inflated over depth (``inflate_patch_weight``, averaged), so a volume
  of identical slices embeds like the 2D image;
* ``decoder_pred`` is adapted alike on its output side (channels averaged / repeated, pixels resized,
  repeated over depth) and reordered from MAE's ``(pixel, channel)`` to UniMAE's ``(channel, pixel)`` rows;
* a spectral (wavelength-conditioned) UniMAE model has no counterpart of a fixed RGB projection: the
  patch projection is skipped with that reason, the transformer is still loaded;
* width / depth / MLP-ratio mismatches are never loaded: they are listed as mismatched, missing or
  unexpected in the :class:`ImportReport`.

Files are read by :mod:`unimae.core.weight_files` (safetensors, or opt-in restricted pickles), layouts
recognised and renamed to UniMAE's keys by :mod:`unimae.core.weight_layouts`, and the tensors adapted by
:mod:`unimae.core.weight_adapt`; the names importers used from here are re-exported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unimae.core.encoder import ViTEncoder
from unimae.core.errors import InputError, look_up
from unimae.core.weight_adapt import (
    MAX_GRID_CANDIDATES,
    adapt_patch_weight,
    adapt_pred_weight,
    looks_sincos,
    recognise_sincos,
    resample_patch_kernel,
    split_prefix,
)
from unimae.core.weight_files import NEST_KEYS, PICKLE_SUFFIXES, read_state_dict, save_as_safetensors
from unimae.core.weight_layouts import Canon, canonical, detect_layout

# the file reading (weight_files), the layouts (weight_layouts) and the tensor adaptation (weight_adapt) are
# their own modules; the names importers used from here before the split are re-exported
__all__ = [
    "LAYOUTS",
    "PICKLE_SUFFIXES",
    "NEST_KEYS",
    "MAX_GRID_CANDIDATES",
    "ImportReport",
    "import_weights",
    "read_state_dict",
    "detect_layout",
    "save_as_safetensors",
    "adapt_patch_weight",
    "adapt_pred_weight",
    "resample_patch_kernel",
]

LAYOUTS = ("auto", "timm", "mae", "monai", "unimae")
#: RMS tolerances for recognising a sin-cos position table exactly (float32 tables are within ~1e-6);
#: the tightest that succeeds is used, so near-identical low-frequency columns are not confused
SINCOS_EXACT_TOLS = (1e-5, 1e-3)
SINCOS_EXACT_TOL = SINCOS_EXACT_TOLS[-1]
#: RMS tolerance for a table that started as sin-cos and drifted a little in fine-tuning
SINCOS_NEAR_TOL = 0.1

POS_SINCOS_NOTE = "unused: fixed sin-cos used"

# -- report -------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What :func:`import_weights` did.

    Attributes:
        layout: the source layout (``"timm"``, ``"mae"``, ``"monai"`` or ``"unimae"``).
        source: the file name, or None for an in-memory dict.
        loaded: target keys that were filled (adapted ones included).
        adapted: target key -> what was done to the source tensor to fill it.
        missing: target keys left as they were (not in the source, skipped or mismatched).
        unexpected: source key -> why it was not used.
        mismatched: target key -> (source shape, target shape) for same-named tensors that do not fit
            (width, depth or MLP-ratio differences); these are also in ``missing``.
        notes: model-level remarks (position embeddings, inflation, LayerNorm eps ...).
        encoder_permutation: with a recognised sin-cos table in a different channel order, the imported
            encoder's output channel ``i`` is the source's channel ``encoder_permutation[i]``; None if
            the channel order is unchanged.
        decoder_permutation: the same for the decoder stream.
    """

    layout: str
    source: str | None = None
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    encoder_permutation: list[int] | None = None
    decoder_permutation: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (shapes as lists)."""
        return {
            "layout": self.layout,
            "source": self.source,
            "loaded": list(self.loaded),
            "adapted": dict(self.adapted),
            "missing": list(self.missing),
            "unexpected": dict(self.unexpected),
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
            "notes": list(self.notes),
            "encoder_permutation": None if self.encoder_permutation is None else list(self.encoder_permutation),
            "decoder_permutation": None if self.decoder_permutation is None else list(self.decoder_permutation),
        }

    def summary(self) -> str:
        """A few readable lines; repeated per-block keys are grouped as ``blocks.N.*``."""
        src = f" from {self.source}" if self.source else ""
        lines = [
            f"imported {self.layout} weights{src}: {len(self.loaded)} tensors loaded ({len(self.adapted)} adapted), "
            f"{len(self.missing)} missing, {len(self.unexpected)} unused, {len(self.mismatched)} mismatched"
        ]
        by_what: dict[str, list[str]] = {}
        for k, what in self.adapted.items():
            by_what.setdefault(what, []).append(k)
        for what, keys in by_what.items():
            lines.append(f"  adapted {_group(keys)}: {what}")
        if self.mismatched:
            shown = [f"{k} {tuple(a)} -> {tuple(b)}" for k, (a, b) in list(self.mismatched.items())[:4]]
            more = f" (+{len(self.mismatched) - 4} more)" if len(self.mismatched) > 4 else ""
            lines.append(f"  mismatched (not loaded): {'; '.join(shown)}{more}")
        plain_missing = [k for k in self.missing if k not in self.mismatched]
        if plain_missing:
            lines.append(f"  missing (left as initialised): {_group(plain_missing)}")
        by_reason: dict[str, list[str]] = {}
        for k, why in self.unexpected.items():
            by_reason.setdefault(why, []).append(k)
        for why, keys in by_reason.items():
            label = "" if why.startswith(("unused", "not transferred", "skipped")) else "unused "
            lines.append(f"  {label}{_group(keys)}: {why}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _group(keys: Sequence[str], limit: int = 6) -> str:
    """``["blocks.0.a", "blocks.1.a", "x"]`` -> ``"blocks.N.a (x2), x"``."""
    counts: dict[str, int] = {}
    for k in keys:
        g = re.sub(r"\.\d+\.", ".N.", k)
        counts[g] = counts.get(g, 0) + 1
    items = [f"{g} (x{c})" if c > 1 else g for g, c in counts.items()]
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# -- stream permutation ------------------------------------------------------------------------------

_ENC_ROWS = re.compile(r"^encoder\.(patch_embed\.proj\.(weight|bias)|blocks\.\d+\.(attn\.proj|mlp\.fc2)\.(weight|bias))$")
_ENC_LAST = re.compile(r"^encoder\.(cls_token|norm\.(weight|bias)|blocks\.\d+\.norm[12]\.(weight|bias))$")
_ENC_COLS = re.compile(r"^(encoder\.blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.weight|decoder_embed\.weight)$")
_DEC_ROWS = re.compile(r"^(decoder_embed\.(weight|bias)|decoder_blocks\.\d+\.(attn\.proj|mlp\.fc2)\.(weight|bias))$")
_DEC_LAST = re.compile(r"^(mask_token|decoder_norm\.(weight|bias)|decoder_blocks\.\d+\.norm[12]\.(weight|bias))$")
_DEC_COLS = re.compile(r"^(decoder_blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.weight|decoder_pred\.weight)$")


def _permute_stream(c: Canon, perm: list[int], which: str) -> list[str]:
    """Permute the residual-stream channels of the encoder or decoder: an exact reparametrisation."""
    rows, last, cols = (_ENC_ROWS, _ENC_LAST, _ENC_COLS) if which == "encoder" else (_DEC_ROWS, _DEC_LAST, _DEC_COLS)
    idx = torch.tensor(perm)
    width = len(perm)
    done = []
    for k, v in list(c.tensors.items()):
        if rows.match(k) and v.shape[0] == width:
            c.tensors[k] = v.index_select(0, idx)
        elif last.match(k) and v.shape[-1] == width:
            c.tensors[k] = v.index_select(v.ndim - 1, idx)
        elif cols.match(k) and v.ndim == 2 and v.shape[1] == width:
            c.tensors[k] = v.index_select(1, idx)
        else:
            continue
        done.append(k)
    return done


def _handle_positions(c: Canon, report: ImportReport, dims: int) -> None:
    """Fold class-token rows, recognise sin-cos tables and permute the streams (see the module docstring)."""
    for which in ("encoder", "decoder"):
        if which not in c.pos:
            continue
        key, table = c.pos[which]
        table = table.detach().float()
        table = table.reshape(-1, table.shape[-1])
        width = table.shape[-1]
        # MAE-style decoders always carry the class token; the encoder only if the source has one
        has_cls = which == "decoder" or "encoder.cls_token" in c.tensors
        tried = split_prefix(table, c.pos_prefix_rows, has_cls, dims)
        hit = None
        prefix = tried[0]
        for p in tried:
            body = table[p:]
            if body.shape[0] == 0:
                continue
            if bool((body == 0).all()):
                prefix = p
                break
            if looks_sincos(body):
                hit = recognise_sincos(body, dims, SINCOS_EXACT_TOLS) or recognise_sincos(body, dims, (SINCOS_NEAR_TOL,))
            if hit is not None:
                prefix = p
                break
        body = table[prefix:]
        cls_row = table[:prefix]
        # the class-token row: folded into the class token (encoder); the decoder cannot take it
        if prefix and bool(cls_row.abs().max() > 0):
            if which == "encoder" and "encoder.cls_token" in c.tensors:
                tok = c.tensors["encoder.cls_token"]
                c.tensors["encoder.cls_token"] = tok + cls_row[0].to(tok.dtype).reshape(tok.shape)
                c.adapted["encoder.cls_token"] = f"cls_token + {key}[:, 0] (UniMAE adds no position to the class token)"
            else:
                report.notes.append(
                    f"{key} has a non-zero class-token row, which UniMAE's {which} does not add: not transferred"
                )
        if bool((body == 0).all()):
            report.unexpected[key] = "unused: the source used no position embedding (all zeros)"
            report.notes.append(
                f"the source {which} had no position embedding; UniMAE adds fixed sin-cos, so outputs differ from the "
                "source until fine-tuned"
            )
            continue
        if hit is None:
            report.unexpected[key] = "not transferred: learned position embedding (UniMAE uses fixed sin-cos)"
            report.notes.append(
                f"{key} is a learned position embedding, not a sin-cos table: it cannot be loaded into UniMAE's "
                "fixed sin-cos positions; fine-tune so the model adapts to them"
            )
            continue
        perm, grid, worst = hit
        exact = worst <= SINCOS_EXACT_TOL
        drift = "" if exact else f" (learned table close to sin-cos, RMS deviation {worst:.3g}, dropped)"
        report.unexpected[key] = POS_SINCOS_NOTE + drift
        if perm != list(range(width)):
            touched = _permute_stream(c, perm, which)
            text = f"{which} channels permuted to UniMAE's sin-cos order (exact reparametrisation)"
            for k in touched:
                c.adapted[k] = f"{c.adapted[k]}; {text}" if k in c.adapted else text
            if which == "encoder":
                report.encoder_permutation = perm
            else:
                report.decoder_permutation = perm
            report.notes.append(
                f"{key}: sin-cos table of grid {list(grid)} recognised in another channel order; the {which} stream was "
                f"permuted so it computes exactly what the source computed (output channel i = source channel "
                f"{which}_permutation[i])"
            )


# -- import ----------------------------------------------------------------------------------------


def _resolve_target(model: nn.Module) -> tuple[nn.Module, ViTEncoder, str, list[str]]:
    """The module to load into, its encoder, the prefix of encoder keys in it, and notes."""
    notes: list[str] = []
    model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(model, ViTEncoder):
        return model, model, "", notes
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, ViTEncoder):
        return model, encoder, "encoder.", notes
    raise TypeError(
        f"import_weights needs a MaskedAutoencoder, a ViTEncoder or a model with a ViTEncoder `.encoder`; "
        f"got {type(model).__name__}"
    )


def _reorder_pred(c: Canon, chans: int, report: ImportReport, layout: str) -> None:
    """MAE / MONAI predict ``(pixel, channel)`` rows; UniMAE ``(channel, pixel)``."""
    if c.pred_order != "pixel_channel" or chans <= 1:
        return
    for k in ("decoder_pred.weight", "decoder_pred.bias"):
        if k not in c.tensors:
            continue
        v = c.tensors[k]
        if v.shape[0] % chans:
            continue
        c.tensors[k] = v.reshape(v.shape[0] // chans, chans, *v.shape[1:]).transpose(0, 1).reshape(v.shape).contiguous()
        c.adapted[k] = f"rows reordered from {layout}'s (pixel, channel) to UniMAE's (channel, pixel) order"
    if layout == "monai":
        report.notes.append(
            "MONAI's decoder_pred row order is set by the user's patchify; (voxel, channel) as in MONAI's "
            "perceptron patch embedding was assumed"
        )


def import_weights(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    *,
    layout: str = "auto",
    allow_pickle: bool = False,
) -> ImportReport:
    """Load foreign or UniMAE weights into ``model`` in place and report what was used.

    Args:
        model: a :class:`~unimae.core.mae.MaskedAutoencoder`, a :class:`ViTEncoder`, or any model whose
            ``.encoder`` is a :class:`ViTEncoder` (then only the encoder and, if present, same-named
            decoder tensors are filled).
        source: a state dict in memory, a ``.safetensors`` file or (with ``allow_pickle``) a
            ``.pth/.pt/.bin`` file; nested ``model`` / ``state_dict`` / ``module`` checkpoints and DDP
            ``module.`` prefixes are unwrapped.
        layout: ``"auto"`` (from the keys), ``"timm"``, ``"mae"``, ``"monai"`` or ``"unimae"``.
        allow_pickle: allow torch pickles, read with ``torch.load(weights_only=True)``.

    Returns:
        An :class:`ImportReport`. The model is modified through ``load_state_dict(strict=False)`` with the
        converted tensors only: nothing of the wrong shape is ever loaded.

    Raises:
        InputError: unreadable / refused files, an unrecognised or inconsistent layout, NaN weights.
    """
    look_up(layout, LAYOUTS, what="weights layout")
    target, encoder, enc_prefix, notes = _resolve_target(model)
    name = None if isinstance(source, Mapping) else Path(source).name
    sd = read_state_dict(source, allow_pickle=allow_pickle)
    found = detect_layout(sd)
    if layout == "auto":
        layout = found
    elif (layout == "monai") != (found == "monai"):
        raise InputError(f"the keys look like the {found} layout, not {layout}", name)
    report = ImportReport(layout=layout, source=name, notes=notes)

    c = canonical(sd, layout, encoder)
    report.unexpected.update(c.unused)

    src_w = c.tensors.get("encoder.patch_embed.proj.weight")
    src_dims = src_w.ndim - 2 if (src_w is not None and not c.spectral) else encoder.spatial_dims
    src_chans = int(src_w.shape[1]) if (src_w is not None and not c.spectral) else None
    src_patch = tuple(src_w.shape[2:]) if (src_w is not None and not c.spectral) else None
    if src_chans is not None:
        _reorder_pred(c, src_chans, report, layout)
    _handle_positions(c, report, src_dims)
    if layout in ("timm", "mae"):
        report.notes.append(
            "LayerNorm eps: timm/MAE ViTs use 1e-6, UniMAE's blocks 1e-5, so outputs agree closely but not bit for "
            "bit (the difference grows for small-norm tokens such as a little-trained class token)"
        )

    tgt_sd = target.state_dict()
    tgt_keys = {k: (enc_prefix + k[len("encoder."):] if k.startswith("encoder.") else k) for k in c.tensors}
    out: dict[str, torch.Tensor] = {}
    target_spectral = encoder.channel_mode == "spectral"
    skip_proj: str | None = None
    proj_skipped = False
    for ckey in sorted(c.tensors, key=lambda k: k.endswith(".bias")):  # weights before their biases
        value = c.tensors[ckey]
        tkey = tgt_keys[ckey]
        src_key = c.origin.get(ckey, ckey)
        if tkey not in tgt_sd:
            why = "target has no class token" if ckey == "encoder.cls_token" else (
                "decoder weights; the target is an encoder only" if not ckey.startswith("encoder.") and not enc_prefix
                else "no counterpart in the target model"
            )
            if ckey in c.origin:
                report.unexpected[src_key] = why
            continue
        want = tuple(tgt_sd[tkey].shape)
        desc: list[str] = [c.adapted[ckey]] if ckey in c.adapted else []
        if ckey.startswith("encoder.patch_embed.proj.") and target_spectral != c.spectral:
            skip_proj = ("skipped: the target's spectral (wavelength-conditioned) patch embedding has no counterpart "
                         "in a fixed-channel source") if target_spectral else (
                         "skipped: a spectral patch embedding cannot fill a fixed-channel target")
            report.unexpected[src_key] = skip_proj
            continue
        if ckey == "encoder.patch_embed.proj.bias" and proj_skipped:
            report.unexpected[src_key] = "skipped with the patch projection weight"
            continue
        if tuple(value.shape) != want and ckey == "encoder.patch_embed.proj.weight" and value.shape[0] == want[0]:
            try:
                value, steps = adapt_patch_weight(value, in_chans=want[1], patch_size=want[2:])
                desc += steps
            except ValueError as err:
                report.unexpected[src_key] = f"skipped: {err}"
                proj_skipped = True
                continue
        elif tuple(value.shape) != want and ckey in ("decoder_pred.weight", "decoder_pred.bias") and src_chans is not None:
            if target_spectral:
                report.unexpected[src_key] = "skipped: a fixed-channel prediction cannot fill a spectral model's bands"
                continue
            try:
                value, steps = adapt_pred_weight(
                    value, src_chans=src_chans, src_patch=src_patch, out_chans=encoder.in_chans,
                    patch_size=encoder.patch_size,
                )
                desc += steps
            except ValueError as err:
                report.unexpected[src_key] = f"skipped: {err}"
                continue
        if tuple(value.shape) != want:
            report.mismatched[tkey] = (tuple(value.shape), want)
            continue
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"weights {src_key} contain NaN or Inf values", name)
        out[tkey] = value.detach()
        if desc:
            report.adapted[tkey] = "; ".join(desc)

    inflated = "encoder.patch_embed.proj.weight" in out or "patch_embed.proj.weight" in out
    if src_w is not None and src_dims == 2 and encoder.spatial_dims == 3 and inflated:
        report.notes.append(
            "2D weights in a 3D model: the patch kernel was inflated over depth; the 3D sin-cos positions are "
            "new to the transformer, fine-tune before use"
        )
    if skip_proj is not None and target_spectral:
        report.notes.append(
            "spectral target: the patch projection starts fresh while the transformer blocks are imported; "
            "pretrain or fine-tune the spectral embedding"
        )
    if "encoder.norm.weight" not in c.tensors and any(k.startswith("fc_norm.") for k in sd):
        report.notes.append(
            "the source is a global-pool fine-tune (fc_norm instead of norm); fc_norm normalises the pooled "
            "feature and is not mapped onto UniMAE's per-token norm"
        )

    result = target.load_state_dict(out, strict=False)
    if result.unexpected_keys:  # cannot happen: every key was checked against the target
        raise RuntimeError(f"internal error: unexpected keys {result.unexpected_keys[:5]}")
    report.loaded = [k for k in tgt_sd if k in out]
    report.missing = [k for k in tgt_sd if k not in out]
    return report
