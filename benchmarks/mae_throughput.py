"""MAE training-step throughput: UniMAE's ``MaskedAutoencoder`` against MONAI's ``MaskedAutoEncoderViT``.

Both sides get the same architecture, the same weights (MONAI's initial weights are copied into ours),
the same input tensors, the same optimiser (``torch.optim.AdamW(fused=True)``, UniMAE's engine's choice,
with the same settings) and an MSE loss on the masked patches. A *training step* is forward + loss +
backward + optimiser step. Both models run in the same process, alternately (one step of each variant per
round, the order reversed every other round). One *repeat* is ``--warmup`` untimed rounds plus ``--steps``
timed rounds; samples/s is the median over every timed step of every repeat, and each ratio is given as
min / median / max over the ``--repeats`` per-repeat ratios (each from that repeat's medians).

Settings (issue 2, item 5):

* ``2d``: ViT-B/16 at 224², 3 channels, decoder 512 wide x 8 layers (16 heads);
* ``3d``: 96³ volumes with 16³ patches, 1 channel, ViT-B encoder, decoder 384 wide x 4 layers (12 heads;
  MONAI's 3D sin-cos embedding needs widths divisible by 6).

``--preset`` swaps the encoder (width, depth, heads) for another UniMAE preset (micro, tiny, small, base,
large) on both sides, decoders unchanged: a quicker run on a small machine. Every caption names the preset,
encoder depth x width, decoder depth x width and the parameter count.

Both: mask ratio 0.75, MLP ratio 4, qkv bias, class token, fixed sin-cos position embeddings, and
decoders that run over all ``N`` patch tokens plus the class token.

Variants timed per setting:

* ``ours_fp32`` / ``monai_fp32``: fp32 on both sides;
* ``ours_default``: UniMAE's default training precision, ``resolve_precision("auto")``: bf16 autocast
  on GPUs and on CPUs with AVX512-BF16/AMX, fp32 elsewhere;
* ``monai_bf16``: MONAI under ``torch.autocast(bfloat16)``, timed only if one forward/backward under
  autocast works; otherwise the one-line error is recorded.

Implementation differences that the benchmark is about (architecture and optimiser are the same on both
sides): attention (timm's fused ``scaled_dot_product_attention`` vs MONAI's einsum/softmax/einsum) and
bf16 autocast that works. The optimiser's share of each step is timed separately (``optimizer_s``), and
``adamw_s`` times one step of the default ``AdamW`` (for-loop on CPU, ``foreach`` on CUDA: what a MONAI user
gets without ``fused=True``) against the fused one on the same parameters and gradients.

``ratio_fp32 = ours_fp32 / monai_fp32``. ``ratio_default = ours_default / monai_default``: each side in its
own default precision; MONAI's ``MaskedAutoEncoderViT`` has no precision setting, so its default is fp32.
When MONAI runs under bf16 autocast, ``ratio_bf16 = ours_bf16 / monai_bf16`` compares bf16 with bf16.

Model FLOPs (for the model-FLOP utilisation reported on CUDA), counted as matmul FLOPs of the
architecture (identical for both sides), with ``B`` batch, ``N`` patch tokens, ``V`` visible tokens,
``K = C * prod(patch)`` values per patch, ``E``/``L`` encoder width/depth, ``Ed``/``Ld`` decoder
width/depth, ``r`` the MLP ratio, ``Te = 1 + V`` and ``Td = 1 + N`` sequence lengths (class token)::

    block(T, D)  = (8 + 4 r) T D^2 + 4 T^2 D          # qkv + proj + MLP, then QK^T and AV
    forward      = B [ 2 N K E                        # patch embedding (all patches)
                       + L block(Te, E)               # encoder over visible tokens only
                       + 2 Te E Ed                    # decoder embedding
                       + Ld block(Td, Ed)             # decoder over all tokens
                       + 2 N Ed K ]                   # prediction head
    step FLOPs   = 3 * forward                        # backward ~ 2x forward ("6 x params x tokens")

MFU = step FLOPs / median step time / peak; the peak is ``--peak-tflops`` or a table of dense bf16
peaks by GPU name (H100 SXM / H200 989 TFLOP/s, ...). fp32 figures are also divided by the bf16 peak.

Run ``python benchmarks/mae_throughput.py --help``; see ``benchmarks/README.md``. The MONAI side and the check
that both compute the same function are in ``mae_reference.py``, the timing loop in ``timing.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unimae.core.losses import mae_loss
from unimae.core.mae import MaskedAutoencoder, build_mae
from unimae.core.precision import autocast, cpu_supports_bf16, resolve_precision

# the sibling modules import by name whether this file runs as a script (its folder is then sys.path[0]) or is
# loaded by path with importlib (as the tests load the benchmarks)
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mae_reference import build_monai, check_equivalence, copy_monai_into_ours, monai_loss, monai_patchify  # noqa: E402
from timing import min_median_max, run_alternating, timed_opt_step  # noqa: E402

MASK_RATIO = 0.75
LR = 1.5e-4
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.05

#: dense bf16 peak TFLOP/s by (lower-case) GPU name fragment; the first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h200", 989.0),
    ("gh200", 989.0),
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),  # SXM
    ("h800", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.0),
    ("l40", 181.0),
    ("l4", 121.0),
    ("a10", 125.0),
    ("rtx 4090", 165.0),
    ("rtx 3090", 71.0),
)


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration (identical on both sides)."""

    name: str
    description: str
    spatial_dims: int
    in_chans: int
    img_size: tuple[int, ...]
    patch: int
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    preset: str = "base"

    def with_preset(self, name: str) -> Setting:
        """This setting with UniMAE preset ``name``'s encoder (width, depth, heads); the decoder is kept."""
        from dataclasses import replace

        from unimae.core.presets import model_preset

        if name == self.preset:
            return self
        p = model_preset(name)
        return replace(self, preset=name, embed_dim=p["embed_dim"], depth=p["depth"], num_heads=p["num_heads"],
                       description=self.description.replace("ViT-B", f"{name} encoder"))  # fmt: skip

    def caption(self, params: int | None = None) -> str:
        """What was measured: preset, encoder and decoder depth x width, input, parameters."""
        img = "x".join(map(str, self.img_size))
        text = (f"{self.preset} preset: encoder {self.depth} x {self.embed_dim} ({self.num_heads} heads), decoder "
                f"{self.decoder_depth} x {self.decoder_dim} ({self.decoder_heads} heads), {img} input, "
                f"{self.in_chans} ch, {self.patch}^{self.spatial_dims} patches")  # fmt: skip
        return text + (f", {params / 1e6:.1f} M parameters" if params is not None else "")

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(s // self.patch for s in self.img_size)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def patch_values(self) -> int:
        return self.in_chans * self.patch**self.spatial_dims


SETTINGS: dict[str, Setting] = {
    "2d": Setting(
        name="2d",
        description="ViT-B/16, 224x224, 3 channels, decoder 512x8 (16 heads)",
        spatial_dims=2,
        in_chans=3,
        img_size=(224, 224),
        patch=16,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
    ),
    "3d": Setting(
        name="3d",
        description="ViT-B, 96^3 volume, 16^3 patches, 1 channel, decoder 384x4 (12 heads)",
        spatial_dims=3,
        in_chans=1,
        img_size=(96, 96, 96),
        patch=16,
        decoder_dim=384,
        decoder_depth=4,
        decoder_heads=12,
    ),
}

#: default batch sizes: (CPU, CUDA)
DEFAULT_BATCH = {"2d": (8, 128), "3d": (2, 16)}


# -- models ----------------------------------------------------------------------------------------
def build_ours(s: Setting) -> MaskedAutoencoder:
    return build_mae(
        None,
        spatial_dims=s.spatial_dims,
        in_chans=s.in_chans,
        patch_size=s.patch,
        embed_dim=s.embed_dim,
        depth=s.depth,
        num_heads=s.num_heads,
        mlp_ratio=s.mlp_ratio,
        decoder_dim=s.decoder_dim,
        decoder_depth=s.decoder_depth,
        decoder_heads=s.decoder_heads,
        mask_ratio=MASK_RATIO,
    )


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups as in MAE: no weight decay on norms, biases and learned tokens (same rule both sides)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


# -- steps -----------------------------------------------------------------------------------------
def bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_ours_step(model: MaskedAutoencoder, opt: torch.optim.Optimizer, precision: str, device: torch.device,
                   seed: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(seed)  # masks drawn on the CPU and moved, as in UniMAE's engine

    def step(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device):
            out = model(x, generator=gen)
            loss = mae_loss(out, norm_pix=False)["loss"]
        loss.backward()
        return loss.detach(), timed_opt_step(opt, device)

    return step


def make_monai_step(model: nn.Module, opt: torch.optim.Optimizer, bf16: bool, device: torch.device,
                    patch: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, float]]:
    def step(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        opt.zero_grad(set_to_none=True)
        with bf16_autocast(device) if bf16 else contextlib.nullcontext():
            pred, mask = model(x)
            loss = monai_loss(pred, mask, monai_patchify(x, patch))
        loss.backward()
        return loss.detach(), timed_opt_step(opt, device)

    return step


def time_adamw(model: nn.Module, x: torch.Tensor, device: torch.device, patch: int, calls: int = 3) -> dict[str, float]:
    """Median seconds of one ``AdamW.step()`` on ``model``'s parameters and the gradients of one fp32 step:
    the default implementation (for-loop on CPU, ``foreach`` on CUDA) against ``fused=True``. Each optimiser
    is fresh and steps a copy of the weights, so the benchmark's own optimisers are not disturbed."""
    import copy

    clone = copy.deepcopy(model)
    clone.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    pred, mask = clone(x)
    monai_loss(pred, mask, monai_patchify(x, patch)).backward()
    out = {}
    for kind, kw in (("default", {}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(param_groups(clone), lr=LR, betas=BETAS, **kw)
        opt.step()  # state allocation, untimed
        out[kind] = statistics.median(timed_opt_step(opt, device) for _ in range(calls))
    del clone
    return out


def probe_monai_bf16(model: nn.Module, x: torch.Tensor, device: torch.device, patch: int) -> str | None:
    """One forward/backward of MONAI under bf16 autocast; None if it works, else the error on one line."""
    model.zero_grad(set_to_none=True)
    try:
        with bf16_autocast(device):
            pred, mask = model(x)
            loss = monai_loss(pred, mask, monai_patchify(x, patch))
        loss.backward()
        if not torch.isfinite(loss):
            return f"non-finite loss {float(loss)} under bf16 autocast"
        return None
    except Exception as err:  # noqa: BLE001 - any failure is the finding we report
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    finally:
        model.zero_grad(set_to_none=True)


# -- FLOPs / MFU -----------------------------------------------------------------------------------
def step_flops(s: Setting, batch: int) -> float:
    """Analytic model FLOPs of one training step (see the module docstring)."""
    n = s.num_tokens
    v = max(1, int(round(n * (1.0 - MASK_RATIO))))
    k = s.patch_values
    te, td = 1 + v, 1 + n

    def block(t: int, d: int) -> float:
        return (8 + 4 * s.mlp_ratio) * t * d * d + 4 * t * t * d

    fwd = (
        2 * n * k * s.embed_dim
        + s.depth * block(te, s.embed_dim)
        + 2 * te * s.embed_dim * s.decoder_dim
        + s.decoder_depth * block(td, s.decoder_dim)
        + 2 * n * s.decoder_dim * k
    )
    return 3.0 * batch * fwd


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for frag, peak in PEAK_BF16_TFLOPS:
        if frag in name:
            return peak
    return None


# -- reporting -------------------------------------------------------------------------------------
def device_info(device: torch.device, default_precision: str) -> dict[str, Any]:
    import monai
    import timm

    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "ours_default_precision": default_precision,
    }
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["name"] = _cpu_name()
        info["cpu_count"] = os.cpu_count()
        info["cpu_bf16"] = cpu_supports_bf16()
    return info


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def optimizer_kind(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> str:
    if opt.defaults.get("fused"):
        return "fused"
    if opt.defaults.get("foreach") is None:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach(list(params), False, False)
        return "foreach (default)" if foreach else "for-loop (default)"
    return "foreach" if opt.defaults.get("foreach") else "for-loop"


def bench_setting(s: Setting, batch: int, args: argparse.Namespace, device: torch.device, default_precision: str,
                  log: Callable[[str], None]) -> dict[str, Any]:
    log(f"[{s.name}] {s.description}, batch {batch}, device {device}")
    torch.manual_seed(0)
    monai = build_monai(s, MASK_RATIO).to(device)
    ours = build_ours(s).to(device)
    leftovers = copy_monai_into_ours(s, monai, ours)
    check = check_equivalence(s, ours, monai, device)
    po, pm = check["params_ours"], check["params_monai"]
    caption = s.caption(po["total"])
    log(f"  model           {caption}")
    log(f"  parameters      ours {po['total']:,} total / {po['trainable']:,} trainable / {po['trained']:,} trained")
    log(f"                  MONAI {pm['total']:,} total / {pm['trainable']:,} trainable / {pm['trained']:,} trained")
    log(f"  MONAI-only parameters: {_summarise(leftovers, monai)}")
    log(f"  equivalence (fp32, same weights/input/mask): max |pred diff| {check['max_abs_pred_diff']:.2e} "
        f"(|pred| up to {check['pred_scale']:.2f}), loss {check['loss_ours']:.6f} vs {check['loss_monai']:.6f}")

    # the same optimiser on both sides: fused AdamW, as UniMAE's engine builds it
    opt_ours = torch.optim.AdamW(param_groups(ours), lr=LR, betas=BETAS, fused=True)
    opt_monai = torch.optim.AdamW(param_groups(monai), lr=LR, betas=BETAS, fused=True)
    data_gen = torch.Generator().manual_seed(2024)
    shape = (batch, s.in_chans, *s.img_size)
    inputs = [torch.randn(shape, generator=data_gen).to(device) for _ in range(2)]

    def make_input(r: int) -> torch.Tensor:
        return inputs[r % 2]

    monai_bf16_error = probe_monai_bf16(monai, inputs[0], device, s.patch)
    log("  MONAI under bf16 autocast: " + ("works" if monai_bf16_error is None else f"fails: {monai_bf16_error}"))
    adamw = time_adamw(monai, inputs[0], device, s.patch)
    log(f"  AdamW step on these parameters: default {adamw['default']:.3f}s, fused {adamw['fused']:.3f}s")

    variants: dict[str, Callable[[torch.Tensor], Any]] = {
        "ours_fp32": make_ours_step(ours, opt_ours, "fp32", device, seed=1),
        "monai_fp32": make_monai_step(monai, opt_monai, False, device, s.patch),
    }
    if default_precision != "fp32":
        variants["ours_default"] = make_ours_step(ours, opt_ours, default_precision, device, seed=2)
    if monai_bf16_error is None:
        variants["monai_bf16"] = make_monai_step(monai, opt_monai, True, device, s.patch)
    times: dict[str, list[float]] = {k: [] for k in variants}
    opt_times: dict[str, list[float]] = {k: [] for k in variants}
    per_repeat: list[dict[str, float]] = []
    for rep in range(args.repeats):
        t, o = run_alternating(variants, make_input, args.warmup, args.steps, device, log,
                               label=f"repeat {rep + 1}/{args.repeats} ")  # fmt: skip
        for k in variants:
            times[k] += t[k]
            opt_times[k] += o[k]
        per_repeat.append({k: statistics.median(v) for k, v in t.items()})
    for m in per_repeat:  # default precision is fp32 on this machine: ours_default is ours_fp32
        m.setdefault("ours_default", m["ours_fp32"])
    med = {k: statistics.median(v) for k, v in times.items()}
    med.setdefault("ours_default", med["ours_fp32"])
    sps = {k: batch / t for k, t in med.items()}
    # samples/s ratios per repeat: ours / MONAI = MONAI's step time / ours
    r_fp32 = [m["monai_fp32"] / m["ours_fp32"] for m in per_repeat]
    r_default = [m["monai_fp32"] / m["ours_default"] for m in per_repeat]  # MONAI's default precision is fp32
    r_bf16 = [m["monai_bf16"] / m["ours_default"] for m in per_repeat] if "monai_bf16" in med and default_precision == "bf16" else None
    opt_med = {k: statistics.median(v) for k, v in opt_times.items()}
    result: dict[str, Any] = {
        "name": s.name,
        "model": caption,
        "preset": s.preset,
        "encoder": {"depth": s.depth, "width": s.embed_dim, "heads": s.num_heads},
        "decoder": {"depth": s.decoder_depth, "width": s.decoder_dim, "heads": s.decoder_heads},
        "ours_fp32": round(sps["ours_fp32"], 3),
        "ours_default": round(sps["ours_default"], 3),
        "monai_fp32": round(sps["monai_fp32"], 3),
        "monai_default": round(sps["monai_fp32"], 3),
        "monai_default_precision": "fp32",
        "ratio_fp32": round(statistics.median(r_fp32), 3),
        "ratio_fp32_spread": min_median_max(r_fp32),
        "ratio_default": round(statistics.median(r_default), 3),
        "ratio_default_spread": min_median_max(r_default),
        "ratio_bf16": round(statistics.median(r_bf16), 3) if r_bf16 else None,
        "ratio_bf16_spread": min_median_max(r_bf16) if r_bf16 else None,
        "monai_bf16": round(sps["monai_bf16"], 3) if "monai_bf16" in sps else None,
        "monai_bf16_runs": monai_bf16_error is None,
        "monai_bf16_error": monai_bf16_error,
        "ours_default_precision": default_precision,
        "description": s.description,
        "batch": batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "optimizer_s": {k: round(v, 4) for k, v in opt_med.items()},
        "optimizer_share": {k: round(opt_med[k] / med[k], 3) for k in opt_med},
        "adamw_s": {k: round(v, 4) for k, v in adamw.items()},
        "per_repeat_median_step_s": [{k: round(v, 4) for k, v in m.items()} for m in per_repeat],
        "step_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "optimizer": {"ours": optimizer_kind(opt_ours, list(ours.parameters())),
                      "monai": optimizer_kind(opt_monai, list(monai.parameters()))},
        "params": {"ours": po, "monai": pm, "monai_only": _summarise(leftovers, monai)},
        "equivalence": {k: check[k] for k in ("max_abs_pred_diff", "pred_scale", "loss_ours", "loss_monai")},
        "step_gflop": round(step_flops(s, batch) / 1e9, 1),
        "achieved_gflop_per_s": {k: round(step_flops(s, batch) / 1e9 / t, 1) for k, t in med.items()},
    }
    peak = peak_tflops(device, args.peak_tflops)
    if peak is not None:
        flops = step_flops(s, batch)
        result["peak_tflops"] = peak
        result["mfu"] = {k: round(flops / t / (peak * 1e12), 4) for k, t in med.items()}
    del opt_ours, opt_monai, ours, monai, variants
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _summarise(names: list[str], model: nn.Module) -> str:
    params = dict(model.named_parameters())
    groups: dict[str, list[int]] = {}
    for n in names:
        key = "norm_cross_attn (unused LayerNorms)" if "norm_cross_attn" in n else n
        groups.setdefault(key, []).append(params[n].numel())
    return "; ".join(
        f"{k}: {sum(v):,}" + ("" if params.get(k) is None or params[k].requires_grad else " (frozen sin-cos table)")
        for k, v in groups.items()
    ) or "none"


def format_table(configs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    head = (f"device: {info['name']} ({info['device']}, {info['threads']} threads), torch {info['torch']}, "
            f"timm {info['timm']}, monai {info['monai']}; ours_default = {info['ours_default_precision']}, "
            f"MONAI default = fp32; both sides fused AdamW")
    cols = ["setting", "batch", "ours_fp32", "monai_fp32", "ratio_fp32 min/med/max", "ours_default", "monai_bf16",
            "ratio_default min/med/max", "optimiser share ours/MONAI"]
    rows = []

    def spread(d: dict[str, float]) -> str:
        return f"{d['min']:.2f}/{d['median']:.2f}/{d['max']:.2f}x"

    for c in configs:
        share = c["optimizer_share"]
        rows.append([
            c["name"], str(c["batch"]), f"{c['ours_fp32']:.2f}", f"{c['monai_fp32']:.2f}", spread(c["ratio_fp32_spread"]),
            f"{c['ours_default']:.2f}", "error" if c["monai_bf16"] is None else f"{c['monai_bf16']:.2f}",
            spread(c["ratio_default_spread"]), f"{100 * share['ours_fp32']:.0f}%/{100 * share['monai_fp32']:.0f}%",
        ])  # fmt: skip
    widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) for i in range(len(cols))]
    line = lambda r: "  ".join(v.rjust(w) for v, w in zip(r, widths))  # noqa: E731
    out = [head, "samples/s (median over all timed steps); ratios over the repeats; ratio_default = ours_default / "
           "MONAI fp32 (its default)", line(cols), line(["-" * w for w in widths])]  # fmt: skip
    out += [line(r) for r in rows]
    for c in configs:
        out.append(f"{c['name']}: {c['model']}; {c['repeats']} repeats x {c['steps']} timed steps "
                   f"(+{c['warmup']} warm-up)")  # fmt: skip
        a = c["adamw_s"]
        out.append(f"{c['name']}: AdamW step default {a['default']:.3f}s vs fused {a['fused']:.3f}s "
                   f"(MONAI with its default AdamW would take {a['default'] - a['fused']:+.3f}s per step)")  # fmt: skip
        if c["monai_bf16_error"]:
            out.append(f"{c['name']}: MONAI under bf16 autocast fails: {c['monai_bf16_error']}")
        elif c.get("ratio_bf16") is not None:
            out.append(f"{c['name']}: bf16 vs bf16: {spread(c['ratio_bf16_spread'])}")
        if "mfu" in c:
            mfu = ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["mfu"].items())
            out.append(f"{c['name']}: MFU vs {c['peak_tflops']:.0f} TFLOP/s bf16 peak "
                       f"({c['step_gflop']:.0f} GFLOP/step): {mfu}")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="2d,3d", help="comma-separated: 2d, 3d (default: both)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant, at least 5 (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up rounds per repeat (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="repeats of warm-up + timed rounds; ratios are reported as min/median/max over them (default 3)")
    p.add_argument("--preset", default="base",
                   help="encoder size on both sides: a UniMAE preset (micro, tiny, small, base, large; default base = ViT-B)")
    p.add_argument("--batch-2d", type=int, default=None, help="2D batch (default 8 on CPU, 128 on CUDA)")
    p.add_argument("--batch-3d", type=int, default=None, help="3D batch (default 2 on CPU, 16 on CUDA)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s for MFU (default: a table by GPU name; CUDA only)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout (progress and the table on stderr)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        p.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    args.settings = names
    if args.steps < 5:
        p.error("--steps must be at least 5 (the median of at least 5 timed steps)")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    from unimae.core.presets import MODEL_PRESETS

    if args.preset not in MODEL_PRESETS:
        p.error(f"unknown --preset {args.preset!r}; known: {', '.join(MODEL_PRESETS)}")
    for name in ("batch_2d", "batch_3d", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    default_precision = resolve_precision("auto", device)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    info = device_info(device, default_precision)
    log(f"device: {info['name']} ({device}), {info['threads']} threads, ours_default = {default_precision}")
    gpu = device.type == "cuda"
    batches = {"2d": args.batch_2d or DEFAULT_BATCH["2d"][gpu], "3d": args.batch_3d or DEFAULT_BATCH["3d"][gpu]}
    configs = [bench_setting(SETTINGS[n].with_preset(args.preset), batches[n], args, device, default_precision, log)
               for n in args.settings]  # fmt: skip
    log("")
    log(format_table(configs, info))  # on stderr with --json, so stdout stays pure JSON
    if args.json:
        print(json.dumps({"device": info, "configs": configs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
