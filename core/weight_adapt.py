"""Adapting foreign ViT tensors to a UniMAE model: patch kernels, prediction heads, sin-cos position tables.

Kernels: input channels 1 <-> 3 <-> N with timm's ``adapt_input_conv`` convention; the patch size by
the FlexiViT pseudo-inverse of bicubic resizing (axis by axis, so 3D works); 2D -> 3D by inflating
over depth; ``decoder_pred`` alike on its output side. Position tables: a source table is recognised
as a fixed sin-cos table up to a channel permutation (:func:`recognise_sincos`), which
:mod:`unimae.core.weight_import` then applies to the whole residual stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv

from unimae.core.patch_embed import inflate_patch_weight
from unimae.core.pos_embed import sincos_pos_embed

__all__ = [
    "MAX_GRID_CANDIDATES",
    "grid_candidates",
    "match_columns",
    "looks_sincos",
    "recognise_sincos",
    "split_prefix",
    "resample_patch_kernel",
    "adapt_patch_weight",
    "adapt_pred_weight",
]

#: how many grid factorisations of the token count are tried when recognising a position table
MAX_GRID_CANDIDATES = 16


def grid_candidates(n: int, dims: int) -> list[tuple[int, ...]]:
    """Factorisations of ``n`` tokens into ``dims`` grid sizes, most isotropic first."""
    out: list[tuple[int, ...]] = []

    def rec(rest: int, left: int, acc: tuple[int, ...]) -> None:
        if left == 1:
            out.append(acc + (rest,))
            return
        for d in range(1, rest + 1):
            if rest % d == 0:
                rec(rest // d, left - 1, acc + (d,))

    if n > 0:
        rec(n, dims, ())
    out.sort(key=lambda g: (max(g) / min(g), g))
    return out[:MAX_GRID_CANDIDATES]


def match_columns(src: torch.Tensor, ref: torch.Tensor, tol: float) -> tuple[list[int], float] | None:
    """A permutation ``perm`` with ``ref[:, i] ~ src[:, perm[i]]`` (RMS over rows <= tol), and the worst RMS.

    The identity is kept when it fits; otherwise the assignment of least total squared difference
    (``scipy.optimize.linear_sum_assignment``), so near-constant low-frequency columns that are
    interchangeable on this grid are paired as closely as possible.
    """
    from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-image

    n_rows, width = ref.shape
    # cheap necessary condition: a column permutation keeps the multiset of column norms, and
    # |norm(a) - norm(b)| <= norm(a - b), so the sorted norms must agree within the tolerance
    norms_src = src.double().norm(dim=0).sort().values
    norms_ref = ref.double().norm(dim=0).sort().values
    if float((norms_src - norms_ref).abs().max()) / math.sqrt(n_rows) > tol:
        return None
    dist = torch.cdist(ref.T.double(), src.T.double()) / math.sqrt(n_rows)  # (E ref, E src)
    diag = dist.diagonal()
    if bool((diag <= tol).all()):
        return list(range(width)), float(diag.max())
    if not bool((dist <= tol).any(1).all()) or not bool((dist <= tol).any(0).all()):
        return None
    rows, cols = linear_sum_assignment(dist.pow(2).numpy())
    perm = [0] * width
    for r, c in zip(rows.tolist(), cols.tolist()):
        perm[r] = c
    worst = float(dist[torch.arange(width), torch.tensor(perm)].max())
    return (perm, worst) if worst <= tol else None


def looks_sincos(table: torch.Tensor) -> bool:
    """Every row of a sin-cos table has the same norm, sqrt(pairs) (sin^2 + cos^2 = 1): a cheap pre-check."""
    width = table.shape[1]
    norms = table.double().norm(dim=1)
    # pairs is at most width / 2 (fewer when the width is not divisible by 2 * dims, zero-filled)
    lo, hi = math.sqrt(max(width / 2 - 3, 1)) * 0.8, math.sqrt(width / 2) * 1.2
    return bool(((norms >= lo) & (norms <= hi)).all())


def recognise_sincos(
    table: torch.Tensor, dims: int, tols: Sequence[float]
) -> tuple[list[int], tuple[int, ...], float] | None:
    """Match a ``(N, E)`` table to UniMAE's sin-cos on some grid up to a channel permutation."""
    n, width = table.shape
    for grid in grid_candidates(n, dims):
        try:
            ref = sincos_pos_embed(grid, width, dtype=torch.float64)
        except ValueError:
            return None
        for tol in tols:
            hit = match_columns(table.double(), ref, tol)
            if hit is not None:
                return hit[0], grid, hit[1]
    return None


