"""``torchrun`` with 2 CPU processes (gloo): different data per rank, only rank 0 writes, the model loads."""

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
    assert meta["model_config"]["in_chans"] == 1
