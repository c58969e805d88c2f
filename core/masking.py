"""Pure, seedable masking functions for masked image modelling.

Conventions: ``N`` tokens per sample in row-major grid order; a boolean ``mask`` is True where a token
is *hidden* from the encoder (as in MAE). All randomness comes from an optional ``torch.Generator``;
noise is drawn on the generator's device (CPU by default) and moved, so results do not depend on
the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "MaskSpec",
    "token_validity",
    "random_masking",
    "channel_masking",
    "complementary_masks",
    "masks_to_spec",
]


@dataclass
class MaskSpec:
    """Which tokens the encoder sees.

    Attributes:
        ids_keep: ``(B, L)`` indices of visible tokens (padded with index 0 where ``keep_pad`` is False).
        keep_pad: ``(B, L)`` True for real visible tokens, False for batch padding (None if no padding).
        mask: ``(B, N)`` True where a token is hidden.
    """

    ids_keep: torch.Tensor
    keep_pad: torch.Tensor | None
    mask: torch.Tensor


def token_validity(valid: torch.Tensor | None, patch: Sequence[int], min_fraction: float = 0.5) -> torch.Tensor | None:
    """Per-token validity ``(B, N)`` from a pixel mask ``(B, *S)``: True if at least ``min_fraction`` is valid.

    ``S`` must be multiples of ``patch``. Returns None when ``valid`` is None.
    """
    if valid is None:
        return None
    nd = len(patch)
    v = valid.float().unsqueeze(1)
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    frac = pool(v, kernel_size=tuple(patch), stride=tuple(patch))
    return (frac.flatten(1) >= min_fraction)


def _noise(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(*shape, generator=generator, device=gen_device)
    return noise.to(device) if device is not None else noise


def random_masking(
    batch: int,
    num_tokens: int,
    mask_ratio: float,
    *,
    token_valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> MaskSpec:
    """Per-sample uniform random masking (MAE), foreground-aware when ``token_valid`` is given.

    Without ``token_valid`` each sample keeps ``round(N * (1 - mask_ratio))`` tokens (at least 1). With
    ``token_valid`` ``(B, N)``, invalid tokens (background, nodata, outside the field of view, padding)
    are never visible, and sample ``b`` keeps ``round(n_valid_b * (1 - mask_ratio))`` of its valid
    tokens; samples are padded to the longest keep list and ``keep_pad`` marks the padding.

    Returns:
        :class:`MaskSpec` with ``mask`` True for hidden tokens.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    noise = _noise((batch, num_tokens), generator, device)
    if token_valid is None:
        keep = max(1, int(round(num_tokens * (1.0 - mask_ratio))))
        ids_keep = torch.argsort(noise, dim=1)[:, :keep]
        mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=noise.device)
        mask.scatter_(1, ids_keep, False)
        return MaskSpec(ids_keep=ids_keep, keep_pad=None, mask=mask)

    token_valid = token_valid.to(noise.device)
    noise = noise.masked_fill(~token_valid, 2.0)  # invalid tokens sort last: never kept
    n_valid = token_valid.sum(1)
    keep_b = torch.clamp(torch.round(n_valid.double() * (1.0 - mask_ratio)).long(), min=1)
    keep_b = torch.minimum(keep_b, n_valid.clamp(min=1))
    length = int(keep_b.max())
    order = torch.argsort(noise, dim=1)[:, :length]
    keep_pad = torch.arange(length, device=noise.device)[None, :] < keep_b[:, None]
    keep_pad &= torch.gather(token_valid, 1, order)  # a sample with no valid token keeps nothing real
    ids_keep = torch.where(keep_pad, order, torch.zeros_like(order))
    mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order, ~keep_pad)  # indices in a row are distinct: kept -> visible, padding -> hidden
    return MaskSpec(ids_keep=ids_keep, keep_pad=None if bool(keep_pad.all()) else keep_pad, mask=mask)


def channel_masking(
    batch: int,
    num_channels: int,
    channel_mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Per-sample channel dropping (ChA-MAEViT): ``(B, C)`` True for channels the encoder *keeps*.

    Each sample hides ``floor(C * channel_mask_ratio)`` channels, but always keeps at least one.
    """
    if not 0.0 <= channel_mask_ratio < 1.0:
        raise ValueError(f"channel_mask_ratio must be in [0, 1), got {channel_mask_ratio}")
    hide = min(int(math.floor(num_channels * channel_mask_ratio)), num_channels - 1)
    noise = _noise((batch, num_channels), generator, device)
    ids = torch.argsort(noise, dim=1)[:, :hide]
    keep = torch.ones(batch, num_channels, dtype=torch.bool, device=noise.device)
    keep.scatter_(1, ids, False)
    return keep


def complementary_masks(
    num_tokens: int, k: int, *, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``K`` masks whose hidden sets partition the tokens: ``(K, N)`` bool, each token hidden exactly once.

    Used for anomaly maps: reconstructing with each mask in turn reconstructs every patch while it is
    hidden. Tokens are assigned to the ``K`` sets by a random permutation (sizes differ by at most 1).
    """
    if not 1 <= k <= num_tokens:
        raise ValueError(f"k must be between 1 and the number of tokens ({num_tokens}), got {k}")
    perm = torch.argsort(_noise((num_tokens,), generator, device))
    groups = torch.empty(num_tokens, dtype=torch.long, device=perm.device)
    groups[perm] = torch.arange(num_tokens, device=perm.device) % k
    return groups[None, :] == torch.arange(k, device=perm.device)[:, None]


def masks_to_spec(mask: torch.Tensor) -> MaskSpec:
    """Turn an explicit hidden-token mask ``(B, N)`` into a :class:`MaskSpec` (rows may keep different counts)."""
    mask = mask.bool()
    visible = ~mask
    counts = visible.sum(1)
    length = max(int(counts.max()), 1)
    # stable sort puts visible tokens first in index order
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :length]
    keep_pad = torch.arange(length, device=mask.device)[None, :] < counts[:, None]
    ids_keep = torch.where(keep_pad, order, torch.zeros_like(order))
    return MaskSpec(ids_keep=ids_keep, keep_pad=None if bool(keep_pad.all()) else keep_pad, mask=mask)
