"""Unified 2D/3D patch embedding with fixed or spectral (wavelength-conditioned) channel handling.

Both embeddings work on *patchified* input ``(B, N, C, P)`` (``P`` = voxels per patch), which is the
same tensor the MAE target is built from, so the input is reshaped once per step. The fixed
projection is mathematically a strided convolution; its weight is stored in convolution layout
``(E, C, *patch)`` so timm / MAE / MONAI weights load directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimae.core.errors import InputError, look_up

__all__ = [
    "to_tuple",
    "pad_to_patch",
    "patchify",
    "unpatchify",
    "PatchEmbed",
    "SpectralPatchEmbed",
    "inflate_patch_weight",
]


def to_tuple(value: int | Sequence[int], n: int, what: str = "patch_size") -> tuple[int, ...]:
    """``16 -> (16, 16)``; a sequence must already have ``n`` entries."""
    if isinstance(value, int):
        return (int(value),) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{what} {value!r} must have {n} entries for {n}D inputs")
    return out


def pad_to_patch(
    x: torch.Tensor, patch: Sequence[int], valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zero-pad the trailing spatial dims of ``x`` ``(B, C, *S)`` up to multiples of ``patch``.

    Returns the padded input and a validity mask ``(B, *S')`` in which the padding is False (``None``
    when nothing was padded and no ``valid`` was given).
    """
    spatial = x.shape[2:]
    extra = [(-s) % p for s, p in zip(spatial, patch)]
    if not any(extra):
        return x, valid
    pad: list[int] = []
    for e in reversed(extra):  # F.pad wants the last dim first
        pad += [0, e]
    x = F.pad(x, pad)
    if valid is None:
        valid = torch.ones((x.shape[0], *spatial), dtype=torch.bool, device=x.device)
    valid = F.pad(valid, pad, value=False)
    return x, valid


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, N, C, P)`` with tokens in row-major grid order, ``P = prod(patch)``.

    The spatial dims must already be multiples of ``patch`` (see :func:`pad_to_patch`).
    """
    b, c, *spatial = x.shape
    nd = len(spatial)
    grid = [s // p for s, p in zip(spatial, patch)]
    shape = [b, c]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = x.reshape(shape)
    # (B, C, g1, p1, g2, p2, ...) -> (B, g1, g2, ..., C, p1, p2, ...)
    perm = [0] + [2 + 2 * i for i in range(nd)] + [1] + [3 + 2 * i for i in range(nd)]
    x = x.permute(perm)
    return x.reshape(b, math.prod(grid), c, math.prod(patch))


def unpatchify(patches: torch.Tensor, grid: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, C, P)`` -> ``(B, C, *S)``."""
    b, n, c, _ = patches.shape
    nd = len(grid)
    x = patches.reshape([b, *grid, c, *patch])
    # (B, g1.., C, p1..) -> (B, C, g1, p1, g2, p2, ...)
    perm = [0, 1 + nd]
    for i in range(nd):
        perm += [1 + i, 2 + nd + i]
    x = x.permute(perm)
    return x.reshape([b, c, *[g * p for g, p in zip(grid, patch)]])


