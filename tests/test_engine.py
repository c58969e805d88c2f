"""The pretraining engine: loss falls per domain, exact resume, checkpoints, schedule, decay, accumulation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from unimae.core.checkpoint import load_checkpoint, load_tensors
from unimae.core.config import load_config
from unimae.core.engine import (
    METRIC_FIELDS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    mask_generator,
    read_metrics,
    seed_everything,
)
from unimae.core.errors import InputError
from unimae.core.mae import MaskedAutoencoder, build_mae
from unimae.core.optim import (
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    param_groups_layer_decay,
    param_groups_weight_decay,
    scaled_lr,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors run faster (and steadier on a shared 2-core machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Blobs(Dataset):
    """Gaussian blobs plus noise; item ``i`` depends on ``(seed, i)`` only. Optionally one poisoned item."""

    def __init__(self, n: int = 48, size: int = 32, chans: int = 1, seed: int = 0, poison: float | None = None) -> None:
        self.n, self.size, self.chans, self.seed, self.poison = n, size, chans, seed, poison
        self.epochs_seen: set[int] = set()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.add(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        yy, xx = np.mgrid[-1 : 1 : self.size * 1j, -1 : 1 : self.size * 1j]
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.05, 0.3))
        img = np.repeat(blob[None], self.chans, 0) + 0.05 * rng.standard_normal((self.chans, self.size, self.size))
        image = torch.tensor(img, dtype=torch.float32)
        if self.poison is not None and i == 0:
            image[0, 0, 0] = self.poison
        return {"image": image, "valid": torch.ones(self.size, self.size, dtype=torch.bool)}


def tiny_mae(**kw) -> MaskedAutoencoder:
    seed_everything(0)
    args = dict(spatial_dims=2, in_chans=1, patch_size=8, **TINY)
    args.update(kw)
    return build_mae(None, **args)


def config(**kw) -> TrainConfig:
    base = dict(
        max_steps=8, batch_size=8, lr=1e-3, warmup_steps=2, precision="fp32", log_every=1, preview_every=0,
        save_every=1000, progress=False, tensorboard=False,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def losses(out_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out_dir / "metrics.csv")]


# ------------------------------------------------------------------------------------------------
# the loss falls on each domain's synthetic data (real plugins, the shipped configs at tiny size)
# ------------------------------------------------------------------------------------------------
DOMAIN_SIZES = {"ct": ["data.input_size=32", "model.patch_size=8"], "fundus": ["data.input_size=64"],
                "xray": ["data.input_size=64"], "multispectral": ["data.input_size=32"]}  # fmt: skip


@pytest.mark.parametrize("domain", sorted(DOMAIN_SIZES))
def test_loss_falls_on_synthetic_data(domain: str, tmp_path: Path) -> None:
    from unimae.apps.pretrain import pretrain

    overrides = [
        *DOMAIN_SIZES[domain], *(f"model.{k}={v}" for k, v in TINY.items()), "data.num_samples=64",
        "train.batch_size=8", "train.max_steps=30", "train.lr=2e-3", "train.warmup_steps=3", "train.precision=fp32",
        "train.log_every=1", "train.preview_every=0", "train.progress=false", "train.tensorboard=false",
        f"out_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    cfg = load_config(ROOT / "configs" / domain / "pretrain.yaml", overrides)
    result = pretrain(cfg)
    curve = losses(result["out_dir"])
    assert len(curve) == 30 and all(math.isfinite(v) for v in curve)
    first, last = np.mean(curve[:5]), np.mean(curve[-5:])
    assert last < 0.97 * first, f"{domain}: loss did not fall ({first:.4f} -> {last:.4f})"
    # the checkpoint carries the domain's preprocessing contract and loads back
    model, meta = load_checkpoint(result["model"])
    contract = meta["contract"]
    assert contract["domain"] == domain and contract["normalization"] is not None
    assert contract["spatial_dims"] == (3 if domain == "ct" else 2)
    assert contract["mask_ratio"] == cfg["model"]["mask_ratio"]
    if domain == "multispectral":
        assert [c["name"] for c in contract["channels"]][:3] == ["B01", "B02", "B03"]
        assert len(contract["channels"]) == 13 and model.encoder.channel_mode == "spectral"


# ------------------------------------------------------------------------------------------------
# resume, checkpoints and files
# ------------------------------------------------------------------------------------------------
def test_interrupt_and_resume_reproduce_the_uninterrupted_run(tmp_path: Path) -> None:
    full = tmp_path / "full"
    Trainer(tiny_mae(), Blobs(), config=config(max_steps=10), out_dir=full, seed=3).fit()

    def interrupt(step: int, metrics: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(TrainingInterrupted) as info:
        Trainer(tiny_mae(), Blobs(), config=config(max_steps=10), out_dir=part, seed=3, on_step=interrupt).fit()
    assert info.value.step == 5 and (part / "checkpoints" / "step_0000005.state.json").is_file()
    assert len(losses(part)) == 5

    # a fresh run refuses to overwrite the interrupted one
    with pytest.raises(InputError, match="resume=true"):
        Trainer(tiny_mae(), Blobs(), config=config(max_steps=10), out_dir=part, seed=3).fit()

    # the resumed model starts from other weights: everything must come from the checkpoint
    other = tiny_mae()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    result = Trainer(other, Blobs(), config=config(max_steps=10), out_dir=part, seed=3, resume=True).fit()
    assert result["step"] == 10
    a, b = read_metrics(full / "metrics.csv"), read_metrics(part / "metrics.csv")
    assert [r["step"] for r in b] == list(range(1, 11))
    for ra, rb in zip(a, b):
        assert ra["epoch"] == rb["epoch"]
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6, rel=0)
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
    wa, _ = load_tensors(full / "model")
    wb, _ = load_tensors(part / "model")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_sigterm_checkpoints_after_the_step_in_flight_and_resumes(tmp_path: Path) -> None:
    """A scheduler's SIGTERM (preemption) ends training like Ctrl-C, at a step boundary, with a checkpoint."""
    import os
    import signal

    def preempt(step: int, metrics: dict) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered now; the trainer only stops after this step

    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="resume=true") as info:
        Trainer(tiny_mae(), Blobs(), config=config(max_steps=8), out_dir=out, seed=3, on_step=preempt).fit()
    assert info.value.step == 3 and (out / "checkpoints" / "step_0000003.state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is only installed while training
    # a first Ctrl-C also stops at the step boundary
    sigint = tmp_path / "sigint"

    def ctrl_c(step: int, metrics: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        Trainer(tiny_mae(), Blobs(), config=config(max_steps=8), out_dir=sigint, seed=3, on_step=ctrl_c).fit()
    assert info.value.step == 2 and (sigint / "checkpoints" / "step_0000002.state.json").is_file()
    result = Trainer(tiny_mae(), Blobs(), config=config(max_steps=8), out_dir=out, seed=3, resume=True).fit()
    assert result["step"] == 8 and [r["step"] for r in read_metrics(out / "metrics.csv")] == list(range(1, 9))


def test_resume_crosses_epochs_and_continues_a_finished_run(tmp_path: Path) -> None:
    # 48 samples / batch 8 = 6 steps per epoch: 4 + (resume) 4 crosses an epoch boundary mid-way
    data = Blobs()
    full = tmp_path / "full"
    Trainer(tiny_mae(), data, config=config(max_steps=8, save_every=4), out_dir=full).fit()
    assert data.epochs_seen == {0, 1}
    part = tmp_path / "part"
    Trainer(tiny_mae(), Blobs(), config=config(max_steps=4), out_dir=part).fit()  # a finished 4-step run
    state = json.loads((part / "checkpoints" / "step_0000004.state.json").read_text())
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (4, 0, 4)
    # continuing it to 8 steps: the data stream picks up where it stopped, the cosine stretches to step 8
    indices = tmp_path / "more"
    Trainer(tiny_mae(), Blobs(), config=config(max_steps=8, record_indices=True), out_dir=part, resume=True).fit()
    Trainer(tiny_mae(), Blobs(), config=config(max_steps=8, record_indices=True), out_dir=indices).fit()
    resumed = json.loads((part / "sample_indices.json").read_text())["ranks"][0]
    whole = json.loads((indices / "sample_indices.json").read_text())["ranks"][0]
    assert resumed == whole[32:]
    rows = read_metrics(part / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, 9)) and [r["epoch"] for r in rows] == [0] * 6 + [1] * 2
    fn4, fn8 = WarmupCosine(2, 4), WarmupCosine(2, 8)
    expected = [1e-3 * fn4(s) for s in range(4)] + [1e-3 * fn8(s) for s in range(4, 8)]
    assert [r["lr"] for r in rows] == pytest.approx(expected)


def test_checkpoint_files_round_trip_bit_identical(tmp_path: Path) -> None:
    model = tiny_mae()
    out = tmp_path / "run"
    Trainer(model, Blobs(), config=config(max_steps=6, save_every=2, keep_last=2, preview_every=3), out_dir=out).fit()
    ck = out / "checkpoints"
    names = sorted(p.name for p in ck.iterdir())
    assert names == [
        "last.json", "last.safetensors", "step_0000004.json", "step_0000004.safetensors",
        "step_0000004.state.json", "step_0000004.state.safetensors", "step_0000006.json", "step_0000006.safetensors",
        "step_0000006.state.json", "step_0000006.state.safetensors",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == list(METRIC_FIELDS)

    x = Blobs(4, seed=9)[0]["image"][None].repeat(2, 1, 1, 1)
    model.eval()
    with torch.no_grad():
        ref = model(x, generator=mask_generator(1, 2))["pred"]
    for path in (out / "model", ck / "last", ck / "step_0000006"):
        loaded, meta = load_checkpoint(path)
        assert meta["step"] == 6 and meta["contract"]["patch_size"] == [8, 8]
        with torch.no_grad():
            got = loaded(x, generator=mask_generator(1, 2))["pred"]
        assert torch.equal(got, ref)
    assert json.loads((ck / "last.json").read_text())["train_state"] == "step_0000006.state"


# ------------------------------------------------------------------------------------------------
# optimisation
# ------------------------------------------------------------------------------------------------
def test_warmup_cosine_schedule_and_its_state_resume(tmp_path: Path) -> None:
    fn = WarmupCosine(warmup_steps=4, total_steps=20, min_factor=0.1)
    assert [fn(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert fn(4) == pytest.approx(1.0)
    assert fn(12) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert fn(20) == pytest.approx(0.1) and fn(50) == pytest.approx(0.1)
    tail = [fn(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(tail, tail[1:]))

    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(3))]}], lr=1e-3)
        return opt, build_scheduler(opt, warmup_steps=4, total_steps=20, lr=1e-3, min_lr=1e-4)

    opt, sched = make()
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[3] == pytest.approx(1e-3) and lrs[0] == pytest.approx(2.5e-4)
    # a JSON round trip of the scheduler state continues exactly
    opt2, sched2 = make()
    for _ in range(7):
        opt2.step()
        sched2.step()
    state = json.loads(json.dumps(sched2.state_dict()))
    opt3, sched3 = make()
    sched3.load_state_dict(state)
    opt3.param_groups[0]["lr"] = sched3.get_last_lr()[0]
    rest = []
    for _ in range(13):
        rest.append(opt3.param_groups[0]["lr"])
        opt3.step()
        sched3.step()
    assert rest == pytest.approx(lrs[7:], rel=1e-12)

    # the engine logs that schedule, with lr scaled by the effective batch when train.lr is unset
    out = tmp_path / "run"
    cfg = config(max_steps=6, lr=None, blr=1e-3, warmup_steps=2, accum_steps=2, batch_size=4)
    Trainer(tiny_mae(), Blobs(), config=cfg, out_dir=out).fit()
    peak = scaled_lr(1e-3, 4 * 2)
    fn = WarmupCosine(2, 6)
    assert [r["lr"] for r in read_metrics(out / "metrics.csv")] == pytest.approx([peak * fn(s) for s in range(6)])


