"""What makes a training run reproducible and resumable, besides the model: seeds, RNG and optimizer state.

Seeds are pure functions of ``(seed, step, rank, micro-batch)`` (:func:`mask_generator`,
:func:`seed_everything`). The training-state file of a checkpoint (``step_N.state.{safetensors,json}``,
format :data:`STATE_FORMAT`) holds the optimizer and every rank's RNG states as tensors plus JSON
scalars: :func:`encode_optimizer` / :func:`decode_optimizer` and :func:`encode_rng` /
:func:`restore_rng` convert between those and the live objects. Nothing is pickled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "STATE_FORMAT",
    "Progress",
    "mix_seed",
    "mask_generator",
    "seed_everything",
    "rng_state",
    "encode_rng",
    "restore_rng",
    "encode_optimizer",
    "decode_optimizer",
]

STATE_FORMAT = "unimae-train-state"


@dataclass
class Progress:
    """Where a run stands: what the training-state file records, plus the current logging window."""

    step: int = 0  # completed optimizer steps
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch consumed by completed steps (this process)
    elapsed: float = 0.0  # training seconds over all sessions
    saved_step: int = -1
    window: list[torch.Tensor] = field(default_factory=list)
    window_samples: int = 0
    window_start: float = 0.0
    last_loss: float | None = None


def mix_seed(*values: int) -> int:
    """A 63-bit seed from non-negative integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1])) & (2**63 - 1)


def mask_generator(seed: int, step: int, rank: int = 0, micro: int = 0) -> torch.Generator:
    """The CPU generator that draws the masks of one micro-batch: a pure function of its arguments."""
    return torch.Generator().manual_seed(mix_seed(seed, step, rank, micro))


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python ``random``, numpy's global RNG and torch (all devices) from ``(seed, rank)``."""
    s = mix_seed(seed, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states, for :func:`encode_rng`."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def encode_rng(states: Sequence[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states of every rank as tensors (``rng.{rank}.*``) and JSON scalars."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for rank, st in enumerate(states):
        tensors[f"rng.{rank}.torch"] = st["torch"]
        name, keys, pos, has_gauss, cached = st["numpy"]
        tensors[f"rng.{rank}.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        version, internal, gauss_next = st["python"]
        tensors[f"rng.{rank}.python"] = torch.tensor(internal, dtype=torch.int64)
        for i, t in enumerate(st.get("cuda", [])):
            tensors[f"rng.{rank}.cuda.{i}"] = t
        meta[str(rank)] = {
            "numpy": [name, int(pos), int(has_gauss), float(cached)],
            "python": [int(version), gauss_next],
            "cuda_devices": len(st.get("cuda", [])),
        }
    return tensors, meta


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for ``rank``."""
    m = meta.get(str(rank))
    if m is None or f"rng.{rank}.torch" not in tensors:
        return False
    torch.set_rng_state(tensors[f"rng.{rank}.torch"].to(torch.uint8))
    name, pos, has_gauss, cached = m["numpy"]
    np.random.set_state((name, tensors[f"rng.{rank}.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = m["python"]
    random.setstate((version, tuple(int(v) for v in tensors[f"rng.{rank}.python"].tolist()), gauss_next))
    n_cuda = int(m.get("cuda_devices", 0))
    if n_cuda and torch.cuda.is_available() and n_cuda == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"rng.{rank}.cuda.{i}"].to(torch.uint8) for i in range(n_cuda)])
    return True


def encode_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as tensors (``optim.{param}.{key}``) and JSON (param groups, scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def decode_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode_optimizer`: a ``state_dict`` for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}
