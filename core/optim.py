"""Optimisation: AdamW parameter groups (weight decay, layer-wise lr decay), lr scaling and the schedule.

The recipe follows MAE (He et al. 2021): AdamW with betas (0.9, 0.95) and weight decay 0.05, none on
norms, biases and the model's ``no_weight_decay()`` names; peak ``lr = blr * effective_batch / 256``;
linear warmup then a half-cosine to ``min_lr``. The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR`
whose lambda is a plain object, so ``scheduler.state_dict()`` is JSON and resumes exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from timm.optim import param_groups_weight_decay as _timm_weight_decay_groups
from torch import nn

__all__ = [
    "scaled_lr",
    "no_weight_decay_names",
    "param_groups_weight_decay",
    "param_groups_layer_decay",
    "build_optimizer",
    "WarmupCosine",
    "build_scheduler",
    "resume_schedule",
]


def scaled_lr(blr: float, effective_batch: int, base_batch: int = 256) -> float:
    """The linear scaling rule: ``blr * effective_batch / base_batch`` (effective = batch x accum x world)."""
    if effective_batch < 1:
        raise ValueError(f"effective batch must be >= 1, got {effective_batch}")
    return float(blr) * effective_batch / base_batch


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The parameter names ``model.no_weight_decay()`` lists (empty when it has no such method)."""
    module = getattr(model, "module", model)
    fn = getattr(module, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float = 0.05, no_weight_decay: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and norms / biases / ``no_weight_decay`` names at 0 (timm's rule).

    Args:
        model: the model (DDP-wrapped or not).
        weight_decay: decoupled weight decay of the decayed group.
        no_weight_decay: extra names or fnmatch patterns without decay (default ``model.no_weight_decay()``).
    """
    module = getattr(model, "module", model)
    names = no_weight_decay_names(module) if no_weight_decay is None else set(no_weight_decay)
    return _timm_weight_decay_groups(module, weight_decay=weight_decay, no_weight_decay_list=names)


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _layer_id(name: str, prefix: str, num_blocks: int) -> int:
    """0 for the embedding (patch / class / position), ``i + 1`` for block ``i``, ``num_blocks + 1`` otherwise."""
    if not name.startswith(prefix):
        return num_blocks + 1  # heads and decoders outside the encoder take the full lr
    rest = name[len(prefix):]
    if rest.startswith(("patch_embed.", "cls_token", "pos_embed", "reg_token")):
        return 0
    match = _BLOCK.match("." + rest) if rest.startswith("blocks.") else None
    if match:
        return int(match.group(1)) + 1
    return num_blocks + 1


def _find_encoder(model: nn.Module) -> tuple[str, int]:
    """The name prefix and block count of the first sub-module with ``patch_embed`` and ``blocks``."""
    for name, mod in model.named_modules():
        if hasattr(mod, "patch_embed") and isinstance(getattr(mod, "blocks", None), nn.ModuleList):
            return (name + "." if name else ""), len(mod.blocks)
    raise ValueError(f"{type(model).__name__} has no ViT encoder (a module with `patch_embed` and `blocks`)")


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_weight_decay: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Layer-wise lr decay groups for fine-tuning (BEiT / MAE fine-tuning; X-ray recipe uses 0.55).

    The encoder's embedding is layer 0, block ``i`` is layer ``i + 1`` and everything after the blocks
    (final norm, heads, decoders) is layer ``L + 1``; layer ``k`` gets ``lr_scale = layer_decay ** (L + 1 - k)``.
    Each group carries ``lr_scale`` (applied by :func:`build_optimizer`) and ``layer_id``; norms, biases
    and ``no_weight_decay`` names get no weight decay.
    """
    module = getattr(model, "module", model)
    patterns = no_weight_decay_names(module) if no_weight_decay is None else set(no_weight_decay)
    prefix, depth = _find_encoder(module)
    top = depth + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or any(_match(name, p) for p in patterns)
        layer = _layer_id(name, prefix, depth)
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else float(weight_decay),
                "lr_scale": float(layer_decay) ** (top - layer),
                "layer_id": layer,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def build_optimizer(
    param_groups: Iterable[dict[str, Any]],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; a group's ``lr_scale`` multiplies ``lr``.

    ``fused=None`` uses the fused kernel where this torch build has one for the parameters' device
    (CPU and CUDA in torch 2.x) and falls back to the default implementation otherwise.
    """
    groups = []
    for g in param_groups:
        g = dict(g)
        g["lr"] = float(lr) * float(g.get("lr_scale", 1.0))
        groups.append(g)
    betas = (float(betas[0]), float(betas[1]))
    if fused is not False:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, TypeError, ValueError):
            if fused:
                raise
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


class WarmupCosine:
    """lr factor of optimizer step ``s`` (0-based): linear warmup, then a half-cosine to ``min_factor``.

    ``factor(s) = (s + 1) / warmup`` for ``s < warmup``; after that
    ``min_factor + (1 - min_factor) * (1 + cos(pi * t)) / 2`` with ``t = (s - warmup) / (total - warmup)``
    clamped to 1. A plain object (not a closure) so that ``LambdaLR.state_dict()`` stores it as JSON.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, lr: float, min_lr: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step-based :class:`WarmupCosine` for every group (``min_lr`` is absolute at the peak ``lr``)."""
    min_factor = 0.0 if lr <= 0 else float(min_lr) / float(lr)
    fn = WarmupCosine(warmup_steps, total_steps, min_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [fn] * len(optimizer.param_groups))


def resume_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], step: int
) -> None:
    """Continue ``scheduler`` (built with this run's settings: peak lr, warmup, ``max_steps``) at ``step``.

    With unchanged settings this reproduces the saved learning rates exactly; a larger
    ``train.max_steps`` (continuing a finished run) stretches the cosine to the new end.
    """
    keep = {k: v for k, v in saved.items() if k not in ("lr_lambdas", "base_lrs", "_last_lr")}
    scheduler.load_state_dict({**scheduler.state_dict(), **keep})
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, base, lr in zip(optimizer.param_groups, scheduler.base_lrs, lrs):
        group["initial_lr"], group["lr"] = base, lr
    scheduler._last_lr = lrs  # what get_last_lr() reports
