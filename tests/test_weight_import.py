"""Importing timm, MAE-family (MAE / RETFound / medical_mae), MONAI and UniMAE weights (CPU, tiny sizes).

Every foreign state dict here is built with its exact key layout: timm's own ``VisionTransformer``,
MONAI's own ``MaskedAutoEncoderViT``, and for the MAE family a reference module that mirrors
facebookresearch/mae ``models_mae.py`` (timm ``Block`` s, MAE's fixed 2D sin-cos tables whose first half
encodes the column, MAE's ``(pixel, channel)`` patchify order), so its ``state_dict()`` has MAE's names.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from monai.networks.nets import MaskedAutoEncoderViT
from safetensors.torch import save_file
from timm.layers import resample_patch_embed
from timm.models.vision_transformer import Block
from torch import nn

from unimae.core.encoder import ViTEncoder
from unimae.core.errors import InputError
from unimae.core.mae import MaskedAutoencoder
from unimae.core.patch_embed import PatchEmbed
from unimae.core.pos_embed import sincos_pos_embed
from unimae.core.weight_import import (
    POS_SINCOS_NOTE,
    ImportReport,
    adapt_patch_weight,
    detect_layout,
    import_weights,
    read_state_dict,
    resample_patch_kernel,
    save_as_safetensors,
)

ATOL = 2e-5
# MONAI's own sin-cos builder calls torch.meshgrid without `indexing`
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")


def tiny_mae(**kwargs) -> MaskedAutoencoder:
    args = dict(embed_dim=32, depth=1, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, patch_size=8)
    args.update(kwargs)
    return MaskedAutoencoder(**args).eval()


def set_layernorm_eps(model: nn.Module, eps: float) -> nn.Module:
    """timm / MAE use eps=1e-6, UniMAE's blocks 1e-5: align them where a test wants bit-level parity."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    return model


def timm_vit(**kwargs) -> nn.Module:
    """A true timm ViT (no download): vit_tiny_patch16_224 shrunk to 2 blocks on 32x32 inputs."""
    args = dict(pretrained=False, depth=2, img_size=32, patch_size=8)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


def put_our_sincos(vit: nn.Module, cls_row: torch.Tensor | None = None) -> None:
    """Replace timm's learned table by UniMAE's sin-cos (plus a class-token row)."""
    grid = vit.patch_embed.grid_size
    width = vit.pos_embed.shape[-1]
    table = sincos_pos_embed(grid, width)
    row = torch.zeros(1, width) if cls_row is None else cls_row.reshape(1, width)
    with torch.no_grad():
        vit.pos_embed.copy_(torch.cat([row, table])[None])


# -- a reference MAE (facebookresearch/mae models_mae.py layout and maths) -----------------------------


