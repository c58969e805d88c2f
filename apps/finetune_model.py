"""The model of a fine-tuning run: the task model from the ``model`` section, its initialisation (a UniMAE
checkpoint or foreign weights) and the segmentation loss.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from unimae.apps.finetune_config import _NONE
from unimae.core.checkpoint import checkpoint_paths, read_checkpoint_meta
from unimae.core.errors import InputError
from unimae.core.model_config import build_configured, resolve_model_args
from unimae.core.model_config import init_architecture as core_init_architecture
from unimae.core.models import load_encoder_from_mae
from unimae.core.losses import MaskedDiceCELoss
from unimae.core.tasks import get_task
from unimae.domains.base import DomainPlugin

__all__ = [
    "MaskedDiceCELoss",
    "InitSource",
    "resolve_layer_decay",
    "resolve_init",
    "init_architecture",
    "load_init",
    "build_task_model",
]


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# the starting point
# ------------------------------------------------------------------------------------------------
@dataclass
class InitSource:
    """Where the weights come from: ``kind`` is ``"none"``, ``"unimae"`` (a UniMAE checkpoint with its JSON)
    or ``"foreign"`` (a weights file for :func:`~unimae.core.weight_import.import_weights`)."""

    kind: str
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_layer_decay(value: Any, plugin: DomainPlugin, task: str, init: InitSource) -> Any:
    """``train.layer_decay``, with ``auto`` (or unset) resolved: the domain's fine-tuning recipe (e.g. X-ray
    0.55) for a pretrained encoder; none from scratch (``init=none``: decay would all but freeze the random
    early blocks) and none for anomaly (the MAE keeps one lr). Any other value is kept."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        if init.kind == "none" or not get_task(task).layer_decay:
            return None
        return plugin.recipes.get("finetune", {}).get("layer_decay")
    return value


def resolve_init(value: Any) -> InitSource:
    """``init`` as given in the config: ``none``, a UniMAE checkpoint (``NAME``, ``NAME.json``,
    ``NAME.safetensors`` or a run folder holding ``model.json``), or a foreign weights file."""
    if value is None or str(value).strip().lower() in _NONE:
        return InitSource("none")
    p = Path(str(value)).expanduser()
    if p.is_dir():
        for name in ("model", "best", "checkpoints/last"):
            if (p / f"{name}.json").is_file():
                p = p / name
                break
        else:
            raise InputError("init folder holds no UniMAE checkpoint (model.json); give a checkpoint or weights file", p)
    tensor_path, json_path = checkpoint_paths(p)
    if json_path.is_file() and (p.suffix in ("", ".json", ".safetensors") or p == json_path):
        meta = read_checkpoint_meta(json_path)
        if meta.get("format") == "unimae-checkpoint":
            if not tensor_path.is_file():
                raise InputError(f"init checkpoint weights {tensor_path.name} not found beside its JSON", json_path)
            return InitSource("unimae", tensor_path.with_suffix(""), meta)
    if p.is_file():
        return InitSource("foreign", p)
    raise InputError("init checkpoint not found (give a UniMAE checkpoint, a weights file, or init=none)", p)


def init_architecture(init: InitSource, task: str) -> dict[str, Any]:
    """The constructor arguments a UniMAE init checkpoint fixes (the encoder's; for anomaly the whole MAE):
    :func:`unimae.core.model_config.init_architecture`."""
    if init.kind != "unimae":
        return {}
    t = get_task(task)
    whole = t.whole_init and init.meta.get("model_class") == t.model_class.__name__
    return core_init_architecture(init.meta, whole=whole)


