"""``torchrun`` with 2 CPU processes (gloo): different data per rank, gradients all-reduced to their mean, only rank 0
writes, the model loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unimae.core.checkpoint import load_checkpoint
from unimae.core.engine import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, SAMPLES = 4, 2, 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "unimae.apps.cli", "pretrain",
        "--config", str(ROOT / "configs" / "xray" / "pretrain.yaml"),
        "model.preset=micro", "data.input_size=32", f"data.num_samples={SAMPLES}", "data.val=synthetic",
        "data.num_val_samples=6", f"train.batch_size={BATCH}", f"train.max_steps={STEPS}", "train.log_every=1",
        "train.save_every=2", "train.preview_every=2", "train.val_every=2", "train.device=cpu", "train.precision=fp32",
        "train.record_indices=true", "train.progress=false", "train.tensorboard=false", f"out_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in time: {err.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # only rank 0 reports and writes: one summary line, each metrics step once, no stray files
    assert proc.stdout.count("pretrained 4 steps") == 1, proc.stdout
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["val_loss"] is not None for r in rows if r["step"] in (2, 4))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted([
        "config.yaml", "metrics.csv", "model.json", "model.safetensors", "sample_indices.json",
        "previews/step_0000002.png", "previews/step_0000004.png",
        "checkpoints/last.json", "checkpoints/last.safetensors",
        *(f"checkpoints/step_000000{s}.{ext}" for s in (2, 4)
          for ext in ("json", "safetensors", "state.json", "state.safetensors")),
    ])  # fmt: skip

    # each rank trained on its own shard of the data
    ranks = json.loads((out / "sample_indices.json").read_text())
    assert ranks["world_size"] == 2
    a, b = ranks["ranks"]
    assert len(a) == len(b) == STEPS * BATCH
    assert not set(a) & set(b) and set(a) | set(b) <= set(range(SAMPLES))

    # the training state records the world size and both ranks' RNG streams; the model loads
    state = json.loads((out / "checkpoints" / "step_0000004.state.json").read_text())
    assert state["world_size"] == 2 and set(state["rng"]) == {"0", "1"}
    model, meta = load_checkpoint(out / "model")
    assert meta["step"] == STEPS and meta["contract"]["domain"] == "xray"
    assert meta["encoder"]["in_chans"] == 1


# ------------------------------------------------------------------------------------------------
# gradients are all-reduced: the engine under torchrun with two gloo ranks on different data
# ------------------------------------------------------------------------------------------------
TINY = dict(spatial_dims=2, in_chans=1, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32,
            decoder_depth=1, decoder_heads=2)  # fmt: skip
SEED, SIZE, MICRO, ACCUM = 5, 32, 2, 2


class Blobs:
    """Item ``i``: a Gaussian blob plus noise that depends on ``i`` only (every process can rebuild any item)."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        import torch

        rng = np.random.default_rng([11, i])
        yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.05, 0.3)) + 0.05 * rng.standard_normal((SIZE, SIZE))
        return {"image": torch.tensor(img[None], dtype=torch.float32), "valid": torch.ones(SIZE, SIZE, dtype=torch.bool)}


def _tiny_mae():
    from unimae.core.engine import seed_everything
    from unimae.core.mae import MaskedAutoencoder

    seed_everything(0)  # the same initial weights in every process
    return MaskedAutoencoder(**TINY)


def _train_config(**kw):
    from unimae.core.engine import TrainConfig

    return TrainConfig(max_steps=2, batch_size=MICRO, accum_steps=ACCUM, lr=1e-3, warmup_steps=1, precision="fp32",
                       device="cpu", log_every=1, preview_every=0, save_every=1000, progress=False, tensorboard=False,
                       num_workers=0, record_indices=True, **kw)  # fmt: skip


def _worker(out: Path) -> None:
    """Run by each torchrun rank: train 2 steps, saving every gradient the optimizer sees and the final weights."""
    import torch
    from safetensors.torch import save_file

    from unimae.core.engine import Trainer

    class Probe(Trainer):
        def _setup(self) -> None:
            super()._setup()
            self.grads = []
            self.optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self.grads.append(
                    {n: p.grad.detach().clone() for n, p in self.raw.named_parameters() if p.grad is not None}
                )
            )

    trainer = Probe(_tiny_mae(), Blobs(), config=_train_config(), out_dir=out / "run", seed=SEED)
    trainer.fit()
    rank = trainer.info.rank
    tensors = {f"step{s}/{n}": g for s, grads in enumerate(trainer.grads) for n, g in grads.items()}
    tensors.update({f"final/{n}": p.detach().clone() for n, p in trainer.raw.named_parameters()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))


def test_ddp_all_reduces_gradients_across_ranks(tmp_path: Path) -> None:
    """Two gloo ranks on different data: at the first optimizer step both hold the same gradient, the average of
    the two ranks' own (accumulated) gradients computed here in one process, and they end with identical
    weights. A model that is not all-reduced (no DDP wrapper, or ``no_sync`` on every micro-batch) keeps its
    rank's own gradient and fails both checks."""
    import math

    import torch
    from safetensors.torch import load_file

    from unimae.core.engine import TrainConfig, mask_generator
    from unimae.core.losses import mae_loss

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(Path(__file__).resolve()), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in time: {err.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    indices = json.loads((tmp_path / "run" / "sample_indices.json").read_text())["ranks"]
    assert not set(indices[0]) & set(indices[1])  # the ranks saw different samples

    # each rank's own first-step gradient (its ACCUM micro-batches, the engine's masks), in this process
    data, defaults = Blobs(), TrainConfig()
    local = []
    for r in (0, 1):
        model = _tiny_mae()
        for k in range(ACCUM):
            batch = [data[i] for i in indices[r][k * MICRO : (k + 1) * MICRO]]
            image = torch.stack([b["image"] for b in batch])
            valid = torch.stack([b["valid"] for b in batch])
            out = model(image, valid=valid, generator=mask_generator(SEED, 0, r, k))
            loss = mae_loss(out, norm_pix=defaults.norm_pix, gradient_weight=defaults.gradient_weight)["loss"]
            (loss / ACCUM).backward()
        local.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    eps = torch.finfo(torch.float32).eps
    n_terms = 2 * ACCUM * MICRO * (SIZE // 8) ** 2  # ranks x samples x patches summed into each gradient
    names = list(local[0])
    assert {k.split("/", 1)[1] for k in ranks[0] if k.startswith("step0/")} == set(names)
    apart = max(float((local[0][n] - local[1][n]).norm() / local[0][n].norm().clamp(min=1e-12)) for n in names)
    assert apart > 0.01, apart  # the ranks' own gradients differ: the average is not either of them
    for n in names:
        mean = (local[0][n] + local[1][n]) / 2
        atol = 8 * eps * math.sqrt(n_terms) * float(mean.abs().max())
        for r in (0, 1):
            torch.testing.assert_close(ranks[r][f"step0/{n}"], mean, rtol=1e-5, atol=atol,
                                       msg=lambda m, n=n, r=r: f"rank {r} {n}: not the mean of the ranks' gradients: {m}")  # fmt: skip
    for key in ranks[0]:  # the second step's gradients and the final weights: the same on both ranks
        if not key.startswith("step0/"):
            assert torch.equal(ranks[0][key], ranks[1][key]), key


if __name__ == "__main__":  # torchrun's entry for test_ddp_all_reduces_gradients_across_ranks
    _worker(Path(sys.argv[1]))
