"""The encoder's blocks pick their attention kernel per call: the plain path under CPU autocast (faster there),
the fused kernel otherwise; both compute the same function, with and without a key-padding mask."""

from __future__ import annotations

import torch

from unimae.core.encoder import AttentionBlock, build_blocks, key_padding_mask
from unimae.core.mae import MaskedAutoencoder


def _kernels_seen(block: AttentionBlock, x: torch.Tensor, **kw) -> list[bool]:
    seen: list[bool] = []
    hook = block.attn.register_forward_pre_hook(lambda mod, args: seen.append(bool(mod.fused_attn)))
    try:
        block(x, **kw)
    finally:
        hook.remove()
    return seen


def test_plain_attention_under_cpu_autocast_fused_otherwise() -> None:
    block = build_blocks(32, 1, 4)[0]
    assert isinstance(block, AttentionBlock) and block._fused_default  # timm's default: fused
    x = torch.randn(2, 5, 32)
    assert _kernels_seen(block, x) == [True]
    with torch.autocast("cpu", torch.bfloat16):
        assert _kernels_seen(block, x) == [False]
    assert _kernels_seen(block, x) == [True]  # back to fused once autocast ends
    block._fused_default = False  # timm's own switch (TIMM_FUSED_ATTN=0) is respected
    assert _kernels_seen(block, x) == [False]


def test_both_kernels_compute_the_same_function_with_a_padding_mask() -> None:
    torch.manual_seed(0)
    block = build_blocks(32, 1, 4)[0].eval()
    x = torch.randn(3, 7, 32)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 5:] = False  # a padded sample
    mask = key_padding_mask(keep, x.dtype)
    outs = []
    for fused in (True, False):
        block._fused_default = fused
        outs.append(block(x, attn_mask=mask))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_mae_step_under_bf16_autocast_matches_fp32_closely() -> None:
    torch.manual_seed(0)
    m = MaskedAutoencoder(spatial_dims=2, in_chans=1, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                          decoder_dim=32, decoder_depth=1, decoder_heads=4).eval()  # fmt: skip
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = m(x, generator=torch.Generator().manual_seed(1))["pred"].float()
        with torch.autocast("cpu", torch.bfloat16):
            low = m(x, generator=torch.Generator().manual_seed(1))["pred"].float()
    assert torch.isfinite(low).all()
    assert float((low - ref).abs().max()) < 0.1 * float(ref.abs().max())  # bf16 rounding, not another function