def test_no_weight_decay_on_norms_biases_and_tokens() -> None:
    bands = [{"name": "R", "wavelength": 0.665}, {"name": "G", "wavelength": 0.56}, {"name": "B", "wavelength": 0.49}]
    model = tiny_mae(channel_mode="spectral", in_chans=3, channels=bands)
    groups = param_groups_weight_decay(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    free = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed | free == set(names.values()) and not decayed & free
    assert {"mask_token", "encoder.cls_token", "encoder.patch_embed.band_embed"} <= free
    assert all(n.endswith(".bias") or "norm" in n or n in free for n in free)
    assert not [n for n in decayed if n.endswith(".bias") or "norm" in n]
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "decoder_pred.weight" in decayed
    opt = build_optimizer(groups, lr=1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.param_groups[0]["fused"] is True

    # layer-wise lr decay for fine-tuning: embedding < block 0 < block 1 < heads
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.5**3)
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.5**2)
    assert scale["encoder.blocks.1.mlp.fc1.weight"] == pytest.approx(0.5)
    assert scale["encoder.norm.weight"] == scale["decoder_pred.weight"] == 1.0
    opt = build_optimizer(groups, lr=1e-3)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])


class ContentMasked(MaskedAutoencoder):
    """Masks from each sample's own content, so they do not depend on how the batch is split."""

    def forward(self, x, *, generator=None, **kw):  # noqa: ANN001, ANN003 - test double of the same contract
        n = math.prod(s // p for s, p in zip(x.shape[2:], self.patch_size))
        masks = []
        for sample in x:
            g = torch.Generator().manual_seed(int(sample.abs().sum().item() * 1000) % 2**31)
            hide = torch.randperm(n, generator=g)[: int(n * self.mask_ratio)]
            masks.append(torch.zeros(n, dtype=torch.bool).index_fill(0, hide, True))
        return super().forward(x, mask=torch.stack(masks), **kw)


class GradientProbe(Trainer):
    """The engine as it is, recording every parameter's gradient the moment the optimizer is asked to step."""

    def _setup(self) -> None:
        super()._setup()
        self.grads: list[dict[str, torch.Tensor]] = []

        def record(optimizer, args, kwargs) -> None:  # noqa: ANN001 - torch's step pre-hook signature
            self.grads.append({n: p.grad.detach().clone() for n, p in self.raw.named_parameters() if p.grad is not None})

        self.optimizer.register_step_pre_hook(record)


def test_gradient_accumulation_matches_the_full_batch(tmp_path: Path) -> None:
    """Accumulating 2 x 4 (or 8 x 1) samples gives the gradient of one batch of 8, before any optimizer step.

    Weights after AdamW are not compared: a parameter whose gradient is near zero moves by about the learning
    rate whatever the sign of a rounding-level difference, so that comparison cannot be tight on every CPU. The
    gradients themselves differ only by fp32 summation order (other micro-batch shapes, other GEMM blockings):
    per tensor, at most a few ``eps * max|g|``. The bound allows ``eps * sqrt(n) * max|g|`` times 8, with ``n``
    = the batch's scored terms (samples x patches), plus ``rtol`` 1e-5; a missing ``1 / accum_steps`` (2x the
    gradient) or a dropped micro-batch is off by O(|g|), far outside it.
    """

    def first_step(name: str, **kw) -> tuple[float, dict[str, torch.Tensor]]:
        seed_everything(0)
        model = ContentMasked(spatial_dims=2, in_chans=1, patch_size=8, **TINY)
        probe = GradientProbe(model, Blobs(), config=config(max_steps=1, **kw), out_dir=tmp_path / name)
        probe.fit()
        assert len(probe.grads) == 1  # one optimizer step, however many micro-batches
        return losses(tmp_path / name)[0], probe.grads[0]

    full_loss, full = first_step("full", batch_size=8, accum_steps=1)
    n_params = sum(1 for _ in ContentMasked(spatial_dims=2, in_chans=1, patch_size=8, **TINY).parameters())
    assert len(full) == n_params  # every parameter received a gradient
    eps = torch.finfo(torch.float32).eps
    n_terms = 8 * (32 // 8) ** 2  # samples x patches summed into each gradient
    for batch, accum in ((4, 2), (1, 8)):
        loss, acc = first_step(f"accum_{accum}", batch_size=batch, accum_steps=accum)
        assert loss == pytest.approx(full_loss, rel=1e-5)
        assert acc.keys() == full.keys()
        for k, g in full.items():
            atol = 8 * eps * math.sqrt(n_terms) * g.abs().max().item()
            torch.testing.assert_close(acc[k], g, rtol=1e-5, atol=atol, msg=lambda m, k=k: f"{k} ({batch} x {accum}): {m}")


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_nan_input_is_a_one_line_error_naming_the_step(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        Trainer(tiny_mae(), Blobs(n=8, poison=float("nan")), config=config(), out_dir=tmp_path / "nan").fit()
    message = str(info.value)
    assert "\n" not in message and message.startswith("step 1: ") and "NaN" in message


class Diverging(MaskedAutoencoder):
    """Predictions overflow from the third step on, as after a too-high learning rate."""

    calls = 0

    def forward(self, x, **kw):  # noqa: ANN001, ANN003 - test double of the same contract
        out = super().forward(x, **kw)
        Diverging.calls += 1
        if Diverging.calls >= 3:
            out["pred"] = out["pred"] * 3e38
        return out


def test_non_finite_loss_stops_with_the_step(tmp_path: Path) -> None:
    seed_everything(0)
    model = Diverging(spatial_dims=2, in_chans=1, patch_size=8, **TINY)
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(model, Blobs(), config=config(save_every=1), out_dir=tmp_path / "inf").fit()
    message = str(info.value)
    assert "\n" not in message and "became nan at step 3" in message and "train.lr" in message
    # nothing of the diverged step was saved: the last checkpoint is step 2's
    assert json.loads((tmp_path / "inf" / "checkpoints" / "last.json").read_text())["step"] == 2


def test_bad_settings_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="max_steps"):
        TrainConfig.from_dict({"max_step": 3})
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="fp16"):
        TrainConfig(precision="fp16")
    assert TrainConfig.from_dict({"lr": "1e-4"}).lr == pytest.approx(1e-4)
    with pytest.raises(InputError, match="fewer than one step"):
        Trainer(tiny_mae(), Blobs(n=4), config=config(batch_size=8), out_dir=tmp_path / "small").fit()
    with pytest.raises(InputError, match="no checkpoint"):
        Trainer(tiny_mae(), Blobs(), config=config(), out_dir=tmp_path / "none", resume=True).fit()
