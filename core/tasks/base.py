"""The task protocol: what one fine-tuning task (classify, segment, anomaly) is, in one object.

A task owns what differs between tasks and nothing a domain owns: the model class it trains and the
arguments it fixes, its loss, its inference on one sample (the one path that fine-tuning's validation,
``unimae evaluate``, ``unimae predict`` and the app all run), the validation metrics it can monitor,
the entries it adds to a checkpoint's JSON, and how the app names it. Everything else (reading,
preprocessing, writing results back) is the domain plugin's.

Tasks are stateless singletons, looked up by name in :mod:`unimae.core.tasks` (``get_task("segment")``).
The task modules import torch, MONAI and the models inside the methods that run them, never at the top:
the registry (names, titles, tab order, monitors, flags) then costs nothing to import, and the app and
``unimae --help`` keep starting without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Task", "label_nodata", "heat_nodata"]


def label_nodata(src_nodata: float | None, num_classes: int) -> float:
    """A nodata value for a class map: the source's when it is an integer that is not a class index."""
    if src_nodata is not None and math.isfinite(src_nodata) and float(src_nodata).is_integer():
        v = int(src_nodata)
        if (v < 0 or v >= num_classes) and -(2**31) <= v < 2**31:
            return float(v)
    return 255.0 if num_classes < 255 else 65535.0


def heat_nodata(src_nodata: float | None) -> float:
    """A nodata value for a float heat map (errors are >= 0): the source's when negative or NaN, else NaN."""
    if src_nodata is not None and (math.isnan(src_nodata) or src_nodata < 0):
        return float(src_nodata)
    return float("nan")


class Task:
    """One fine-tuning task. Subclasses set the class attributes and implement :meth:`infer`.

    Attributes:
        name: the config / checkpoint / CLI name (``task: segment``).
        title: what the app's tab and progress messages call it.
        app_rank: the app's tab order (lowest first).
        model_class_name: the class of the model it trains (the checkpoint's ``model_class``); the class
            itself is :attr:`model_class`.
        batch_keys: the target keys a training batch carries besides the image (``label``, ``mask``).
        loss_parts: the loss terms logged beside ``loss`` in ``metrics.csv``.
        per_pixel: its output lies on the image grid (a label or heat map): it runs by sliding windows
            and streams large rasters tile by tile; a per-image task runs once on the eval view.
        class_outputs: the model has one output per class name (the anomaly MAE has none).
        default_class_names: class names when a checkpoint lists none.
        whole_init: a MaskedAutoencoder init checkpoint fills the whole model, not only the encoder.
        layer_decay: layer-wise lr decay applies (the domain's recipe) when ``train.layer_decay`` is auto.
        mae_training: the model trains as in pretraining (the engine's MAE loss, previews and contract).
        calibrated: thresholds are calibrated on normal validation images after training.
        mixup: ``train.mixup`` applies (image-level targets that can be blended).
        image_labels: its targets are one label (or a multi-hot vector) per image.
        trains_on_normal: it trains on normal images only (lesions drawn into synthetic training data: none).
        symmetric: its output may be averaged over symmetries of the image (:mod:`unimae.core.tta`): ``infer``
            takes ``tta``.
        help: the app tab's one-line explanation (``{unit}``: "pixel" or "voxel of the volume").
        summary_label: the label of the app's summary beside the image.
        overlay_opacity: the app's default opacity of the result drawn over the image (None: nothing drawn).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    app_rank: ClassVar[int] = 0
    model_class_name: ClassVar[str] = ""
    batch_keys: ClassVar[tuple[str, ...]] = ()
    loss_parts: ClassVar[tuple[str, ...]] = ()
    per_pixel: ClassVar[bool] = False
    class_outputs: ClassVar[bool] = True
    default_class_names: ClassVar[tuple[str, ...]] = ()
    whole_init: ClassVar[bool] = False
    layer_decay: ClassVar[bool] = True
    mae_training: ClassVar[bool] = False
    calibrated: ClassVar[bool] = False
    mixup: ClassVar[bool] = False
    image_labels: ClassVar[bool] = False
    trains_on_normal: ClassVar[bool] = False
    symmetric: ClassVar[bool] = False
    help: ClassVar[str] = ""
    summary_label: ClassVar[str] = ""
    overlay_opacity: ClassVar[float | None] = None

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    @property
    def model_class(self) -> type[nn.Module]:
        """The model class it trains (imports the models)."""
        from unimae.core.checkpoint import model_classes

        return model_classes()[self.model_class_name]

    @property
    def pixel_labels(self) -> bool:
        """Its targets and outputs are a class per pixel (a label map)."""
        return self.per_pixel and self.class_outputs

    def domain_class_names(self, plugin: Any) -> list[str]:
        """The class names a domain plugin's synthetic data have for this task."""
        return list(self.default_class_names)

    # -- the model ---------------------------------------------------------------------------------
    def model_args(self, model_cfg: Mapping[str, Any], *, num_classes: int, multi_label: bool) -> dict[str, Any]:
        """The constructor arguments the task fixes from the data (checked against the ``model`` section)."""
        return {}

    def make_loss(self, class_names: Sequence[str], *, weight: torch.Tensor | None = None, **options: Any) -> nn.Module | None:
        """A loss module ``(logits, target, valid) -> {"loss", *loss_parts}`` built once per run, or None when
        the loss is a function of each batch (classification with mixup) or the model's own (the MAE)."""
        return None

    # -- metrics -----------------------------------------------------------------------------------
    def monitors(self, multi_label: bool = False) -> tuple[str, ...]:
        """The validation metrics (``val_`` prefixed in metrics.csv) a run can pick its best checkpoint by;
        the first is the default. All are higher-is-better but ``loss``."""
        raise NotImplementedError

    # -- the checkpoint ----------------------------------------------------------------------------
    def metadata(self, *, multi_label: bool, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        """The task's own entries of a checkpoint's JSON, besides task, domain, class names and contract."""
        return {"multi_label": False}

    # -- inference ---------------------------------------------------------------------------------
    def infer_settings(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of :meth:`infer` that a checkpoint's task entries fix (``info``: from
        :func:`~unimae.core.inference.task_metadata`), read the same way by validation and prediction."""
        return {}

    def infer(self, model: nn.Module, image: torch.Tensor, valid: torch.Tensor, **kw: Any) -> torch.Tensor:
        """The model's output on one model-space sample (``image`` ``(C, *S)``, ``valid`` ``(*S)``)."""
        raise NotImplementedError

    # -- what it reports and writes ----------------------------------------------------------------
    def result_maps(self, pred: Any) -> tuple[list[tuple[str, Any, str, float]], dict[str, Any] | None]:
        """The maps a prediction writes through its domain's writer, ``[(name, array, kind, nodata)]`` (``kind``:
        ``"labels"`` or ``"heat"``; files ``STEM_<name><suffix>``), and the overlay PNG's layer (``{"labels": map}``
        or ``{"heat": map}``; None: no overlay)."""
        return [], None

    def csv_row(self, pred: Any) -> dict[str, Any]:
        """The task's columns of a prediction's row in ``unimae predict``'s CSV summary."""
        return {}

    def report(self, pred: Any) -> dict[str, Any]:
        """The task's fields of a prediction's JSON report (``pred``: the predict layer's ``Prediction``)."""
        return {}
