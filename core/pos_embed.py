"""Fixed sin-cos position embeddings for any 2D or 3D token grid (no fixed ``img_size``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["sincos_pos_embed", "sincos_1d"]


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(N,)`` positions -> ``(N, dim)`` embedding ``[sin(p*w), cos(p*w)]``; ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / temperature**omega
    out = positions.double()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


@functools.lru_cache(maxsize=64)
def _sincos_cpu(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    nd = len(grid)
    per_axis = 2 * (dim // (2 * nd))
    if per_axis == 0:
        raise ValueError(f"embedding width {dim} is too small for a {nd}D grid")
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = [sincos_1d(c.reshape(-1), per_axis) for c in coords]
    pad = dim - per_axis * nd  # widths not divisible by 2*nd: zero-fill the remainder
    if pad:
        parts.append(torch.zeros(parts[0].shape[0], pad))
    return torch.cat(parts, dim=1)


def sincos_pos_embed(
    grid: Sequence[int], dim: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sin-cos embedding ``(prod(grid), dim)`` for a token grid ``(h, w)`` or ``(d, h, w)``.

    Each axis gets ``2 * (dim // (2 * len(grid)))`` channels (as in MAE for 2D), tokens are in
    row-major grid order, and the result is cached per ``(grid, dim)``.
    """
    return _sincos_cpu(tuple(int(g) for g in grid), int(dim)).to(device=device, dtype=dtype)
