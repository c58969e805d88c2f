"""Task heads: classification, 2D/3D segmentation with a full-resolution path, anomaly maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimae.core.anomaly import anomaly_map, calibrate_threshold, image_scores
from unimae.core.checkpoint import load_checkpoint, save_checkpoint
from unimae.core.heads import default_feature_layers
from unimae.core.mae import MaskedAutoencoder
from unimae.core.models import MAEClassifier, MAESegmenter, encoder_args, load_encoder_from_mae

ENC = dict(embed_dim=32, depth=2, num_heads=2)
S2 = [{"name": f"B{i:02d}", "wavelength": 0.45 + 0.1 * i} for i in range(13)]


def test_default_feature_layers():
    assert default_feature_layers(12, 4) == [3, 6, 9, 12]
    assert default_feature_layers(2, 4) == [1, 2]


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_classifier_logits_and_valid_pooling(pool):
    torch.manual_seed(0)
    model = MAEClassifier(5, pool=pool, patch_size=8, **ENC).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 5)
    if pool == "avg":
        valid = torch.zeros(2, 32, 32, dtype=torch.bool)
        valid[:, :16] = True
        a = model(x, valid=valid)
        assert not torch.allclose(a, model(x))  # the pool is restricted to the valid half


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(spatial_dims=2, in_chans=3, patch_size=16), (2, 3, 40, 56)),
        (dict(spatial_dims=2, in_chans=1, patch_size=8), (1, 1, 24, 24)),
        (dict(spatial_dims=3, in_chans=1, patch_size=16, feature_size=4), (1, 1, 32, 32, 48)),
        (dict(spatial_dims=2, channel_mode="spectral", channels=S2, patch_size=8), (2, 13, 32, 32)),
    ],
)
def test_segmenter_output_matches_input_size(kwargs, shape):
    model = MAESegmenter(3, **ENC, **kwargs)
    y = model(torch.randn(*shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    y.mean().backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None  # gradients reach the encoder


def test_segmenter_recovers_one_pixel_lines_despite_16px_patches():
    """The conv path from the input keeps 1-px structures that a patch-level decoder would blur."""
    torch.manual_seed(0)
    model = MAESegmenter(2, feature_size=8, patch_size=16, **ENC)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def batch():
        x = torch.rand(4, 3, 32, 32, generator=gen) * 0.2
        y = torch.zeros(4, 32, 32, dtype=torch.long)
        for i in range(4):
            cols = torch.randperm(32, generator=gen)[:3]
            y[i, :, cols] = 1
            x[i, :, :, cols] -= 0.5  # dark 1-px vessels
        return x, y

    for _ in range(60):
        x, y = batch()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch()
    with torch.no_grad():
        pred = model(x).argmax(1)
    inter = ((pred == 1) & (y == 1)).sum().item()
    dice = 2 * inter / ((pred == 1).sum().item() + (y == 1).sum().item())
    assert dice > 0.9


def test_encoder_transfer_from_mae_and_checkpoint(tmp_path):
    mae = MaskedAutoencoder(patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2, **ENC)
    seg = MAESegmenter(2, **encoder_args(mae.config))
    missing, unexpected = load_encoder_from_mae(seg, mae.state_dict())
    assert missing == [] and unexpected == []
    assert torch.equal(seg.encoder.blocks[1].mlp.fc2.weight, mae.encoder.blocks[1].mlp.fc2.weight)
    seg.eval()
    save_checkpoint(tmp_path / "seg", seg, contract={"domain": "fundus"}, task="segment")
    loaded, meta = load_checkpoint(tmp_path / "seg")
    x = torch.randn(1, 3, 32, 32)
    assert isinstance(loaded, MAESegmenter) and meta["task"] == "segment"
    assert torch.equal(loaded(x), seg(x))


def test_anomaly_map_shapes_validity_and_determinism():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2, **ENC).eval()
    x = torch.randn(2, 3, 40, 32)
    valid = torch.ones(2, 40, 32, dtype=torch.bool)
    valid[:, :, :4] = False
    a = anomaly_map(mae, x, valid=valid, k=4, generator=torch.Generator().manual_seed(1))
    b = anomaly_map(mae, x, valid=valid, k=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 40, 32) and torch.equal(a, b)
    assert torch.all(a[:, :, :4] == 0) and torch.all(a[:, :, 8:] > 0)
    s = image_scores(a, valid)
    assert s.shape == (2,) and torch.all(s >= a[:, :, 4:].mean(dim=(1, 2)))


def test_anomaly_map_localises_an_unpredictable_spot():
    """A MAE that predicts featureless patches has its largest error on a bright spot."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32) * 0.01
    x[0, 0, 18:21, 9:12] += 5.0
    mae_1ch = MaskedAutoencoder(in_chans=1, patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2, **ENC).eval()
    with torch.no_grad():  # predict zeros in normalised space, i.e. "a featureless patch"
        mae_1ch.decoder_pred.weight.zero_()
        mae_1ch.decoder_pred.bias.zero_()
    amap = anomaly_map(mae_1ch, x, k=2, sigma=1.0)
    peak = torch.nonzero(amap[0] == amap[0].max())[0].tolist()
    assert 16 <= peak[0] <= 23 and 8 <= peak[1] <= 15


def test_calibrate_threshold():
    normal = torch.linspace(0, 1, 1001)
    assert calibrate_threshold(normal, 0.1) == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError):
        calibrate_threshold(normal, 0.0)