class PatchEmbed(nn.Module):
    """Fixed-channel patch embedding: a strided conv over ``in_chans`` channels, 2D or 3D.

    Args:
        in_chans: number of input channels the projection expects.
        embed_dim: token width.
        patch_size: patch edge length (int) or per-axis sizes.
        spatial_dims: 2 for ``(C, H, W)`` images, 3 for ``(C, D, H, W)`` volumes.
        bias: learn a bias.
    """

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int | Sequence[int] = 16, spatial_dims: int = 2, bias: bool = True,
        project: bool = True,
    ) -> None:
        super().__init__()
        self.in_chans = int(in_chans)
        self.embed_dim = int(embed_dim)
        self.spatial_dims = int(spatial_dims)
        self.patch_size = to_tuple(patch_size, self.spatial_dims)
        if not project:  # a convolutional stem embeds instead; this module only checks channels
            self.proj = None
            return
        self.proj = nn.Module()  # keeps the ``proj.weight`` / ``proj.bias`` names of timm and MAE
        self.proj.weight = nn.Parameter(torch.empty(self.embed_dim, self.in_chans, *self.patch_size))
        self.proj.bias = nn.Parameter(torch.zeros(self.embed_dim)) if bias else None
        nn.init.xavier_uniform_(self.proj.weight.view(self.embed_dim, -1))  # as MAE: like nn.Linear

    def check_channels(self, n: int, path: str | None = None) -> None:
        if n != self.in_chans:
            raise InputError(f"model expects {self.in_chans} input channel(s), got {n}", path)

    def forward(self, patches: torch.Tensor, channel_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, C, P)`` -> ``(B, N, E)``. ``channel_keep`` ``(B, C)`` zeroes dropped channels."""
        self.check_channels(patches.shape[2])
        if channel_keep is not None:
            patches = patches * channel_keep[:, None, :, None].to(patches.dtype)
        b, n = patches.shape[:2]
        return F.linear(patches.reshape(b, n, -1), self.proj.weight.reshape(self.embed_dim, -1), self.proj.bias)


class SpectralPatchEmbed(nn.Module):
    """Wavelength-conditioned patch embedding: any subset of the known bands, a constant token count.

    In the spirit of DOFA and SMARTIES, each band ``c`` is mapped by a small network of its centre
    wavelength (Fourier features of λ in µm, plus a learned per-band embedding so that non-optical
    channels identified only by name work too) to a spectral response ``a_c`` in a shared
    ``spectral_dim``-wide space. The image is projected into that space as the mean over the present
    bands, ``z_k = Σ_c a_ck x_c / |present|``, and a fixed patch projection embeds ``z``. Tokens do not
    grow with the band count, and dropping bands (a subset at inference, or channel masking in
    pretraining) only changes which responses enter the mean.

    Args:
        channels: the known bands, ``[{"name": "B04", "wavelength": 0.665}, ...]`` (wavelength may be None).
        embed_dim: token width.
        patch_size: patch edge length or per-axis sizes.
        spatial_dims: 2 or 3.
        spectral_dim: width of the shared spectral space.
        num_frequencies: Fourier frequencies used to encode a wavelength.
        hidden_dim: width of the wavelength network.
    """

    def __init__(
        self,
        channels: Sequence[dict],
        embed_dim: int,
        patch_size: int | Sequence[int] = 16,
        spatial_dims: int = 2,
        spectral_dim: int = 32,
        num_frequencies: int = 16,
        hidden_dim: int = 128,
        project: bool = True,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("spectral patch embedding needs at least one known channel")
        self.channels = [{"name": str(c["name"]), "wavelength": c.get("wavelength")} for c in channels]
        self.band_names = [c["name"] for c in self.channels]
        if len(set(self.band_names)) != len(self.band_names):
            raise ValueError(f"duplicate band names in {self.band_names}")
        self.embed_dim = int(embed_dim)
        self.spatial_dims = int(spatial_dims)
        self.patch_size = to_tuple(patch_size, self.spatial_dims)
        self.spectral_dim = int(spectral_dim)
        waves = [float(c["wavelength"]) if c.get("wavelength") is not None else float("nan") for c in self.channels]
        self.register_buffer("wavelengths", torch.tensor(waves), persistent=False)
        # log-spaced frequencies over wavelengths 0.3–15 µm (optical to thermal)
        self.register_buffer(
            "frequencies", torch.logspace(-1.0, 2.0, int(num_frequencies)) * math.pi, persistent=False
        )
        self.band_embed = nn.Parameter(torch.zeros(len(self.channels), 2 * int(num_frequencies)))
        self.response = nn.Sequential(
            nn.Linear(2 * int(num_frequencies), hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, self.spectral_dim),
        )
        self.proj = None
        if project:  # without it a convolutional stem embeds the spectral-space image (see ``mix``)
            self.proj = nn.Module()
            self.proj.weight = nn.Parameter(torch.empty(self.embed_dim, self.spectral_dim, *self.patch_size))
            self.proj.bias = nn.Parameter(torch.zeros(self.embed_dim))
            nn.init.xavier_uniform_(self.proj.weight.view(self.embed_dim, -1))
        nn.init.normal_(self.band_embed, std=0.02)

    def band_indices(self, names: Sequence[str] | None, path: str | None = None) -> list[int]:
        """Indices of ``names`` among the known bands (all bands when None); unknown names raise."""
        if names is None:
            return list(range(len(self.band_names)))
        index = {n: i for i, n in enumerate(self.band_names)}
        out = []
        for n in names:
            look_up(str(n), self.band_names, what="band")
            out.append(index[str(n)])
        if len(set(out)) != len(out):
            raise InputError(f"duplicate bands in {list(names)}", path)
        return out

    def responses(self, indices: Sequence[int]) -> torch.Tensor:
        """Spectral responses ``(C, spectral_dim)`` of the given bands."""
        idx = torch.as_tensor(list(indices), device=self.band_embed.device)
        lam = self.wavelengths[idx]
        ang = torch.nan_to_num(lam, nan=0.0)[:, None] * self.frequencies[None, :]
        four = torch.cat([ang.sin(), ang.cos()], dim=1)
        four = torch.where(torch.isnan(lam)[:, None], torch.zeros_like(four), four)
        return self.response(four + self.band_embed[idx])

    def forward(
        self, patches: torch.Tensor, band_idx: Sequence[int], channel_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, N, C, P)`` with bands ``band_idx`` -> ``(B, N, E)``; ``channel_keep`` ``(B, C)`` drops bands."""
        b, n, c, p = patches.shape
        mixed = self.mix(patches, band_idx, channel_keep, channel_dim=2)
        return F.linear(mixed.reshape(b, n, -1), self.proj.weight.reshape(self.embed_dim, -1), self.proj.bias)

    def mix(
        self, x: torch.Tensor, band_idx: Sequence[int], channel_keep: torch.Tensor | None = None, channel_dim: int = 1
    ) -> torch.Tensor:
        """Project the bands of ``x`` (axis ``channel_dim``) into the shared spectral space: the mean of
        ``a_c x_c`` over the present bands. ``channel_keep`` ``(B, C)`` drops bands per sample."""
        c = x.shape[channel_dim]
        if c != len(band_idx):
            raise InputError(f"input has {c} channels but {len(band_idx)} band names were given")
        resp = self.responses(band_idx).to(x.dtype)  # (C, K)
        if channel_keep is None:
            weights = (resp / c)[None].expand(x.shape[0], -1, -1)
        else:
            keep = channel_keep.to(x.dtype)  # (B, C)
            weights = keep[:, :, None] * resp[None] / keep.sum(1).clamp(min=1.0)[:, None, None]
        moved = x.movedim(channel_dim, -1)  # (B, ..., C)
        out = torch.einsum("b...c,bck->b...k", moved, weights)
        return out.movedim(-1, channel_dim)


def inflate_patch_weight(weight: torch.Tensor, depth: int, mode: str = "average") -> torch.Tensor:
    """Inflate a 2D patch projection ``(E, C, ph, pw)`` to 3D ``(E, C, depth, ph, pw)`` (I3D-style).

    ``mode="average"`` repeats the kernel over depth and divides by ``depth`` so that a volume of
    identical slices embeds like the 2D image; ``mode="center"`` puts the kernel in the middle slice.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 2D patch weight (E, C, ph, pw), got shape {tuple(weight.shape)}")
    if mode == "average":
        return weight[:, :, None].repeat(1, 1, depth, 1, 1) / depth
    if mode == "center":
        out = weight.new_zeros(weight.shape[0], weight.shape[1], depth, *weight.shape[2:])
        out[:, :, depth // 2] = weight
        return out
    raise ValueError(f"unknown inflation mode {mode!r}; known: 'average', 'center'")
