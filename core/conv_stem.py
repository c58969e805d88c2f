"""A convolutional patch embedding (hybrid encoder): early convolutions before the transformer.

A plain ViT embeds each ``p``-pixel patch with one linear map, so everything it knows about local image
structure (edges, texture, thin lines) must be learnt by attention from data. On the small labelled sets
of medical imaging and remote sensing (tens to hundreds of images) that loses to a CNN trained from
scratch. Following "Early convolutions help transformers see better" (Xiao et al., NeurIPS 2021) and
ConvMAE (Gao et al., NeurIPS 2022), :class:`ConvStem` replaces the linear patch projection by
``log2(p)`` stride-2 convolution stages (3x3 or 3x3x3, BatchNorm, GELU, a residual basic block each) and a 1x1
projection to the token width. Each token then sees an overlapping, translation-equivariant
neighbourhood, and the transformer starts from local features.

MAE pretraining stays honest: hidden patches are zeroed before the stem and the features are masked
again after every stage (ConvMAE's masked convolution), so a visible token sees at most a thin rim of a
hidden neighbour's zeros, never its content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvStem"]


class _Stage(nn.Module):
    """Stride-2 conv -> BN -> GELU, then a residual basic block (conv-BN-GELU-conv-BN, + skip, GELU)."""

    def __init__(self, cin: int, cout: int, nd: int) -> None:
        super().__init__()
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if nd == 2 else nn.BatchNorm3d
        self.down = conv(cin, cout, 3, stride=2, padding=1, bias=False)
        self.norm0 = norm(cout)
        self.conv1 = conv(cout, cout, 3, padding=1, bias=False)
        self.norm1 = norm(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.norm2 = norm(cout)
        nn.init.zeros_(self.norm2.weight)  # the block starts as the identity (Goyal et al. 2017)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm0(self.down(x)))
        return self.act(x + self.norm2(self.conv2(self.act(self.norm1(self.conv1(x))))))


class ConvStem(nn.Module):
    """``(B, C, *S)`` -> ``(B, E, *S / p)`` through ``log2(p)`` stride-2 conv stages and a 1x1 projection.

    Args:
        in_chans: input channels (for a spectral encoder: the width of the shared spectral space).
        embed_dim: token width.
        patch_size: per-axis patch sizes; all equal powers of two (the stem halves every axis per stage).
        spatial_dims: 2 or 3.
        width: channels of the first stage; doubled per stage, capped at ``embed_dim``.
    """

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: Sequence[int], spatial_dims: int = 2, width: int = 32
    ) -> None:
        super().__init__()
        patch = tuple(int(p) for p in patch_size)
        if len(set(patch)) != 1 or patch[0] < 2 or patch[0] & (patch[0] - 1):
            raise ValueError(f"stem='conv' needs an equal power-of-two patch size on all axes, got {patch}")
        self.spatial_dims = int(spatial_dims)
        self.patch_size = patch
        n = int(math.log2(patch[0]))
        widths = [min(int(width) * 2**k, int(embed_dim)) for k in range(n)]
        chans = [int(in_chans), *widths]
        self.stages = nn.ModuleList(_Stage(chans[k], chans[k + 1], self.spatial_dims) for k in range(n))
        conv = nn.Conv2d if self.spatial_dims == 2 else nn.Conv3d
        self.proj = conv(widths[-1], int(embed_dim), 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            nn.init.zeros_(stage.norm2.weight)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """``visible`` ``(B, *grid)`` True where a patch is shown (MAE); hidden patches are zeroed at every scale."""
        if visible is not None:
            visible = visible[:, None].to(x.dtype)
            x = x * _upsample(visible, x.shape[2:])
        for stage in self.stages:
            x = stage(x)
            if visible is not None:
                x = x * _upsample(visible, x.shape[2:])
        return self.proj(x)


def _upsample(grid_mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(grid_mask.shape[2:]) == tuple(size):
        return grid_mask
    return F.interpolate(grid_mask, size=tuple(size), mode="nearest")
