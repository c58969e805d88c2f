"""Image classification: one label (softmax) or several (independent sigmoids) per image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from unimae.core.errors import InputError
from unimae.core.tasks.base import Task

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ClassifyTask", "mixup_draw"]


def mixup_draw(n: int, alpha: float, gen: torch.Generator) -> tuple[float, torch.Tensor] | None:
    """Mixup for one batch of ``n``, drawn from the step's generator (so a resumed run repeats it): None on
    half of the batches (and for a batch of one), else ``(lam, permutation)`` with ``lam ~ Beta(alpha, alpha)``."""
    import numpy as np
    import torch

    if n < 2 or float(torch.rand((), generator=gen)) >= 0.5:
        return None
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.randperm(n, generator=gen)


class ClassifyTask(Task):
    """Classification of the domain's evaluation view (its deterministic resize / letterbox / crop)."""

    name = "classify"
    title = "Classification"
    app_rank = 1
    model_class_name = "MAEClassifier"
    batch_keys = ("label",)
    mixup = True
    image_labels = True
    symmetric = True
    help = "Class probabilities for the whole image (independent per finding for multi-label models)."
    summary_label = "class probabilities"

    def domain_class_names(self, plugin: Any) -> list[str]:
        return list(plugin.class_names)

    def model_args(self, model_cfg: Mapping[str, Any], *, num_classes: int, multi_label: bool) -> dict[str, Any]:
        given = model_cfg.get("num_classes")
        if given is not None and int(given) != num_classes:
            raise InputError(f"model.num_classes is {given} but the data have {num_classes} classes")
        if "multi_label" in model_cfg and bool(model_cfg["multi_label"]) != bool(multi_label):
            kind = "several labels per image" if multi_label else "one label per image"
            raise InputError(f"model.multi_label is {model_cfg['multi_label']} but the training data have {kind}")
        return {"num_classes": int(num_classes), "multi_label": bool(multi_label)}

    def monitors(self, multi_label: bool = False) -> tuple[str, ...]:
        if multi_label:
            return ("macro_auroc", "balanced_accuracy", "accuracy", "macro_f1", "loss")
        return ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc", "quadratic_kappa", "loss")

    def metadata(self, *, multi_label: bool, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"multi_label": bool(multi_label)}

    # -- the loss ----------------------------------------------------------------------------------
    def loss(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        *,
        multi_label: bool = False,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        mix: tuple[float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Cross-entropy (BCE for multi-label) with class weights and label smoothing; with a mixup draw
        ``(lam, perm)`` the targets are blended as the images were."""
        import torch.nn.functional as F

        logits = logits.float()
        w = None if weight is None else weight.to(logits.device)
        if multi_label:
            target = label.float()
        elif mix is None:
            return F.cross_entropy(logits, label.long().reshape(-1), weight=w, label_smoothing=label_smoothing)
        else:  # class probabilities, smoothed as F.cross_entropy smooths hard labels
            n = logits.shape[1]
            target = F.one_hot(label.long().reshape(-1), n).float() * (1.0 - label_smoothing) + label_smoothing / n
        if mix is not None:
            lam, perm = mix
            target = lam * target + (1.0 - lam) * target[perm.to(target.device)]
        if multi_label:
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=w)
        return F.cross_entropy(logits, target, weight=w)

    # -- inference ---------------------------------------------------------------------------------
    def logits(
        self,
        model: nn.Module,
        images: torch.Tensor,
        valid: torch.Tensor,
        *,
        channels: list[str] | None = None,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """``(B, K)`` float32 logits of a batch of evaluation views ``(B, C, *S)`` with validity ``(B, *S)``."""
        from unimae.core.precision import autocast

        extra = {"channels": channels} if channels is not None else {}
        with autocast(precision, device):
            return model(images.float().to(device), valid=valid.bool().to(device), **extra).float()

    @staticmethod
    def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
        """Class probabilities along the last axis: sigmoids (multi-label) or a softmax."""
        import torch

        return torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)

    def infer_settings(self, info: Mapping[str, Any]) -> dict[str, Any]:
        return {"multi_label": bool(info.get("multi_label", False))}

    def infer(
        self, model: nn.Module, image: torch.Tensor, valid: torch.Tensor, *, multi_label: bool = False,
        tta: str = "none", **kw: Any,
    ) -> torch.Tensor:  # fmt: skip
        """``(K,)`` class probabilities of one evaluation view (``channels``, ``precision``, ``device`` as
        for :meth:`logits`), averaged over the symmetries ``tta`` names (:mod:`unimae.core.tta`)."""
        from unimae.core.tta import averaged

        def run(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return self.probabilities(self.logits(model, x[None], v[None], **kw)[0], multi_label)

        return averaged(run, image, valid, tta, spatial_dims=image.ndim - 1, per_pixel=False)

    def csv_row(self, pred: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"predicted": ";".join(pred.predicted or [])}
        row.update({f"p_{n}": round(v, 6) for n, v in (pred.probabilities or {}).items()})
        return row

    def report(self, pred: Any) -> dict[str, Any]:
        out = {"probabilities": pred.probabilities, "predicted": pred.predicted, "multi_label": pred.multi_label}
        if pred.multi_label:
            out["threshold"] = pred.threshold
        return out
