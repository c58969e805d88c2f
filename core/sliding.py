"""Sliding-window inference (MONAI, Gaussian blending) over images larger than a model's input size.

Its own module so that the task layer (:mod:`unimae.core.tasks`), which runs models through it, and
:mod:`unimae.core.inference`, which describes task checkpoints with the task layer, do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from unimae.core.errors import look_up
from unimae.core.patch_embed import to_tuple
from unimae.core.precision import autocast

__all__ = ["sliding_window", "run_windows", "autocast_fn", "Window"]

#: a window function of ``(n, C + 1, *roi)`` (image channels + a validity channel) -> ``(n, K, *roi)``
Window = Callable[[torch.Tensor], torch.Tensor]


def sliding_window(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi_size: int | Sequence[int],
    *,
    overlap: float = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
    sw_device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``predict_fn`` over overlapping windows of ``image`` and blend the outputs (MONAI).

    Args:
        predict_fn: ``(n, C, *roi) -> (n, K, *roi)`` (logits, probabilities or a one-channel map).
        image: ``(B, C, *S)`` with 2 or 3 spatial axes. Images smaller than ``roi_size`` are
            zero-padded to it (pass a validity channel in ``image`` if the model needs to know).
        roi_size: window size (int for all axes), e.g. the model's training input size.
        overlap: fraction of the window shared by neighbours, in ``[0, 1)``.
        mode: ``"gaussian"`` (centre-weighted blending) or ``"constant"`` (plain average).
        sw_batch_size: windows per ``predict_fn`` call.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        device: where the blended output lives (default: ``image``'s device); keep it on the CPU for
            large volumes predicted on a GPU.
        sw_device: where windows are predicted (default: ``image``'s device).
        progress: show MONAI's progress bar over window batches.

    Returns:
        ``(B, K, *S)`` float32 blended output.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim not in (4, 5):
        raise ValueError(f"sliding_window needs a (B, C, H, W) or (B, C, D, H, W) batch, got shape {tuple(image.shape)}")
    nd = image.ndim - 2
    roi = to_tuple(roi_size, nd, "roi_size")
    if any(r <= 0 for r in roi):
        raise ValueError(f"roi_size must be positive, got {roi_size!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    mode = look_up(mode, ("gaussian", "constant"), what="blend mode")
    if int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")

    def run(x: torch.Tensor) -> torch.Tensor:
        return predict_fn(x).float()

    out = sliding_window_inference(
        image,
        roi,
        int(sw_batch_size),
        run,
        overlap=float(overlap),
        mode=mode,
        sigma_scale=float(sigma_scale),
        padding_mode="constant",
        cval=0.0,
        sw_device=sw_device,
        device=device,
        progress=progress,
    )
    return torch.as_tensor(out).float()


def run_windows(
    fn: Window,
    image: torch.Tensor,
    valid: torch.Tensor,
    *,
    input_size: Sequence[int],
    direct: bool | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: torch.device | str = "cpu",
    out_device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``fn`` over one sample ``image`` ``(C, *S)`` with its validity ``(*S)``: ``(K, *S)`` float32.

    ``direct=True`` runs ``fn`` once on the whole sample; ``False`` blends Gaussian-weighted windows of
    ``input_size`` (MONAI); ``None`` runs it once when the sample fits ``input_size``, else by windows.
    """
    x = image.float()[None].to(device)
    xv = torch.cat([x, valid.bool()[None, None].to(x.dtype).to(device)], 1)
    if direct is None:
        direct = all(int(s) <= int(r) for s, r in zip(image.shape[1:], input_size))
    if direct:
        out = fn(xv).float()
        return out[0] if out_device is None else out[0].to(out_device)
    out = sliding_window(
        fn, xv, list(input_size), overlap=overlap, mode="gaussian", sw_batch_size=sw_batch_size,
        device=out_device, sw_device=device if out_device is not None else None, progress=progress,
    )  # fmt: skip
    return out[0]


def autocast_fn(fn: Callable[[torch.Tensor], torch.Tensor], precision: str, device: torch.device | str) -> Window:
    """``fn`` run under the precision's autocast (outputs float32)."""

    def run(xv: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return fn(xv).float()

    return run
