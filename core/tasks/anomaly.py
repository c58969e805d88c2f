"""Anomaly detection: a masked autoencoder trained on normal images; its reconstruction error is the map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from unimae.core.tasks.base import Task, heat_nodata

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unimae.core.sliding import Window

__all__ = ["AnomalyTask", "ANOMALY_SETTINGS"]

#: the anomaly settings a checkpoint carries and their defaults (thresholds come from calibration)
ANOMALY_SETTINGS: dict[str, Any] = {
    "k": 4,
    "sigma": None,
    "top_fraction": 0.01,
    "image_threshold": None,
    "pixel_threshold": None,
    "fpr": 0.05,
}


class AnomalyTask(Task):
    """Per-pixel anomaly maps and an image score (the mean of the map's top fraction), thresholds calibrated
    on normal validation images at a false-positive rate."""

    name = "anomaly"
    title = "Anomaly map"
    app_rank = 2
    model_class_name = "MaskedAutoencoder"
    loss_parts = ("pixel", "gradient")
    per_pixel = True
    class_outputs = False
    default_class_names = ("normal", "anomaly")
    whole_init = True
    layer_decay = False
    mae_training = True
    calibrated = True
    trains_on_normal = True
    help = (
        "Reconstruction error of a masked autoencoder trained on normal images only: hot where the "
        "image departs from normal. The threshold outlines the flagged area (cyan) without re-running the model."
    )
    summary_label = "anomaly score"
    overlay_opacity = 0.6

    def monitors(self, multi_label: bool = False) -> tuple[str, ...]:
        return ("image_auroc", "loss")

    def metadata(self, *, multi_label: bool, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        s = dict(ANOMALY_SETTINGS)
        s.update(dict(settings or {}))
        for key in ("image_threshold", "pixel_threshold", "sigma"):
            if s[key] is not None:
                s[key] = float(s[key])
        s["k"] = int(s["k"])
        s["top_fraction"] = float(s["top_fraction"])
        s["fpr"] = float(s["fpr"])
        return {"multi_label": False, "anomaly": s}

    def window_fn(
        self, model: nn.Module, *, k: int = 4, sigma: float | None = None, norm_pix: bool = True,
        channels: list[str] | None = None, precision: str = "fp32", device: torch.device | str = "cpu",
    ) -> Window:  # fmt: skip
        """The anomaly map ``(n, 1, *roi)`` of image + validity windows ``(n, C + 1, *roi)``; windows of padding
        or nodata only are not run (0), and every window uses the same mask partition (seed 0)."""
        import torch

        from unimae.core.anomaly import anomaly_map
        from unimae.core.precision import autocast

        extra = {"channels": channels} if channels is not None else {}

        def amap(xv: torch.Tensor) -> torch.Tensor:
            x, v = xv[:, :-1], xv[:, -1] > 0.5
            out = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device=x.device)
            ok = v.flatten(1).any(1)
            if bool(ok.any()):
                idx = ok.nonzero()[:, 0]
                gen = torch.Generator(device=x.device).manual_seed(0)
                with autocast(precision, device):
                    m = anomaly_map(model, x[idx], valid=v[idx], k=int(k), sigma=sigma, norm_pix=norm_pix,
                                    generator=gen, **extra)  # fmt: skip
                out[idx, 0] = m.float()
            return out

        return amap

    def infer_settings(self, info: Mapping[str, Any]) -> dict[str, Any]:
        a = dict(info.get("anomaly") or {})
        # norm_pix: the target the MAE was trained with (checkpoints before it was recorded: the default, True)
        return {"k": int(a.get("k", 4)), "sigma": a.get("sigma"), "norm_pix": bool(a.get("norm_pix", True))}

    def infer(
        self,
        model: nn.Module,
        image: torch.Tensor,
        valid: torch.Tensor,
        *,
        input_size: Sequence[int],
        k: int = 4,
        sigma: float | None = None,
        norm_pix: bool = True,
        channels: list[str] | None = None,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
        **windows: Any,
    ) -> torch.Tensor:
        """The ``(*S)`` anomaly map of one model-space sample (2D: the evaluation view, 3D: the preprocessed
        volume; ``windows``: :func:`~unimae.core.sliding.run_windows`'s ``direct``, ``overlap``, ``sw_batch_size``, ...)."""
        from unimae.core.sliding import run_windows

        fn = self.window_fn(model, k=k, sigma=sigma, norm_pix=norm_pix, channels=channels, precision=precision, device=device)
        return run_windows(fn, image, valid, input_size=input_size, device=device, **windows)[0]

    @staticmethod
    def score(amap: torch.Tensor, valid: torch.Tensor, top_fraction: float) -> float:
        """The image score: the mean of the top ``top_fraction`` of the valid map values."""
        from unimae.core.anomaly import image_scores

        return float(image_scores(amap[None], valid[None], float(top_fraction))[0])

    @staticmethod
    def calibrate(normal_scores: torch.Tensor, normal_pixels: torch.Tensor, fpr: float) -> dict[str, Any]:
        """Image and pixel thresholds at false-positive rate ``fpr`` on normal images' scores and map values."""
        from unimae.core.anomaly import calibrate_threshold

        return {
            "image_threshold": calibrate_threshold(normal_scores, fpr),
            "pixel_threshold": calibrate_threshold(normal_pixels, fpr) if normal_pixels.numel() else None,
            "fpr": float(fpr),
        }

    def result_maps(self, pred: Any) -> tuple[list[tuple[str, Any, str, float]], dict[str, Any] | None]:
        if pred.heatmap is None:
            return [], None
        import numpy as np

        maps = [("heatmap", pred.heatmap.astype(np.float32), "heat", heat_nodata(pred.meta.get("nodata")))]
        if pred.anomaly_mask is not None:
            maps.append(("anomaly_mask", pred.anomaly_mask.astype(np.uint8), "labels", 255.0))
        return maps, {"heat": pred.heatmap}

    def csv_row(self, pred: Any) -> dict[str, Any]:
        return {"score": pred.score, "is_anomalous": pred.is_anomalous, "anomalous_fraction": pred.anomalous_fraction}

    def report(self, pred: Any) -> dict[str, Any]:
        heat = pred.heatmap
        return {
            "score": pred.score,
            "pixel_threshold": pred.threshold,
            "image_threshold": pred.image_threshold,
            "is_anomalous": pred.is_anomalous,
            "anomalous_fraction": pred.anomalous_fraction,
            "heatmap_max": float(heat.max()) if heat is not None and heat.size else None,
        }