def split_prefix(table: torch.Tensor, prefix: int | None, has_cls: bool, dims: int) -> list[int]:
    """Class-token rows to try for a position table: explicit, or by which count leaves a regular grid."""
    if prefix is not None:
        return [prefix]
    if not has_cls:
        return [0]
    n = table.shape[0]
    regular = lambda m: m > 0 and round(m ** (1.0 / dims)) ** dims == m  # noqa: E731
    return [1, 0] if regular(n - 1) or not regular(n) else [0, 1]


def _resize_matrix(n_old: int, n_new: int) -> torch.Tensor:
    """``(n_new, n_old)`` 1D bicubic antialiased resize (as torch/timm resize a patch along one axis)."""
    eye = torch.eye(n_old, dtype=torch.float32).reshape(n_old, 1, 1, n_old)
    out = F.interpolate(eye, size=(1, n_new), mode="bicubic", antialias=True, align_corners=False)
    return out.reshape(n_old, n_new).T.double()


def resample_patch_kernel(weight: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Resample a patch projection ``(E, C, *p)`` to ``(E, C, *patch_size)`` (FlexiViT pseudo-inverse).

    The new kernel ``w'`` solves ``<resize(x), w'> ~ <x, w>`` for bicubic antialiased resizing, axis by axis
    (the resize is separable, so this equals timm's ``resample_patch_embed`` in 2D and extends it to 3D).
    """
    nd = weight.ndim - 2
    if len(patch_size) != nd:
        raise ValueError(f"patch_size {tuple(patch_size)} does not match a {nd}D kernel {tuple(weight.shape)}")
    out = weight.double()
    for axis, n_new in zip(range(2, 2 + nd), patch_size):
        n_old = out.shape[axis]
        if n_old == n_new:
            continue
        pinv = torch.linalg.pinv(_resize_matrix(n_old, int(n_new)))  # (n_old, n_new)
        out = torch.movedim(torch.movedim(out, axis, -1) @ pinv, -1, axis)
    return out.to(weight.dtype)


def _resize_output(values: torch.Tensor, patch_size: Sequence[int], first_axis: int) -> torch.Tensor:
    """Resize predicted pixels ``(..., *p, ...)`` (axes from ``first_axis``) to ``patch_size`` (forward resize)."""
    out = values.double()
    for i, n_new in enumerate(patch_size):
        axis = first_axis + i
        if out.shape[axis] == n_new:
            continue
        mat = _resize_matrix(out.shape[axis], int(n_new))  # (n_new, n_old)
        out = torch.movedim(torch.movedim(out, axis, -1) @ mat.T, -1, axis)
    return out.to(values.dtype)


def _channel_rule(src: int, dst: int) -> str | None:
    """How ``src`` input channels become ``dst`` (None: no sensible mapping)."""
    if src == dst:
        return ""
    if dst == 1:
        return f"{src} -> 1 channel by summing the kernels (timm adapt_input_conv)"
    if dst > src:
        return f"{src} -> {dst} channels by cycling the kernels, scaled by {src}/{dst} (timm adapt_input_conv)"
    return None


def adapt_patch_weight(
    weight: torch.Tensor, *, in_chans: int, patch_size: Sequence[int]
) -> tuple[torch.Tensor, list[str]]:
    """Adapt a patch projection ``(E, C, *p)`` (2D or 3D) to ``(E, in_chans, *patch_size)``.

    Channels follow timm's ``adapt_input_conv``; the patch is resampled with :func:`resample_patch_kernel`;
    a 2D kernel for a 3D ``patch_size`` is resampled in-plane and inflated over depth by averaging, so a
    volume of identical slices embeds like the 2D image. Returns the kernel and what was done; raises
    ``ValueError`` when no mapping exists (3D -> 2D, or fewer channels other than 1).
    """
    src_dims, dst_dims = weight.ndim - 2, len(patch_size)
    done: list[str] = []
    e, c = weight.shape[:2]
    rule = _channel_rule(c, in_chans)
    if rule is None:
        raise ValueError(f"no sensible mapping of {c} input channels onto {in_chans}")
    if src_dims == 3 and dst_dims == 2:
        raise ValueError("a 3D patch kernel cannot be used by a 2D model")
    if rule:
        flat = weight.float().reshape(e, c, -1, weight.shape[-1])  # adapt_input_conv wants 4D
        flat = adapt_input_conv(in_chans, flat, base_chans=c)
        weight = flat.reshape(e, in_chans, *weight.shape[2:]).to(weight.dtype)
        done.append(rule)
    in_plane = tuple(patch_size[-src_dims:]) if dst_dims > src_dims else tuple(patch_size)
    if tuple(weight.shape[2:]) != in_plane:
        old = tuple(weight.shape[2:])
        weight = resample_patch_kernel(weight, in_plane)
        done.append(f"patch {list(old)} -> {list(in_plane)} resampled (FlexiViT pseudo-inverse of bicubic resize)")
    if dst_dims > src_dims:
        weight = inflate_patch_weight(weight, int(patch_size[0]), mode="average")
        done.append(f"2D kernel inflated to 3D over depth {patch_size[0]} (averaged)")
    return weight, done


def adapt_pred_weight(
    weight: torch.Tensor,
    *,
    src_chans: int,
    src_patch: Sequence[int],
    out_chans: int,
    patch_size: Sequence[int],
) -> tuple[torch.Tensor, list[str]]:
    """Adapt ``decoder_pred`` rows ``(C * P, ...)`` in UniMAE's ``(channel, pixel)`` order to a new target.

    Works for the weight ``(C*P, D)`` and the bias ``(C*P,)``. Channels: ``C -> 1`` averages the channel
    predictions, ``C -> more`` cycles them; pixels are resized (bicubic) to ``patch_size`` and a 2D patch is
    repeated over the depth of a 3D one.
    """
    tail = tuple(weight.shape[1:])
    src_patch = tuple(int(p) for p in src_patch)
    if weight.shape[0] != src_chans * math.prod(src_patch):
        raise ValueError(f"decoder_pred has {weight.shape[0]} rows, not {src_chans} x {math.prod(src_patch)}")
    src_dims, dst_dims = len(src_patch), len(patch_size)
    if src_dims == 3 and dst_dims == 2:
        raise ValueError("a 3D patch prediction cannot be used by a 2D model")
    w = weight.reshape(src_chans, *src_patch, *tail)
    done: list[str] = []
    if out_chans != src_chans:
        if out_chans == 1:
            w = w.mean(0, keepdim=True)
            done.append(f"{src_chans} -> 1 output channel by averaging the channel predictions")
        elif out_chans > src_chans:
            reps = math.ceil(out_chans / src_chans)
            w = w.repeat(reps, *([1] * (w.ndim - 1)))[:out_chans]
            done.append(f"{src_chans} -> {out_chans} output channels by cycling the channel predictions")
        else:
            raise ValueError(f"no sensible mapping of {src_chans} predicted channels onto {out_chans}")
    in_plane = tuple(patch_size[-src_dims:]) if dst_dims > src_dims else tuple(patch_size)
    if src_patch != in_plane:
        w = _resize_output(w, in_plane, 1)
        done.append(f"predicted patch {list(src_patch)} -> {list(in_plane)} resized (bicubic)")
    if dst_dims > src_dims:
        w = w.unsqueeze(1).expand(w.shape[0], int(patch_size[0]), *w.shape[1:]).contiguous()
        done.append(f"2D prediction repeated over depth {patch_size[0]}")
    return w.reshape(-1, *tail).contiguous(), done
