"""The uncertainty-predicting MAE (Mao et al., MICCAI 2020): variance head, Gaussian NLL, normalised anomaly map."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from unimae.core.anomaly import anomaly_map
from unimae.core.checkpoint import load_checkpoint, save_checkpoint
from unimae.core.losses import LOGVAR_RANGE, gaussian_nll, mae_loss
from unimae.core.mae import MaskedAutoencoder


def tiny(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    args = dict(spatial_dims=2, in_chans=1, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                decoder_dim=16, decoder_depth=1, decoder_heads=2)  # fmt: skip
    return MaskedAutoencoder(**{**args, **kw})


def test_gaussian_nll_hand_case() -> None:
    pred, target = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])
    logvar = torch.tensor([math.log(4.0), 0.0])
    # 0.5 * (err^2 / var + log var): (0.5 * (4 / 4 + log 4), 0.5 * (0 + 0))
    plain = gaussian_nll(pred, logvar, target, beta=0.0)
    assert torch.allclose(plain, torch.tensor([0.5 * (1.0 + math.log(4.0)), 0.0]))
    # beta-NLL weights by var ** beta: 4 ** 0.5 = 2 on the first value
    assert torch.allclose(gaussian_nll(pred, logvar, target, beta=0.5), plain * torch.tensor([2.0, 1.0]))
    # the variance is clamped: a huge log-variance counts as the upper bound
    big = gaussian_nll(pred, torch.tensor([100.0, 100.0]), target, beta=0.0)
    hi = LOGVAR_RANGE[1]
    assert torch.allclose(big, 0.5 * (torch.tensor([4.0, 0.0]) * math.exp(-hi) + hi))
    # the minimum over the variance sits at var = err^2 (for a non-zero error)
    lv = torch.linspace(-3, 4, 701)
    best = lv[gaussian_nll(torch.zeros(701), lv, torch.full((701,), 2.0), beta=0.0).argmin()]
    assert abs(float(best) - math.log(4.0)) < 0.02


def test_mae_loss_uses_nll_on_hidden_valid_tokens_only() -> None:
    b, n, c, p = 1, 3, 1, 2
    out = {
        "pred": torch.zeros(b, n, c, p), "patches": torch.tensor([[[[2.0, 2.0]], [[1.0, 1.0]], [[9.0, 9.0]]]]),
        "logvar": torch.full((b, n, c, p), math.log(4.0)), "mask": torch.tensor([[True, True, False]]),
        "token_valid": torch.tensor([[True, False, True]]),
    }  # fmt: skip
    # only token 0 is hidden and valid: 0.5 * (4 / 4 + log 4), times var ** 0.5 = 2
    loss = mae_loss(out, norm_pix=False)
    assert torch.allclose(loss["loss"], torch.tensor(2 * 0.5 * (1.0 + math.log(4.0))))
    plain = mae_loss({k: v for k, v in out.items() if k != "logvar"}, norm_pix=False)
    assert torch.allclose(plain["loss"], torch.tensor(4.0))  # the squared error when no variance is predicted


def test_variance_head_forward_and_checkpoint_round_trip(tmp_path: Path) -> None:
    model = tiny(predict_variance=True)
    x = torch.randn(2, 1, 16, 16)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out["logvar"].shape == out["pred"].shape
    assert torch.all(out["logvar"] == 0)  # starts at unit variance
    with torch.no_grad():
        model.decoder_logvar.bias.normal_()
    save_checkpoint(tmp_path / "m", model)
    assert json.loads((tmp_path / "m.json").read_text())["model_config"]["predict_variance"] is True
    loaded, _ = load_checkpoint(tmp_path / "m")
    assert loaded.predict_variance
    m = torch.zeros(2, 16, dtype=torch.bool)
    m[:, ::2] = True
    a, b = model.eval()(x, mask=m), loaded.eval()(x, mask=m)
    assert torch.equal(a["logvar"], b["logvar"]) and torch.equal(a["pred"], b["pred"])
    # the default has no head and no logvar output: old checkpoints (no key) load and behave as before
    plain = tiny()
    assert "predict_variance" in plain.config and plain.config["predict_variance"] is False
    assert not any(k.startswith("decoder_logvar") for k in plain.state_dict())
    assert "logvar" not in plain(x, mask=m)
    save_checkpoint(tmp_path / "old", plain)
    meta = json.loads((tmp_path / "old.json").read_text())
    del meta["model_config"]["predict_variance"]  # as written before the option existed
    (tmp_path / "old.json").write_text(json.dumps(meta))
    old, _ = load_checkpoint(tmp_path / "old")
    assert not old.predict_variance
    assert torch.equal(old.eval()(x, mask=m)["pred"], plain.eval()(x, mask=m)["pred"])


def test_anomaly_map_discounts_high_predicted_variance() -> None:
    """Same reconstruction error everywhere; where the model predicts a large variance the map is small."""
    model = tiny(predict_variance=True).eval()
    with torch.no_grad():
        for lin in (model.decoder_pred, model.decoder_logvar):
            lin.weight.zero_()
            lin.bias.zero_()  # predicts 0 with unit variance everywhere
        model.decoder_logvar.bias[: 8] = math.log(100.0)  # the top half of each 4x4 patch: variance 100
    x = torch.ones(1, 1, 16, 16)  # squared error 1 everywhere
    amap = anomaly_map(model, x, k=4, sigma=0, norm_pix=False)
    rows = amap[0].reshape(4, 4, 4, 4)  # (patch row, row in patch, patch col, col in patch)
    assert torch.allclose(rows[:, :2], torch.full_like(rows[:, :2], 0.01))
    assert torch.allclose(rows[:, 2:], torch.ones_like(rows[:, 2:]))
    plain = tiny().eval()
    with torch.no_grad():
        plain.decoder_pred.weight.zero_()
        plain.decoder_pred.bias.zero_()
    assert torch.allclose(anomaly_map(plain, x, k=4, sigma=0, norm_pix=False), torch.ones(1, 16, 16))


def test_anomaly_map_scores_only_patches_the_model_was_trained_on() -> None:
    """A patch less than ``min_valid_fraction`` valid is never hidden nor scored in training: its pixels get 0,
    while valid pixels of well-covered patches keep their error."""
    model = tiny().eval()
    x = torch.rand(1, 1, 16, 16)
    valid = torch.zeros(1, 16, 16, dtype=torch.bool)
    valid[:, :, :8] = True  # the left half: 2 patch columns fully valid
    valid[:, :, 8] = True  # one column of the third patch column: 25 % valid, below the 0.5 default
    amap = anomaly_map(model, x, valid=valid, k=4, sigma=0.0, norm_pix=False, generator=torch.Generator().manual_seed(0))
    assert torch.all(amap[:, :, 8:] == 0)  # the 25 %-valid patches and everything invalid
    assert torch.all(amap[:, :, :8] > 0)  # squared errors of an untrained model: positive everywhere it is scored
    # with the threshold at 0.25 those patches were trained and are scored again
    model.min_valid_fraction = 0.25
    amap = anomaly_map(model, x, valid=valid, k=4, sigma=0.0, norm_pix=False, generator=torch.Generator().manual_seed(0))
    assert torch.all(amap[:, :, 8] > 0) and torch.all(amap[:, :, 9:] == 0)
    # an input with no patch valid enough (too small or thin) is scored on its valid pixels rather than not at all
    thin = torch.zeros(1, 16, 16, dtype=torch.bool)
    thin[:, :, :1] = True
    model.min_valid_fraction = 0.5
    amap = anomaly_map(model, x, valid=thin, k=4, sigma=0.0, norm_pix=False, generator=torch.Generator().manual_seed(0))
    assert torch.all(amap[:, :, 0] > 0) and torch.all(amap[:, :, 1:] == 0)