def mae_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d_sincos(dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed: meshgrid(w, h), so the first half of the channels encodes the column."""
    gh = np.arange(grid_size, dtype=np.float32)
    gw = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([mae_1d(dim // 2, grid[0]), mae_1d(dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb


class MAEReference(nn.Module):
    """MAE with the exact parameter names of facebookresearch/mae (and RETFound, medical_mae)."""

    def __init__(self, img_size=32, patch=8, in_chans=3, dim=64, depth=2, heads=2, dec_dim=32, dec_depth=1, dec_heads=2):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch, self.in_chans, self.grid = patch, in_chans, img_size // patch
        self.patch_embed = timm.layers.PatchEmbed(img_size, patch, in_chans, dim)
        n = self.grid**2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth))
        self.norm = norm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dec_dim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, dec_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dec_dim, dec_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(dec_depth)
        )
        self.decoder_norm = norm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch**2 * in_chans)
        self.pos_embed.data.copy_(torch.from_numpy(mae_2d_sincos(dim, self.grid)).float()[None])
        self.decoder_pos_embed.data.copy_(torch.from_numpy(mae_2d_sincos(dec_dim, self.grid)).float()[None])
        for p in self.parameters():  # non-trivial norms and biases so every tensor matters
            if p.requires_grad and p.ndim == 1:
                p.data.add_(torch.randn_like(p) * 0.1)
        self.eval()

    def patchify(self, imgs):
        b, c, h, w = imgs.shape
        p, g = self.patch, h // self.patch
        x = imgs.reshape(b, c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(b, g * g, p * p * c)

    def forward_encoder(self, x, keep=None):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs, keep):
        """``keep`` ``(B, L)`` indices of visible patches -> predictions ``(B, N, p*p*C)``."""
        latent = self.forward_encoder(imgs, keep)
        x = self.decoder_embed(latent)
        n = self.grid**2
        full = self.mask_token.expand(x.shape[0], n, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
        x = torch.cat([x[:, :1], full], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def keep_and_mask(b: int, n: int, n_keep: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep = torch.stack([torch.randperm(n, generator=g)[:n_keep].sort().values for _ in range(b)])
    mask = torch.ones(b, n, dtype=torch.bool)
    mask.scatter_(1, keep, False)
    return keep, mask


# -- timm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_kind", ["mae", "encoder"])
def test_timm_layout_matches_timm_features(target_kind):
    torch.manual_seed(0)
    vit = set_layernorm_eps(timm_vit(), 1e-5)
    cls_row = torch.randn(192) * 0.5  # a learned class-token position: must be folded into cls_token
    put_our_sincos(vit, cls_row)
    if target_kind == "mae":
        model = tiny_mae(embed_dim=192, depth=2, num_heads=3)
        enc, prefix = model.encoder, "encoder."
    else:
        model = enc = ViTEncoder(embed_dim=192, depth=2, num_heads=3, patch_size=8).eval()
        prefix = ""
    report = import_weights(model, vit.state_dict())
    assert report.layout == "timm"
    assert report.unexpected["pos_embed"] == POS_SINCOS_NOTE
    assert report.unexpected["head.weight"].startswith("classification head")
    assert report.encoder_permutation is None  # our own sin-cos: nothing to permute
    assert "pos_embed[:, 0]" in report.adapted[prefix + "cls_token"]
    assert not report.mismatched
    enc_missing = [k for k in report.missing if k.startswith(prefix) and not k.startswith("decoder")]
    assert enc_missing == []
    if target_kind == "mae":
        assert "decoder_embed.weight" in report.missing and "mask_token" in report.missing
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = vit.forward_features(x)
        got = enc(x)["tokens"]
    assert got.shape == want.shape == (2, 17, 192)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_timm_learned_pos_embed_is_reported_not_transferred():
    torch.manual_seed(1)
    vit = timm_vit()  # timm's learned (random) pos_embed
    model = tiny_mae(embed_dim=192, depth=2, num_heads=3)
    report = import_weights(model, vit.state_dict(), layout="timm")
    assert "learned position embedding" in report.unexpected["pos_embed"]
    assert "not transferred" in report.unexpected["pos_embed"]
    assert any("learned position embedding" in n for n in report.notes)
    assert report.encoder_permutation is None
    # the transformer itself is loaded verbatim
    torch.testing.assert_close(model.encoder.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    torch.testing.assert_close(model.encoder.cls_token, vit.cls_token + vit.pos_embed[:, :1])


def test_fine_tuned_sincos_table_is_recognised_with_its_drift_reported():
    """MAE fine-tuning trains the (sin-cos initialised) pos_embed a little: still recognised, drift dropped."""
    torch.manual_seed(16)
    vit = timm_vit(embed_dim=64, num_heads=2)
    table = torch.from_numpy(mae_2d_sincos(64, 4)).float()
    table[1:] += torch.randn(16, 64) * 0.01
    with torch.no_grad():
        vit.pos_embed.copy_(table[None])
    report = import_weights(tiny_mae(embed_dim=64, depth=2, num_heads=2), vit.state_dict())
    assert report.unexpected["pos_embed"].startswith(POS_SINCOS_NOTE)
    assert "close to sin-cos" in report.unexpected["pos_embed"]
    assert report.encoder_permutation is not None


# -- MAE family ---------------------------------------------------------------------------------------


def mae_checkpoint(ref: MAEReference) -> dict:
    """What MAE's main_pretrain.py saves: the weights under "model", plus optimizer state, epoch and args."""
    return {
        "model": {f"module.{k}": v for k, v in ref.state_dict().items()},  # saved from a DDP-wrapped model
        "epoch": 399,
        "args": argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True, mask_ratio=0.75),
        "scaler": {"scale": 65536.0, "growth_tracker": 0},
    }


