"""Semantic segmentation: a class per pixel (voxel), by Gaussian-blended sliding windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from unimae.core.errors import InputError
from unimae.core.tasks.base import Task, label_nodata

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unimae.core.losses import MaskedDiceCELoss
    from unimae.core.sliding import Window

__all__ = ["SegmentTask"]


class SegmentTask(Task):
    """Segmentation at the preprocessed resolution; results go back to the source grid through the domain."""

    name = "segment"
    title = "Segmentation"
    app_rank = 0
    model_class_name = "MAESegmenter"
    batch_keys = ("mask",)
    loss_parts = ("dice", "ce")
    per_pixel = True
    symmetric = True
    help = "A class for every {unit}, drawn over the image with a legend. Opacity changes the drawing only."
    summary_label = "legend"
    overlay_opacity = 0.5

    def domain_class_names(self, plugin: Any) -> list[str]:
        return list(plugin.seg_class_names)

    def model_args(self, model_cfg: Mapping[str, Any], *, num_classes: int, multi_label: bool) -> dict[str, Any]:
        given = model_cfg.get("num_classes")
        if given is not None and int(given) != num_classes:
            raise InputError(f"model.num_classes is {given} but the data have {num_classes} classes")
        return {"num_classes": int(num_classes)}

    def monitors(self, multi_label: bool = False) -> tuple[str, ...]:
        return ("mean_dice", "mean_iou", "pooled_dice")

    def make_loss(
        self,
        class_names: Sequence[str],
        *,
        weight: torch.Tensor | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
        **options: Any,
    ) -> MaskedDiceCELoss:
        """The training loss: Dice + CE over valid pixels, the Dice term without a leading background class."""
        from unimae.core.losses import MaskedDiceCELoss
        from unimae.core.metrics_segment import is_background

        return MaskedDiceCELoss(
            len(class_names), include_background=not is_background(class_names[0]), weight=weight,
            lambda_dice=dice_weight, lambda_ce=ce_weight, label_smoothing=label_smoothing,
        )  # fmt: skip

    def window_fn(
        self, model: nn.Module, *, channels: list[str] | None = None, precision: str = "fp32",
        device: torch.device | str = "cpu",
    ) -> Window:  # fmt: skip
        """Class probabilities ``(n, K, *roi)`` of image + validity windows ``(n, C + 1, *roi)``."""
        import torch

        from unimae.core.sliding import autocast_fn

        extra = {"channels": channels} if channels is not None else {}

        def probs(xv: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(xv[:, :-1], valid=xv[:, -1] > 0.5, **extra).float(), 1)

        return autocast_fn(probs, precision, device)

    def infer(
        self,
        model: nn.Module,
        image: torch.Tensor,
        valid: torch.Tensor,
        *,
        input_size: Sequence[int],
        channels: list[str] | None = None,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
        tta: str = "none",
        **windows: Any,
    ) -> torch.Tensor:
        """``(K, *S)`` class probabilities of one model-space sample (``windows``: :func:`~unimae.core.sliding.run_windows`'s
        ``direct``, ``overlap``, ``sw_batch_size``, ``out_device``, ``progress``), averaged over the symmetries
        ``tta`` names, each mapped back (:mod:`unimae.core.tta`)."""
        from unimae.core.sliding import run_windows
        from unimae.core.tta import averaged

        fn = self.window_fn(model, channels=channels, precision=precision, device=device)

        def run(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return run_windows(fn, x, v, input_size=input_size, device=device, **windows)

        return averaged(run, image, valid, tta, spatial_dims=image.ndim - 1, per_pixel=True)

    def result_maps(self, pred: Any) -> tuple[list[tuple[str, Any, str, float]], dict[str, Any] | None]:
        if pred.label_map is None:
            return [], None
        nodata = label_nodata(pred.meta.get("nodata"), len(pred.class_names))
        return [("seg", pred.label_map, "labels", nodata)], {"labels": pred.label_map}

    def csv_row(self, pred: Any) -> dict[str, Any]:
        return {f"fraction_{n}": round(v, 6) for n, v in (pred.class_fractions or {}).items()}

    def report(self, pred: Any) -> dict[str, Any]:
        return {"class_fractions": pred.class_fractions}
