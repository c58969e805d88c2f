"""Task heads on top of the UniMAE encoder: classification and 2D/3D segmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetrUpBlock
from monai.networks.layers import Conv
from torch import nn

__all__ = ["ClassificationHead", "SegmentationDecoder", "tokens_to_grid", "default_feature_layers"]


def tokens_to_grid(tokens: torch.Tensor, grid: Sequence[int], num_prefix: int = 1) -> torch.Tensor:
    """``(B, prefix + N, E)`` tokens -> ``(B, E, *grid)`` feature map."""
    x = tokens[:, num_prefix:]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def default_feature_layers(depth: int, n: int) -> list[int]:
    """``n`` encoder block indices (1-based) spread evenly up to the last block, e.g. 12, 4 -> [3, 6, 9, 12]."""
    n = max(1, min(n, depth))
    return sorted({max(1, round(depth * (i + 1) / n)) for i in range(n)})


class ClassificationHead(nn.Module):
    """Pooled token -> norm -> dropout -> linear. Multi-class or multi-label (the loss decides).

    Args:
        embed_dim: token width.
        num_classes: output logits.
        pool: ``"avg"`` (mean of patch tokens inside the valid region, as MAE fine-tuning) or ``"cls"``.
        dropout: dropout before the linear layer.
    """

    def __init__(self, embed_dim: int, num_classes: int, pool: str = "avg", dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in ("avg", "cls"):
            raise ValueError(f"pool must be 'avg' or 'cls', got {pool!r}")
        self.pool = pool
        self.norm = nn.LayerNorm(embed_dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=2e-5 if num_classes > 1 else 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(
        self, tokens: torch.Tensor, num_prefix: int = 1, token_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, prefix + N, E)`` -> logits ``(B, num_classes)``; ``token_valid`` ``(B, N)`` restricts the mean."""
        if self.pool == "cls":
            if num_prefix == 0:
                raise ValueError("pool='cls' needs an encoder with a class token")
            pooled = tokens[:, 0]
        else:
            patch = tokens[:, num_prefix:]
            if token_valid is None:
                pooled = patch.mean(1)
            else:
                w = token_valid.to(patch.dtype)[..., None]
                pooled = (patch * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.fc(self.drop(self.norm(pooled)))


class SegmentationDecoder(nn.Module):
    """Hierarchical conv decoder fed by several encoder depths plus a full-resolution conv path.

    For a patch of ``2**S`` pixels the decoder has ``S`` upsampling stages (UNETR / Hi-End-MAE style).
    A small convolutional stem on the *input image* gives skip features at scales ``1, 1/2, ...,
    1/2**(S-1)``, so structures one or two pixels wide (retinal vessels) are recovered even though the
    transformer sees 16-pixel patches. Encoder features from ``len(feature_layers)`` depths are projected
    and added to the skips, deepest features at the coarsest stage (hierarchical decoding).

    Args:
        spatial_dims: 2 or 3.
        in_chans: channels of the raw input given to the stem.
        embed_dim: encoder token width.
        patch_size: encoder patch size per axis (each a power of two, equal on all axes).
        num_classes: output channels (logits).
        feature_size: stem width at full resolution; doubles per stage, capped at ``8 * feature_size``.
        num_features: number of encoder depths fed to the decoder (one per stage at most).
        norm_name: MONAI norm name for the conv blocks.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_chans: int,
        embed_dim: int,
        patch_size: Sequence[int],
        num_classes: int,
        feature_size: int = 16,
        num_features: int = 4,
        norm_name: str = "instance",
    ) -> None:
        super().__init__()
        patch = tuple(patch_size)
        if len(set(patch)) != 1 or patch[0] < 2 or patch[0] & (patch[0] - 1):
            raise ValueError(f"segmentation needs an equal power-of-two patch size on all axes, got {patch}")
        self.spatial_dims = spatial_dims
        self.stages = int(math.log2(patch[0]))
        widths = [min(feature_size * 2**k, 8 * feature_size) for k in range(self.stages + 1)]
        self.widths = widths
        self.num_features = max(1, min(num_features, self.stages))
        # stem: full-resolution conv path producing skips at 1, 1/2, ..., 1/2**(S-1)
        stem = [UnetResBlock(spatial_dims, in_chans, widths[0], 3, 1, norm_name)]
        for k in range(1, self.stages):
            stem.append(UnetResBlock(spatial_dims, widths[k - 1], widths[k], 3, 2, norm_name))
        self.stem = nn.ModuleList(stem)
        conv = Conv[Conv.CONV, spatial_dims]
        self.bottleneck = conv(embed_dim, widths[self.stages], kernel_size=1)
        # encoder features (shallower -> finer stage) projected onto the skip widths
        self.feature_proj = nn.ModuleList(
            conv(embed_dim, widths[self.stages - 1 - j], kernel_size=1) for j in range(self.num_features - 1)
        )
        self.up = nn.ModuleList(
            UnetrUpBlock(spatial_dims, widths[k + 1], widths[k], 3, 2, norm_name, res_block=True)
            for k in reversed(range(self.stages))
        )
        self.out = UnetOutBlock(spatial_dims, widths[0], num_classes)

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``image`` ``(B, C, *S)`` (patch-padded) and encoder feature maps ``(B, E, *grid)``, shallow to deep.

        Returns logits ``(B, num_classes, *S)``.
        """
        if len(features) != self.num_features:
            raise ValueError(f"expected {self.num_features} encoder feature maps, got {len(features)}")
        skips = []
        h = image
        for block in self.stem:
            h = block(h)
            skips.append(h)
        x = self.bottleneck(features[-1])
        # features[-2] feeds the coarsest skip, features[-3] the next, ...
        extra = {self.stages - 1 - j: proj(features[-2 - j]) for j, proj in enumerate(self.feature_proj)}
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        for stage, up in zip(reversed(range(self.stages)), self.up):
            skip = skips[stage]
            if stage in extra:
                skip = skip + F.interpolate(extra[stage], size=skip.shape[2:], mode=mode, align_corners=False)
            x = up(x, skip)
        return self.out(x)