def test_mae_family_checkpoint_exact_parity(tmp_path):
    torch.manual_seed(2)
    ref = set_layernorm_eps(MAEReference(), 1e-5)
    path = tmp_path / "RETFound_cfp_weights.pth"
    torch.save(mae_checkpoint(ref), path)
    model = tiny_mae(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    report = import_weights(model, path, allow_pickle=True)
    assert report.layout == "mae" and report.source == path.name
    assert report.missing == [] and not report.mismatched
    assert set(report.unexpected) == {"pos_embed", "decoder_pos_embed"}
    assert all(v == POS_SINCOS_NOTE for v in report.unexpected.values())
    # MAE's table holds the column first: recognised as UniMAE's sin-cos in another channel order
    perm = report.encoder_permutation
    assert perm is not None and sorted(perm) == list(range(64)) and perm != list(range(64))
    assert report.decoder_permutation is not None
    assert "(channel, pixel)" in report.adapted["decoder_pred.weight"]

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_encoder(x)
        got = model.encoder(x)["tokens"]
    torch.testing.assert_close(got, want[..., perm], atol=ATOL, rtol=1e-4)

    keep, mask = keep_and_mask(2, 16, 4)
    with torch.no_grad():
        want_pred = ref(x, keep)  # (B, N, p*p*C) in MAE's (pixel, channel) order
        out = model(x, mask=mask)
    want_pred = want_pred.reshape(2, 16, 64, 3).permute(0, 1, 3, 2)
    torch.testing.assert_close(out["pred"], want_pred, atol=ATOL, rtol=1e-4)
    assert torch.equal(out["mask"], mask)


def test_mae_family_default_layernorm_eps_agrees_closely():
    torch.manual_seed(3)
    ref = MAEReference()  # MAE's own eps=1e-6
    model = tiny_mae(embed_dim=64, depth=2, num_heads=2)
    report = import_weights(model, {"model": ref.state_dict()})
    assert any("eps" in n for n in report.notes)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_encoder(x)[..., report.encoder_permutation]
        got = model.encoder(x)["tokens"]
    assert float((got - want).norm() / want.norm()) < 5e-3  # eps 1e-6 vs 1e-5 only


def test_mae_decoder_pred_adapted_to_one_channel():
    torch.manual_seed(4)
    ref = MAEReference()
    model = tiny_mae(in_chans=1, embed_dim=64, depth=2, num_heads=2)
    report = import_weights(model, ref.state_dict())
    perm = report.decoder_permutation
    w = ref.decoder_pred.weight.detach().reshape(64, 3, 32)  # (pixel, channel, decoder width)
    torch.testing.assert_close(model.decoder_pred.weight, w.mean(1)[:, perm])
    torch.testing.assert_close(model.decoder_pred.bias, ref.decoder_pred.bias.detach().reshape(64, 3).mean(1))
    assert "averaging" in report.adapted["decoder_pred.weight"]
    assert "summing" in report.adapted["encoder.patch_embed.proj.weight"]


# -- MONAI -------------------------------------------------------------------------------------------


def monai_encoder_features(net: MaskedAutoEncoderViT, x: torch.Tensor) -> torch.Tensor:
    """MONAI's encoder with masking disabled: its forward always masks, so run its modules in order."""
    h = net.patch_embedding(x)
    h = torch.cat([net.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
    return net.blocks(h)  # the transformer blocks and the closing LayerNorm


@pytest.mark.parametrize(
    "dims,chans,proj,qkv_bias",
    [(3, 1, "conv", False), (2, 3, "perceptron", True)],
    ids=["3d-conv-ct", "2d-perceptron-rgb"],
)
def test_monai_layout_round_trip(dims, chans, proj, qkv_bias):
    torch.manual_seed(5)
    net = MaskedAutoEncoderViT(
        in_channels=chans, img_size=32, patch_size=8, hidden_size=48, mlp_dim=192, num_layers=2, num_heads=2,
        decoder_hidden_size=24, decoder_mlp_dim=96, decoder_num_layers=1, decoder_num_heads=2,
        proj_type=proj, spatial_dims=dims, qkv_bias=qkv_bias,
    ).eval()
    for p in net.parameters():
        if p.requires_grad and p.ndim == 1:
            p.data.add_(torch.randn_like(p) * 0.1)
    model = tiny_mae(
        spatial_dims=dims, in_chans=chans, embed_dim=48, depth=2, num_heads=2,
        decoder_dim=24, decoder_depth=1, decoder_heads=2,
    )
    report = import_weights(model, {"state_dict": net.state_dict()})
    assert report.layout == "monai"
    assert report.missing == [] and not report.mismatched
    assert report.unexpected["patch_embedding.position_embeddings"] == POS_SINCOS_NOTE
    assert report.unexpected["decoder_pos_embedding"] == POS_SINCOS_NOTE
    assert "cross-attention" in report.unexpected["blocks.0.norm_cross_attn.weight"]
    if not qkv_bias:
        assert "zero bias" in report.adapted["encoder.blocks.1.attn.qkv.bias"]
    if proj == "perceptron":
        assert "conv layout" in report.adapted["encoder.patch_embed.proj.weight"]
    perm = report.encoder_permutation
    assert perm is not None  # MONAI's table lists the last axis first

    n = (32 // 8) ** dims
    x = torch.randn(2, chans, *([32] * dims))
    with torch.no_grad():
        want = monai_encoder_features(net, x)
        got = model.encoder(x)["tokens"]
        torch.testing.assert_close(got, want[..., perm], atol=ATOL, rtol=1e-4)
        torch.manual_seed(0)  # MONAI draws its mask from the global generator
        want_pred, mask = net(x)
        out = model(x, mask=mask.bool())
    want_pred = want_pred.reshape(2, n, 8**dims, chans).permute(0, 1, 3, 2)
    torch.testing.assert_close(out["pred"], want_pred, atol=ATOL, rtol=1e-4)


def test_monai_learned_and_absent_position_embeddings():
    torch.manual_seed(6)
    kw = dict(in_channels=1, img_size=16, patch_size=8, hidden_size=48, mlp_dim=192, num_layers=1, num_heads=2,
              decoder_hidden_size=24, decoder_mlp_dim=96, decoder_num_layers=1, decoder_num_heads=2, spatial_dims=3)
    learned = MaskedAutoEncoderViT(pos_embed_type="learnable", **kw)
    model = tiny_mae(spatial_dims=3, in_chans=1, embed_dim=48, num_heads=2, decoder_dim=24)
    report = import_weights(model, learned.state_dict())
    assert "not transferred" in report.unexpected["patch_embedding.position_embeddings"]
    none = MaskedAutoEncoderViT(pos_embed_type="none", **kw)
    report = import_weights(model, none.state_dict())
    assert "no position embedding" in report.unexpected["patch_embedding.position_embeddings"]
    assert any("no position embedding" in n for n in report.notes)


# -- channel, patch and dimension adaptation ------------------------------------------------------------


def test_channel_adaptation_3_to_1_sums_kernels_on_grey_images():
    torch.manual_seed(7)
    vit = set_layernorm_eps(timm_vit(), 1e-5)
    put_our_sincos(vit)
    enc = ViTEncoder(in_chans=1, embed_dim=192, depth=2, num_heads=3, patch_size=8).eval()
    report = import_weights(enc, vit.state_dict())
    assert "summing" in report.adapted["patch_embed.proj.weight"]
    torch.testing.assert_close(enc.patch_embed.proj.weight, vit.patch_embed.proj.weight.sum(1, keepdim=True))
    grey = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = vit.forward_features(grey.expand(-1, 3, -1, -1))
        got = enc(grey)["tokens"]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_channel_adaptation_1_to_3_and_3_to_n():
    torch.manual_seed(8)
    grey_model = tiny_mae(in_chans=1)
    rgb_model = tiny_mae(in_chans=3)
    report = import_weights(rgb_model, grey_model.state_dict())
    assert report.layout == "unimae"
    assert "1 -> 3 channels" in report.adapted["encoder.patch_embed.proj.weight"]
    assert "1 -> 3 output channels" in report.adapted["decoder_pred.weight"]
    g = torch.randn(2, 1, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(rgb_model.encoder(g.expand(-1, 3, -1, -1))["tokens"], grey_model.encoder(g)["tokens"])
    # 3 -> 13 bands: kernels cycled R, G, B, R, ... and rescaled by 3 / 13 (timm adapt_input_conv)
    w = torch.randn(32, 3, 8, 8)
    w13, steps = adapt_patch_weight(w, in_chans=13, patch_size=(8, 8))
    assert w13.shape == (32, 13, 8, 8) and "3/13" in steps[0]
    for i in range(13):
        torch.testing.assert_close(w13[:, i], w[:, i % 3] * 3 / 13)
    with pytest.raises(ValueError, match="13 input channels onto 3"):
        adapt_patch_weight(w13, in_chans=3, patch_size=(8, 8))


def test_patch_size_resampling_matches_timm():
    torch.manual_seed(9)
    vit = timm_vit(patch_size=16)
    enc = ViTEncoder(embed_dim=192, depth=2, num_heads=3, patch_size=8).eval()
    report = import_weights(enc, vit.state_dict())
    assert "resampled" in report.adapted["patch_embed.proj.weight"]
    want = resample_patch_embed(vit.patch_embed.proj.weight.detach(), [8, 8])
    torch.testing.assert_close(enc.patch_embed.proj.weight.detach(), want, atol=1e-5, rtol=1e-4)
    # 3D: upsampling keeps <resize(x), w'> == <x, w> (FlexiViT), here on a depth-constant kernel
    w2 = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    w3 = resample_patch_kernel(w2[:, :, None].expand(-1, -1, 2, -1, -1).contiguous(), (2, 8, 8))
    torch.testing.assert_close(w3[:, :, 0], resample_patch_embed(w2.float(), [8, 8]).double(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w3[:, :, 0], w3[:, :, 1])


def test_2d_weights_inflate_to_3d_with_identical_tokens_on_identical_slices():
    torch.manual_seed(10)
    ref = MAEReference()
    model2d = tiny_mae(embed_dim=64, depth=2, num_heads=2)
    model3d = tiny_mae(spatial_dims=3, embed_dim=66, depth=2, num_heads=2)  # 3D sin-cos wants 6 | width...
    r3 = import_weights(model3d, ref.state_dict())
    assert r3.mismatched  # ...so width 66 != 64 is refused, never squeezed in
    assert "encoder.blocks.0.attn.qkv.weight" in r3.mismatched and "encoder.blocks.0.attn.qkv.weight" in r3.missing
    model3d = tiny_mae(spatial_dims=3, embed_dim=64, depth=2, num_heads=2, patch_size=(4, 8, 8))
    import_weights(model2d, ref.state_dict())
    report = import_weights(model3d, ref.state_dict())
    assert "inflated to 3D over depth 4" in report.adapted["encoder.patch_embed.proj.weight"]
    assert any("2D weights in a 3D model" in n for n in report.notes)
    assert not report.mismatched
    torch.testing.assert_close(model3d.encoder.blocks[1].attn.qkv.weight, model2d.encoder.blocks[1].attn.qkv.weight)
    img = torch.randn(1, 3, 32, 32)
    vol = img[:, :, None].expand(-1, -1, 4, -1, -1)  # 4 identical slices = one token in depth
    with torch.no_grad():
        p2 = model2d.encoder.prepare(img)
        p3 = model3d.encoder.prepare(vol)
        assert p3["grid"] == (1, 4, 4)
        t2 = model2d.encoder.patch_embed(p2["patches"])
        t3 = model3d.encoder.patch_embed(p3["patches"])
    torch.testing.assert_close(t3, t2, atol=1e-5, rtol=1e-4)


def test_spectral_target_skips_the_patch_projection_with_a_reason():
    torch.manual_seed(11)
    bands = [{"name": f"B{i}", "wavelength": w} for i, w in enumerate([0.49, 0.56, 0.665, 0.842, 1.61])]
    model = tiny_mae(channel_mode="spectral", channels=bands, embed_dim=64, depth=2, num_heads=2)
    before = model.encoder.patch_embed.proj.weight.detach().clone()
    report = import_weights(model, MAEReference().state_dict())
    assert "spectral" in report.unexpected["patch_embed.proj.weight"]
    assert "encoder.patch_embed.proj.weight" in report.missing
    assert "encoder.patch_embed.band_embed" in report.missing
    assert torch.equal(model.encoder.patch_embed.proj.weight, before)
    assert "encoder.blocks.1.mlp.fc1.weight" in report.loaded
    assert any("spectral target" in n for n in report.notes)


# -- the report ---------------------------------------------------------------------------------------


def test_report_lists_missing_unexpected_and_mismatched():
    torch.manual_seed(12)
    wide = tiny_mae(embed_dim=64, depth=2, num_heads=2)
    narrow = tiny_mae(embed_dim=32, depth=1, num_heads=2)
    before = narrow.encoder.blocks[0].attn.qkv.weight.detach().clone()
    report = import_weights(narrow, wide.state_dict())
    assert report.mismatched["encoder.blocks.0.attn.qkv.weight"] == ((192, 64), (96, 32))
    assert "encoder.blocks.0.attn.qkv.weight" in report.missing
    assert torch.equal(narrow.encoder.blocks[0].attn.qkv.weight, before)  # never loaded
    assert report.unexpected["encoder.blocks.1.norm1.weight"] == "no counterpart in the target model"
    assert "decoder_blocks.0.norm1.weight" in report.loaded  # decoder widths agree (32)
    # depth: a deeper target misses the blocks the source does not have
    deep = tiny_mae(depth=2)
    report = import_weights(deep, narrow.state_dict())
    assert "encoder.blocks.1.attn.qkv.weight" in report.missing and "encoder.blocks.0.attn.qkv.weight" in report.loaded
    assert not report.mismatched and not report.unexpected
    text = report.summary()
    assert "missing" in text and "encoder.blocks.N" not in text.splitlines()[0]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["layout"] == "unimae" and d["missing"] == report.missing
    wide_report = import_weights(narrow, wide.state_dict()).to_dict()
    assert json.loads(json.dumps(wide_report))["mismatched"]["encoder.blocks.0.attn.qkv.weight"] == [[192, 64], [96, 32]]


def test_unimae_safetensors_round_trip_and_summary(tmp_path):
    torch.manual_seed(13)
    src = tiny_mae(in_chans=1, spatial_dims=3, gradient_branch=True)
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = tiny_mae(in_chans=1, spatial_dims=3, gradient_branch=True)
    report = import_weights(dst, tmp_path / "pretrained")  # a UniMAE checkpoint named by its stem
    assert isinstance(report, ImportReport)
    assert report.layout == "unimae" and report.missing == [] and not report.unexpected and not report.adapted
    assert len(report.loaded) == len(src.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        a = src(x, generator=torch.Generator().manual_seed(0))
        b = dst(x, generator=g)
    torch.testing.assert_close(a["pred"], b["pred"])
    assert "loaded" in report.summary()


def test_summary_groups_blocks_and_names_reasons():
    torch.manual_seed(14)
    vit = timm_vit()
    report = import_weights(tiny_mae(embed_dim=192, depth=2, num_heads=3), vit.state_dict())
    lines = report.summary().splitlines()
    assert lines[0].startswith("imported timm weights")
    assert any("decoder_blocks.N." in ln and "missing" in ln for ln in lines)
    assert any("head.weight" in ln and "classification head" in ln for ln in lines)


# -- files and nesting -----------------------------------------------------------------------------


def test_pth_needs_allow_pickle_and_loads_weights_only(tmp_path):
    torch.manual_seed(15)
    ref = MAEReference()
    path = tmp_path / "mae_pretrain_vit.pth"
    torch.save(mae_checkpoint(ref), path)
    model = tiny_mae(embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(InputError, match="allow_pickle=True") as err:
        import_weights(model, path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("mae_pretrain_vit.pth:") and "safetensors" in msg
    report = import_weights(model, path, allow_pickle=True)
    assert report.missing == []
    # convert once, then no pickle is needed
    out = save_as_safetensors(path, tmp_path / "mae.safetensors", allow_pickle=True)
    assert import_weights(tiny_mae(embed_dim=64, depth=2, num_heads=2), out).missing == []


class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_arbitrary_pickled_objects_are_refused_even_with_allow_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": tiny_mae().state_dict(), "payload": _Payload(marker)}, path)
    with pytest.raises(InputError, match="refused to load") as err:
        import_weights(tiny_mae(), path, allow_pickle=True)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name,content",
    [
        ("random.safetensors", os.urandom(256)),
        ("truncated.safetensors", None),
        ("garbage.pth", b"\x80\x02not really a pickle" * 4),
        ("notes.txt", b"hello, these are not weights\n"),
    ],
)
def test_corrupt_files_give_one_line_errors(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        good = tmp_path / "good.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_mae().state_dict().items()}, str(good))
        content = good.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        import_weights(tiny_mae(), path, allow_pickle=True)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{name}:")


def test_missing_files_folders_bad_layouts_and_nan(tmp_path):
    model = tiny_mae()
    with pytest.raises(InputError, match="not found"):
        import_weights(model, tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match="folder"):
        import_weights(model, tmp_path)
    with pytest.raises(InputError, match="unrecognised weights layout"):
        import_weights(model, {"conv1.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(InputError, match="unknown weights layout"):
        import_weights(model, model.state_dict(), layout="timmm")
    with pytest.raises(InputError, match="not monai"):
        import_weights(model, timm_vit().state_dict(), layout="monai")
    with pytest.raises(InputError, match="holds no tensors"):
        import_weights(model, {"model": {"epoch": 3}})
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["encoder.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        import_weights(model, bad)
    with pytest.raises(TypeError, match="ViTEncoder"):
        import_weights(nn.Linear(2, 2), model.state_dict())


def test_nested_checkpoints_and_prefixes_are_unwrapped():
    vit = timm_vit()
    sd = vit.state_dict()
    lightning = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}
    assert set(read_state_dict(lightning)) == set(sd)
    ddp_compiled = {"module": {f"module._orig_mod.{k}": v for k, v in sd.items()}}
    assert set(read_state_dict(ddp_compiled)) == set(sd)
    probe = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}
    probe.update({"head.weight": torch.zeros(5, 192), "head.bias": torch.zeros(5)})
    assert set(read_state_dict(probe)) == set(sd)
    assert detect_layout(read_state_dict(probe)) == "timm"
    assert detect_layout(tiny_mae().encoder.state_dict()) == "unimae"


def test_import_into_a_model_that_wraps_an_encoder():
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = ViTEncoder(embed_dim=32, depth=1, num_heads=2, patch_size=8)
            self.head = nn.Linear(32, 4)

    clf = Classifier()
    head_before = clf.head.weight.detach().clone()
    src = tiny_mae()
    report = import_weights(clf, src.state_dict())
    assert "head.weight" in report.missing and torch.equal(clf.head.weight, head_before)
    torch.testing.assert_close(clf.encoder.blocks[0].attn.qkv.weight, src.encoder.blocks[0].attn.qkv.weight)
    assert "decoder_embed.weight" in report.unexpected


def test_patch_embed_module_accepts_adapted_kernels():
    """Adapted kernels keep UniMAE's conv layout (E, C, *patch) that PatchEmbed computes with."""
    w = torch.randn(16, 3, 8, 8)
    w3, _ = adapt_patch_weight(w, in_chans=1, patch_size=(2, 4, 4))
    pe = PatchEmbed(1, 16, (2, 4, 4), spatial_dims=3)
    assert tuple(pe.proj.weight.shape) == tuple(w3.shape)
