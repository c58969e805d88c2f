"""Core model: shapes, masking invariants, spectral bands, padding, checkpoints (CPU, tiny sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimae.core.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from unimae.core.errors import InputError
from unimae.core.losses import mae_loss
from unimae.core.mae import MaskedAutoencoder, reconstruct_image, sobel_magnitude
from unimae.core.masking import (
    channel_masking,
    complementary_masks,
    masks_to_spec,
    random_masking,
    token_validity,
)
from unimae.core.patch_embed import PatchEmbed, inflate_patch_weight, patchify, unpatchify
from unimae.core.pos_embed import sincos_pos_embed
from unimae.core.presets import MODEL_PRESETS, model_preset

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2_UM = [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190]
S2_CHANNELS = [{"name": n, "wavelength": w} for n, w in zip(S2, S2_UM)]
TINY = dict(embed_dim=32, depth=1, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def tiny_mae(**kwargs) -> MaskedAutoencoder:
    args = dict(TINY)
    args.update(kwargs)
    return MaskedAutoencoder(**args)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims,chans,size,patch",
    [
        (2, 1, (32, 48), 16),
        (2, 3, (32, 32), 16),
        (2, 13, (24, 24), 8),
        (3, 1, (32, 32, 32), 16),
        (3, 3, (16, 32, 16), 8),
        (3, 13, (16, 16, 16), 8),
    ],
)
@pytest.mark.parametrize("mode", ["fixed", "spectral"])
def test_mae_shapes_2d_3d_channels(dims, chans, size, patch, mode):
    channels = S2_CHANNELS[:chans] if mode == "spectral" else None
    model = tiny_mae(spatial_dims=dims, in_chans=chans, channel_mode=mode, channels=channels, patch_size=patch)
    x = torch.randn(2, chans, *size)
    out = model(x, generator=gen())
    n = 1
    for s in size:
        n *= s // patch
    assert out["pred"].shape == (2, n, chans, patch**dims)
    assert out["patches"].shape == out["pred"].shape
    assert out["mask"].shape == (2, n)
    loss = mae_loss(out)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None


def test_token_count_does_not_grow_with_bands():
    model = tiny_mae(channel_mode="spectral", channels=S2_CHANNELS, patch_size=8)
    enc = model.encoder
    a = enc(torch.randn(1, 13, 32, 32))["tokens"]
    b = enc(torch.randn(1, 3, 32, 32), channels=["B02", "B03", "B04"])["tokens"]
    assert a.shape == b.shape == (1, 1 + 16, 32)


def test_encoder_has_no_fixed_img_size_and_returns_layers():
    model = tiny_mae(depth=3, patch_size=8)
    for size in [(16, 16), (40, 24), (64, 8)]:
        out = model.encoder(torch.randn(1, 3, *size), return_layers=[1, -1])
        grid = out["grid"]
        assert out["tokens"].shape[1] == 1 + grid[0] * grid[1]
        assert len(out["features"]) == 2
        assert out["features"][1].shape == out["tokens"].shape
    with pytest.raises(ValueError):
        model.encoder(torch.randn(1, 3, 16, 16), return_layers=[4])


def test_presets_are_a_table():
    assert set(MODEL_PRESETS) >= {"tiny", "small", "base", "large"}
    assert model_preset("base")["embed_dim"] == 768
    with pytest.raises(InputError, match="known: micro, tiny"):
        model_preset("bsae")


# -- patch embedding and positions ---------------------------------------------------------------


def test_patchify_roundtrip_and_conv_equivalence_3d():
    x = torch.randn(2, 2, 16, 32, 16)
    p = patchify(x, (8, 16, 8))
    assert p.shape == (2, 2 * 2 * 2, 2, 8 * 16 * 8)
    assert torch.equal(unpatchify(p, (2, 2, 2), (8, 16, 8)), x)
    emb = PatchEmbed(2, 12, (8, 16, 8), spatial_dims=3)
    ref = F.conv3d(x, emb.proj.weight, emb.proj.bias, stride=(8, 16, 8)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(emb(p), ref, atol=1e-5, rtol=1e-5)


def test_inflate_2d_to_3d_embeds_a_stack_of_identical_slices_like_the_image():
    emb2 = PatchEmbed(3, 16, 8, spatial_dims=2)
    emb3 = PatchEmbed(3, 16, 8, spatial_dims=3)
    with torch.no_grad():
        emb3.proj.weight.copy_(inflate_patch_weight(emb2.proj.weight, 8))
        emb3.proj.bias.copy_(emb2.proj.bias)
    img = torch.randn(1, 3, 16, 16)
    vol = img[:, :, None].repeat(1, 1, 8, 1, 1)
    t2 = emb2(patchify(img, (8, 8)))
    t3 = emb3(patchify(vol, (8, 8, 8)))
    torch.testing.assert_close(t2, t3, atol=1e-5, rtol=1e-4)


def test_sincos_pos_embed_grid_shapes_and_uniqueness():
    pe2 = sincos_pos_embed((4, 6), 32)
    pe3 = sincos_pos_embed((2, 3, 4), 36)
    assert pe2.shape == (24, 32) and pe3.shape == (24, 36)
    assert torch.unique(pe3, dim=0).shape[0] == 24  # every position distinct


# -- channels --------------------------------------------------------------------------------------


def test_fixed_mode_wrong_channel_count_is_a_clear_error():
    model = tiny_mae(in_chans=3)
    with pytest.raises(InputError, match="expects 3 input channel"):
        model(torch.randn(1, 1, 32, 32))


def test_spectral_unknown_band_is_a_clear_error():
    model = tiny_mae(channel_mode="spectral", channels=S2_CHANNELS, patch_size=8)
    with pytest.raises(InputError, match="unknown band 'B13'"):
        model(torch.randn(1, 2, 16, 16), channels=["B02", "B13"])
    with pytest.raises(InputError, match="3 channels but 2 bands"):
        model(torch.randn(1, 3, 16, 16), channels=["B02", "B03"])


def test_spectral_band_subset_matches_dropping_those_bands():
    """A subset at inference equals the full set with the other bands dropped by channel masking."""
    model = tiny_mae(channel_mode="spectral", channels=S2_CHANNELS, patch_size=8).eval()
    x = torch.randn(2, 13, 16, 16)
    subset = ["B02", "B03", "B04", "B08"]
    idx = [S2.index(b) for b in subset]
    keep = torch.zeros(2, 13, dtype=torch.bool)
    keep[:, idx] = True
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, :2] = True
    full = model(x, mask=mask, channel_keep=keep)
    sub = model(x[:, idx], channels=subset, mask=mask)
    assert sub["pred"].shape == (2, 4, 4, 64)
    torch.testing.assert_close(sub["pred"], full["pred"][:, :, idx], atol=1e-5, rtol=1e-4)


def test_spectral_non_optical_channel_by_name():
    channels = S2_CHANNELS[:3] + [{"name": "SAR_VV", "wavelength": None}]
    model = tiny_mae(channel_mode="spectral", channels=channels, patch_size=8)
    out = model(torch.randn(1, 2, 16, 16), channels=["SAR_VV", "B02"], generator=gen())
    assert out["pred"].shape[2] == 2


# -- masking ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_random_masking_ratio_and_seed(ratio):
    spec = random_masking(4, 196, ratio, generator=gen(3))
    hidden = spec.mask.sum(1)
    assert torch.all(hidden == 196 - round(196 * (1 - ratio)))
    assert spec.keep_pad is None
    for b in range(4):  # kept ids are exactly the visible tokens
        assert set(spec.ids_keep[b].tolist()) == set((~spec.mask[b]).nonzero().flatten().tolist())
    again = random_masking(4, 196, ratio, generator=gen(3))
    assert torch.equal(spec.mask, again.mask)
    other = random_masking(4, 196, ratio, generator=gen(4))
    assert not torch.equal(spec.mask, other.mask)
    assert not torch.equal(spec.mask[0], spec.mask[1])  # per-sample


def test_foreground_aware_masking_never_shows_invalid_tokens():
    valid = torch.ones(3, 64, dtype=torch.bool)
    valid[0, :40] = False
    valid[1, ::2] = False
    valid[2] = False  # an all-invalid sample must not break the batch
    spec = random_masking(3, 64, 0.75, token_valid=valid, generator=gen())
    assert not torch.any(~spec.mask & ~valid)  # no invalid token is visible
    assert (~spec.mask[0]).sum() == round(24 * 0.25)
    assert (~spec.mask[1]).sum() == round(32 * 0.25)
    assert (~spec.mask[2]).sum() == 0
    assert spec.keep_pad is not None
    assert spec.keep_pad.sum(1).tolist() == [6, 8, 0]


def test_token_validity_from_pixels():
    valid = torch.zeros(1, 32, 32, dtype=torch.bool)
    valid[:, :, :20] = True  # second column of 16-px patches is 4/16 valid
    tv = token_validity(valid, (16, 16), 0.5)
    assert tv.tolist() == [[True, False, True, False]]


def test_channel_masking_keeps_at_least_one():
    keep = channel_masking(5, 13, 0.5, generator=gen())
    assert torch.all(keep.sum(1) == 13 - 6)
    assert torch.all(channel_masking(2, 1, 0.9, generator=gen()).sum(1) == 1)


@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_complementary_masks_partition_tokens(k):
    masks = complementary_masks(50, k, generator=gen(1))
    assert masks.shape == (k, 50)
    assert torch.all(masks.sum(0) == 1)  # each token hidden exactly once
    sizes = masks.sum(1)
    assert int(sizes.max() - sizes.min()) <= 1
    assert torch.equal(masks, complementary_masks(50, k, generator=gen(1)))


def test_explicit_masks_through_the_model_reconstruct_every_patch_once():
    model = tiny_mae(patch_size=8).eval()
    x = torch.randn(1, 3, 32, 32)
    masks = complementary_masks(16, 4, generator=gen())
    seen = torch.zeros(16, dtype=torch.int64)
    for m in masks:
        out = model(x, mask=m[None])
        seen += out["mask"][0].long()
    assert torch.all(seen == 1)
    spec = masks_to_spec(masks[:2] | torch.tensor([[True] * 8 + [False] * 8, [False] * 16]))
    assert spec.keep_pad is not None


# -- loss, padding, validity ---------------------------------------------------------------------


def test_loss_covers_only_hidden_valid_patches():
    model = tiny_mae(patch_size=8)
    x = torch.randn(1, 3, 16, 16)
    out = model(x, generator=gen())
    base = mae_loss(out)["loss"]
    # changing predictions of visible tokens does not change the loss
    vis = ~out["mask"][0]
    pred = out["pred"].detach().clone()
    pred[0, vis] += 100.0
    assert torch.allclose(mae_loss({**out, "pred": pred})["loss"], base.detach())
    # nor does changing predictions of invalid tokens
    tv = torch.ones(1, 4, dtype=torch.bool)
    hidden = out["mask"][0].nonzero().flatten()
    tv[0, hidden[0]] = False
    pred2 = out["pred"].detach().clone()
    pred2[0, hidden[0]] += 100.0
    a = mae_loss({**out, "token_valid": tv})["loss"]
    b = mae_loss({**out, "pred": pred2, "token_valid": tv})["loss"]
    assert torch.allclose(a.detach(), b)


def test_sizes_not_divisible_by_patch_are_padded_and_marked_invalid():
    model = tiny_mae(patch_size=16, min_valid_fraction=0.5)
    x = torch.randn(2, 3, 40, 20)  # pads to 48 x 32: last row 8/16 valid, last column 4/16 valid
    out = model(x, generator=gen())
    assert out["grid"] == (3, 2)
    tv = out["token_valid"]
    assert tv is not None and tv.shape == (2, 6)
    assert tv.view(2, 3, 2)[:, :, 1].logical_not().all()  # 4/16-valid column is invalid
    assert tv.view(2, 3, 2)[:, :, 0].all()
    recon = reconstruct_image(out, model.patch_size)
    assert recon["reconstruction"].shape == x.shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_input_is_a_clear_error(bad):
    model = tiny_mae(patch_size=8)
    x = torch.randn(1, 3, 16, 16)
    x[0, 0, 3, 3] = bad
    with pytest.raises(InputError, match="NaN or Inf"):
        model(x)


def test_gradient_branch_and_sobel():
    ramp = torch.arange(8.0)[None, None, None, :].repeat(1, 1, 8, 1)
    g = sobel_magnitude(ramp)
    assert torch.allclose(g[0, 0, 2:-2, 2:-2], torch.ones(4, 4))  # unit slope -> unit magnitude
    vol = torch.arange(8.0)[None, None, :, None, None].repeat(1, 1, 1, 4, 4)
    assert torch.allclose(sobel_magnitude(vol)[0, 0, 2:-2], torch.ones(4, 4, 4))
    model = tiny_mae(patch_size=8, gradient_branch=True)
    out = model(torch.randn(2, 3, 16, 16), generator=gen())
    parts = mae_loss(out, gradient_weight=0.5)
    assert out["grad_pred"].shape == (2, 4, 1, 64)
    torch.testing.assert_close(parts["loss"], parts["pixel"] + 0.5 * parts["gradient"])


def test_wrong_rank_input_is_a_clear_error():
    model = tiny_mae(spatial_dims=3, in_chans=1)
    with pytest.raises(InputError, match="expected a 3D batch"):
        model(torch.randn(1, 1, 32, 32))


# -- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fixed", "spectral"])
def test_checkpoint_roundtrip_bit_identical(tmp_path, mode):
    channels = S2_CHANNELS if mode == "spectral" else None
    chans = 13 if mode == "spectral" else 1
    model = tiny_mae(channel_mode=mode, channels=channels, in_chans=chans, patch_size=8, gradient_branch=True).eval()
    contract = {"domain": "test", "spatial_dims": 2, "channels": channels, "normalization": {"kind": "none"}}
    save_checkpoint(tmp_path / "model", model, contract=contract, step=7)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "model.json").is_file()
    loaded, meta = load_checkpoint(tmp_path / "model.json")
    assert meta["step"] == 7 and meta["contract"]["domain"] == "test"
    x = torch.randn(2, chans, 24, 24)
    a = model(x, generator=gen(5))
    b = loaded(x, generator=gen(5))
    assert torch.equal(a["pred"], b["pred"]) and torch.equal(a["grad_pred"], b["grad_pred"])
    assert read_checkpoint_meta(tmp_path / "model")["encoder"]["channel_mode"] == mode


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bad")
    model = tiny_mae()
    save_checkpoint(tmp_path / "ok", model)
    (tmp_path / "ok.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="corrupt"):
        load_checkpoint(tmp_path / "ok")