def load_init(model: nn.Module, init: InitSource, *, task: str, allow_pickle: bool = False) -> dict[str, Any]:
    """Load the starting weights into ``model`` in place; returns the ``init`` record for the checkpoint JSON.

    A UniMAE checkpoint fills the encoder (anomaly: the whole MAE) and must fit exactly; foreign
    weights go through :func:`~unimae.core.weight_import.import_weights` (position embeddings, channels
    and patch size adapted) and at least one tensor must load.
    """
    from unimae.core.checkpoint import load_tensors

    if init.kind == "none":
        return {"kind": "none", "summary": "random initialisation (init=none)"}
    if init.kind == "unimae":
        tensors, meta = load_tensors(init.path, device="cpu")
        src_class = meta.get("model_class")
        record: dict[str, Any] = {"kind": "unimae", "path": str(init.path), "model_class": src_class,
                                  "step": meta.get("step"), "task": meta.get("task")}  # fmt: skip
        t = get_task(task)
        whole = t.whole_init and src_class == t.model_class.__name__
        if whole:
            result = model.load_state_dict(tensors, strict=False)
            missing, unused = sorted(result.missing_keys), sorted(result.unexpected_keys)
            what = "the whole masked autoencoder"
            fresh = [k for k in missing if k.startswith("decoder_logvar.")]  # a variance head added here
            unused = [k for k in unused if not k.startswith("decoder_logvar.")]  # or dropped here
            if fresh:
                missing = [k for k in missing if k not in fresh]
                what += " (the variance head starts fresh)"
        else:
            enc_missing, enc_unused = load_encoder_from_mae(model, tensors)
            missing, unused = [f"encoder.{k}" for k in enc_missing], [f"encoder.{k}" for k in enc_unused]
            what = f"the encoder of a {src_class}" + (" (the MAE decoder starts fresh)" if t.whole_init else "")
        if missing or (whole and unused):
            raise InputError(
                f"init checkpoint does not fit the model (missing {missing[:4]}, unused {unused[:4]})", init.path
            )
        loaded = sum(1 for k in tensors if k in model.state_dict()) if whole else sum(
            1 for k in model.state_dict() if k.startswith("encoder.")
        )
        summary = f"{what} from {init.path} (step {meta.get('step')}): {loaded} tensors loaded"
        record.update(loaded=loaded, missing=missing, unused=unused, summary=summary)
        return record

    from unimae.core.weight_import import import_weights

    try:
        report = import_weights(model, init.path, allow_pickle=allow_pickle)
    except InputError as err:
        if "pickle" in str(err) and not allow_pickle:
            raise InputError(
                "init is a PyTorch pickle, and loading a pickle can run code; set init_allow_pickle=true to load it "
                "with torch.load(weights_only=True), or convert it to .safetensors first",
                init.path,
            ) from None
        raise
    if not any(k.startswith("encoder.") for k in report.loaded):
        raise InputError(f"no encoder weights of this {report.layout} file fit the model ({report.summary().splitlines()[0]})", init.path)
    return {"kind": "foreign", "path": str(init.path), "layout": report.layout, "summary": report.summary(),
            "report": report.to_dict()}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def _resolve_channels(plugin: DomainPlugin, value: Any) -> list[dict] | None:
    from unimae.apps.pretrain import resolve_channels

    return resolve_channels(plugin, value)


def build_task_model(
    task: str,
    model_cfg: Mapping[str, Any],
    plugin: DomainPlugin,
    *,
    num_classes: int,
    multi_label: bool,
    data_channels: Sequence[Mapping[str, Any]] | None,
    data_chans: int,
    arch: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, list[str]]:
    """The task's model from the ``model`` section (``preset`` expanded first, explicit keys win, then
    the init checkpoint's architecture ``arch`` wins: :func:`~unimae.core.model_config.resolve_model_args`,
    shared with pretraining). Returns the model and notes about overridden keys."""
    t = get_task(task)
    cls = t.model_class
    m = dict(model_cfg)
    fixed = t.model_args(m, num_classes=num_classes, multi_label=multi_label)
    kwargs, notes = resolve_model_args(
        cls, m, domain=plugin.name, spatial_dims=plugin.spatial_dims, data_channels=data_channels,
        data_chans=data_chans, resolve_channels=lambda value: _resolve_channels(plugin, value), arch=arch,
    )  # fmt: skip
    kwargs.update(fixed)
    return build_configured(cls, kwargs), notes


def _no_weight_decay(model: nn.Module) -> set[str]:
    own = getattr(model, "no_weight_decay", None)
    if callable(own):
        return set(own())
    encoder = getattr(model, "encoder", None)
    return {f"encoder.{n}" for n in encoder.no_weight_decay()} if encoder is not None else set()
