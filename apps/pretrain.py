"""``unimae pretrain``: build the model and data a config describes, then run the engine.

Config sections map 1:1 onto constructor arguments (see :mod:`unimae.core.config`):

``model``
    :class:`~unimae.core.mae.MaskedAutoencoder` arguments; ``preset`` (micro/tiny/small/base/large)
    expands :data:`~unimae.core.presets.MODEL_PRESETS` first and explicit keys win. ``channels`` may be
    a list of ``{name, wavelength}``, a band-preset name the domain resolves (``sentinel2_l1c``), or null
    (taken from the data). ``spatial_dims`` and, in fixed mode, ``in_chans`` default to the data's.
``data``
    ``train`` / ``val`` (a folder or CSV manifest; null = none, ``synthetic`` = the domain's generator;
    ``train: null`` trains on synthetic data), ``input_size``, ``num_samples`` / ``num_val_samples``
    (synthetic only), plus any keyword the domain's ``augment``, ``synthetic``, ``read`` or
    ``preprocess`` takes (e.g. ``window`` for CT, ``crop_scale`` for X-ray and fundus, ``bands``).
``train``
    :class:`~unimae.core.engine.TrainConfig` fields.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from unimae.core.config import check_keys, run_settings
from unimae.core.engine import TrainConfig, Trainer, seed_everything
from unimae.core.errors import InputError
from unimae.core.mae import MaskedAutoencoder
from unimae.core.model_config import build_configured, resolve_model_args
from unimae.core.model_config import model_keys as model_arg_keys
from unimae.domains.datasets import local_dataset

__all__ = ["DATA_KEYS", "model_keys", "data_keys", "resolve_channels", "build_datasets", "build_model", "pretrain"]

#: data keys handled here (the rest go to the domain plugin)
DATA_KEYS = ("train", "val", "input_size", "num_samples", "num_val_samples", "cache_synthetic")
_DEFAULT_INPUT = {2: 224, 3: 96}
#: arguments the protocol itself fills in (not config keys)
_PROTOCOL_ARGS = {"self", "train", "input_size", "n", "seed", "size", "path", "sample", "source", "split", "like",
                  "plugin"}  # fmt: skip


def model_keys() -> list[str]:
    """``preset`` plus every :class:`MaskedAutoencoder` constructor argument (the encoder's fields included)."""
    return model_arg_keys(MaskedAutoencoder)


def named_params(fn: Callable, protocol: Collection[str] = _PROTOCOL_ARGS) -> list[str]:
    """The names ``fn`` takes by keyword, but for those in ``protocol`` (filled in by the caller, not a config)."""
    return [
        n
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in protocol
    ]


def data_keys(
    plugin: Any, *, handled: Sequence[str] = DATA_KEYS, protocol: Collection[str] = _PROTOCOL_ARGS
) -> list[str]:
    """``handled`` (default :data:`DATA_KEYS`) plus the keyword arguments of the plugin's readers, transforms
    and generator and of the dataset reader, but for the arguments the protocol fills in (``protocol``)."""
    keys = dict.fromkeys(handled)
    for fn in (plugin.augment_builder, plugin.synthetic, plugin.read, plugin.preprocess, local_dataset):
        keys.update(dict.fromkeys(named_params(fn, protocol)))
    return list(keys)


def resolve_channels(plugin: Any, value: Any) -> list[dict] | None:
    """``model.channels`` as ``[{"name", "wavelength"}]``: a list as given, a preset name via the domain, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [dict(c) for c in plugin.preset_channels(value)]  # the domain's band presets (or a one-line error)
    if isinstance(value, (list, tuple)):
        out = []
        for c in value:
            if isinstance(c, str):
                out.append({"name": c, "wavelength": None})
            elif isinstance(c, Mapping) and "name" in c:
                out.append({"name": str(c["name"]), "wavelength": c.get("wavelength")})
            else:
                raise InputError(f"model.channels entries must be names or {{name, wavelength}} mappings, got {c!r}")
        return out
    raise InputError(f"model.channels must be a preset name, a list or null, got {value!r}")


def _is_source(value: Any) -> bool:
    return value is not None and str(value).strip().lower() not in ("", "none", "null")


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"data.{name} must be a positive integer, got {value!r}")
    return value


def build_datasets(plugin: Any, data: Mapping[str, Any], seed: int) -> tuple[Dataset, Dataset | None]:
    """The training dataset and the optional validation dataset of a ``data`` section."""
    d = dict(data)
    train_src = d.pop("train", None)
    val_src = d.pop("val", None)
    input_size = d.pop("input_size", _DEFAULT_INPUT[plugin.spatial_dims])
    num_samples = _count("num_samples", d.pop("num_samples", 256))
    num_val = _count("num_val_samples", d.pop("num_val_samples", 64))
    train_src = train_src if _is_source(train_src) else None
    common = dict(input_size=input_size, seed=seed, **d)
    train = plugin.train_dataset(train_src, split="train", num_samples=num_samples, **common)
    val = None
    if _is_source(val_src):
        val = plugin.train_dataset(val_src, split="val", num_samples=num_val, **common)
    elif train_src is not None and float(d.get("val_fraction") or 0.0) > 0.0:
        val = plugin.train_dataset(train_src, split="val", num_samples=num_val, **common)
    return train, val


def _first_sample(dataset: Dataset) -> tuple[Any, dict[str, Any]]:
    """The first training item and the metadata of its source sample (when the dataset exposes it)."""
    item = dataset[0]
    samples = getattr(dataset, "samples", None)
    meta: dict[str, Any] = {}
    if samples is not None:
        first = samples[0]
        meta = dict(getattr(first, "meta", {}) or {})
    return item, meta


def build_model(
    model: Mapping[str, Any], plugin: Any, *, data_channels: Sequence[Mapping[str, Any]] | None, data_chans: int
) -> MaskedAutoencoder:
    """A :class:`MaskedAutoencoder` from the ``model`` section (preset ``base`` unless named), checked against
    the data's channels (:func:`~unimae.core.model_config.resolve_model_args`, shared with fine-tuning)."""
    kwargs, _ = resolve_model_args(
        MaskedAutoencoder, model, domain=plugin.name, spatial_dims=plugin.spatial_dims, data_channels=data_channels,
        data_chans=data_chans, resolve_channels=lambda value: resolve_channels(plugin, value), default_preset="base",
    )  # fmt: skip
    return build_configured(MaskedAutoencoder, kwargs)


def pretrain(
    cfg: Mapping[str, Any], *, on_step: Callable[[int, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run ``unimae pretrain`` for a loaded config (see :func:`unimae.core.config.load_config`).

    Returns the engine's summary ``{"step", "loss", "model", "checkpoint", "out_dir", "rank"}``.
    """
    from unimae.core import distributed as du
    from unimae.domains import domain_names, get_domain

    if not cfg.get("domain"):
        raise InputError(f"the config names no domain (set domain: {' | '.join(domain_names())})")
    plugin = get_domain(str(cfg["domain"]))
    model_cfg, data_cfg = dict(cfg.get("model") or {}), dict(cfg.get("data") or {})
    check_keys("model", model_cfg, model_keys())
    check_keys("data", data_cfg, data_keys(plugin))
    tcfg = TrainConfig.from_dict(cfg.get("train"))
    seed, resume = run_settings(cfg)

    du.init_distributed(tcfg.device)
    try:
        seed_everything(seed)  # the same initial weights on every rank
        train_ds, val_ds = build_datasets(plugin, data_cfg, seed)
        if len(train_ds) == 0:  # type: ignore[arg-type]
            raise InputError("the training data is empty")
        item, meta = _first_sample(train_ds)
        data_channels = meta.get("channels")
        model = build_model(model_cfg, plugin, data_channels=data_channels, data_chans=int(item["image"].shape[0]))
        spectral = model.encoder.channel_mode == "spectral"
        names = [str(c["name"]) for c in data_channels] if data_channels else None
        band_names = names if spectral and names and names != [c["name"] for c in model.channels] else None
        contract = {
            "domain": plugin.name,
            "modality": meta.get("modality", plugin.modality),
            "orientation": meta.get("orientation"),
            "spatial_dims": model.spatial_dims,
            "channels": [c for c in model.channels],
            "data_channels": names,
            "patch_size": list(model.patch_size),
            "input_size": list(item["image"].shape[1:]),
            "normalization": meta.get("normalization", getattr(plugin, "normalization", None)),
            "preprocess": {k: v for k, v in data_cfg.items() if k in named_params(plugin.preprocess)},
            "mask_ratio": model.mask_ratio,
            "masking": model.masking,
            "norm_pix": tcfg.norm_pix,
        }
        if tcfg.progress and du.is_main_process():
            source = f"{data_cfg['train']}" if _is_source(data_cfg.get("train")) else "synthetic data"
            val = f", validation on {data_cfg['val']}" if val_ds is not None and _is_source(data_cfg.get("val")) else ""
            print(f"unimae: {plugin.name} pretraining on {source} ({len(train_ds)} samples, "  # type: ignore[arg-type]
                  f"input {'x'.join(str(s) for s in contract['input_size'])}){val}", file=sys.stderr)  # fmt: skip
        trainer = Trainer(
            model, train_ds, config=tcfg, out_dir=Path(str(cfg["out_dir"])), val_data=val_ds, seed=seed,
            contract=contract, resume=resume, run_config=dict(cfg), on_step=on_step, channels=band_names,
        )  # fmt: skip
        return trainer.fit()
    finally:
        du.cleanup()
