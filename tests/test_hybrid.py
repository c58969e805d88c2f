"""The hybrid encoder (convolutional stem) and the cross-camera fundus pipeline (FOV diameter, per-image
normalisation, native-scale crops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimae.core.checkpoint import load_checkpoint, save_checkpoint
from unimae.core.mae import MaskedAutoencoder
from unimae.core.masking import masks_to_spec
from unimae.core.models import MAEClassifier, MAESegmenter
from unimae.domains import get_domain
from unimae.domains.base import Sample
from unimae.domains.multispectral.bands import preset_channels

SMALL = dict(embed_dim=32, depth=2, num_heads=2, stem="conv", stem_width=8)


def test_conv_stem_has_no_linear_patch_projection_and_trains():
    model = MAEClassifier(3, in_chans=2, patch_size=8, **SMALL)
    assert model.encoder.patch_embed.proj is None and model.encoder.conv_stem is not None
    x = torch.randn(4, 2, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    grads = [p.grad for p in model.encoder.conv_stem.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_mae_conv_stem_visible_tokens_never_see_hidden_content():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(spatial_dims=2, in_chans=1, patch_size=8, decoder_dim=16, decoder_depth=1,
                            decoder_heads=2, **SMALL).eval()  # fmt: skip
    x = torch.randn(1, 1, 32, 32)
    hidden = torch.zeros(1, 16, dtype=torch.bool)
    hidden[0, [1, 5, 6, 10]] = True  # 4 of the 4x4 patches
    spec = masks_to_spec(hidden)
    enc = mae.encoder

    def visible_latents(image: torch.Tensor) -> torch.Tensor:
        prep = enc.prepare(image)
        tokens = enc.embed(prep["patches"], prep["grid"], hidden=hidden)
        return enc.forward_tokens(tokens, spec)["tokens"]

    base = visible_latents(x)
    y = x.clone()
    for t in (1, 5, 6, 10):  # change only the hidden patches' pixels
        r, c = divmod(t, 4)
        y[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = torch.randn(8, 8) * 5
    assert torch.allclose(visible_latents(y), base, atol=1e-5)
    # without the mask the same change does reach the visible tokens (the check above can fail)
    prep = enc.prepare(y)
    leaky = enc.forward_tokens(enc.embed(prep["patches"], prep["grid"]), spec)["tokens"]
    assert not torch.allclose(leaky, base, atol=1e-3)
    out = mae(x, mask=hidden)
    assert out["pred"].shape == out["patches"].shape


def test_spectral_conv_stem_takes_a_band_subset_and_3d_volumes():
    chans = preset_channels("sentinel2_l1c")
    model = MAEClassifier(4, channel_mode="spectral", channels=chans, patch_size=8, **SMALL).eval()
    names = [c["name"] for c in chans]
    with torch.no_grad():
        full = model(torch.randn(2, 13, 32, 32), channels=names)
        sub = model(torch.randn(2, 3, 32, 32), channels=["B04", "B03", "B02"])
    assert full.shape == sub.shape == (2, 4)
    seg = MAESegmenter(3, spatial_dims=3, in_chans=1, patch_size=4, feature_size=4, num_features=2, **SMALL).eval()
    with torch.no_grad():
        assert seg(torch.randn(1, 1, 16, 20, 12)).shape == (1, 3, 16, 20, 12)


def test_conv_stem_checkpoint_round_trip(tmp_path):
    model = MAESegmenter(2, in_chans=3, patch_size=8, feature_size=4, num_features=2, **SMALL).eval()
    save_checkpoint(tmp_path / "m", model)
    loaded, meta = load_checkpoint(tmp_path / "m")
    assert meta["encoder"]["stem"] == "conv" and loaded.encoder.stem == "conv"
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_conv_stem_rejects_a_patch_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        MAEClassifier(2, in_chans=1, patch_size=12, **SMALL)


def _fundus(h: int = 300, w: int = 320, radius: int = 120) -> Sample:
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < radius**2
    rng = np.random.default_rng(0)
    img = np.where(fov[None], rng.uniform(0.2, 0.8, (3, h, w)), 0.0).astype(np.float32)
    img[0] *= 1.5  # a reddish camera
    mask = np.zeros((h, w), np.int64)
    mask[h // 2, :] = 1  # a one-pixel vessel
    return Sample(image=torch.from_numpy(img), meta={"valid": torch.from_numpy(fov), "source_shape": (h, w),
                                                     "spacing": (1.0, 1.0), "path": "x.png",
                                                     "normalization": {"kind": "scale", "divisor": 1.0}},
                  mask=torch.from_numpy(mask))  # fmt: skip


def test_fov_diameter_rescales_image_valid_and_mask_and_maps_back():
    from unimae.domains.fundus.writer import to_source_grid

    plugin = get_domain("fundus")
    s = _fundus(radius=120)  # a 240 px wide field of view
    out = plugin.preprocess(s, fov_diameter=480, normalize="image")
    assert out.meta["fov_scale"] == pytest.approx(2.0, rel=0.01)
    assert tuple(out.image.shape[1:]) == tuple(out.valid.shape) == tuple(out.mask.shape)
    assert out.image.shape[1] == round(300 * out.meta["fov_scale"])
    ys, xs = np.nonzero(out.valid.numpy())
    assert xs.max() - xs.min() + 1 == pytest.approx(480, abs=3)
    # per-image normalisation: each channel has mean 0 and std 1 inside the FOV, whatever the camera's balance
    inside = out.image[:, out.valid]
    assert torch.allclose(inside.mean(1), torch.zeros(3), atol=1e-3)
    assert torch.allclose(inside.std(1), torch.ones(3), atol=1e-2)
    back = to_source_grid(out.mask.numpy(), out.meta, label=True)
    assert back.shape == (300, 320)
    assert abs(int(back.sum()) - int(s.mask.sum())) <= 4  # the vessel is back on the source grid


def test_native_crops_keep_the_scale_and_eval_keeps_the_whole_image():
    plugin = get_domain("fundus")
    s = plugin.preprocess(_fundus(), normalize="image")
    train = plugin.augment(train=True, input_size=64, crop="native", crop_scale=(1.0, 1.0), rotate=0.0)
    crop = train(s, 3)
    assert tuple(crop.image.shape) == (3, 64, 64)
    # at zoom 1 the horizontal one-pixel vessel stays one pixel thick (flips and 0 rotation keep it so)
    crops = [train(s, seed) for seed in range(12)]
    shown = [c for c in crops if int(c.mask.sum()) > 0]
    assert shown, "no crop showed the vessel"
    assert all(int(c.mask.sum(0).max()) <= 1 or int(c.mask.sum(1).max()) <= 1 for c in shown)
    ev = plugin.augment(train=False, input_size=64, crop="native")(s, 0)
    assert tuple(ev.image.shape) == tuple(s.image.shape)
    assert torch.equal(ev.image, s.image)
    with pytest.raises(Exception, match="crop"):
        plugin.augment(train=True, input_size=64, crop="bogus")
