"""Reading foreign weight files into a flat state dict, without running code from them.

``.safetensors`` are read without unpickling. ``.pth/.pt/.bin/.ckpt`` files are pickles and are read only
with ``allow_pickle=True``, and then only through ``torch.load(weights_only=True)``, which refuses
arbitrary objects (``argparse.Namespace`` and numpy scalars, found in MAE / timm training checkpoints,
are allowed). Training checkpoints nest the model under one of :data:`NEST_KEYS`; wrapper prefixes
(``module.``, ``model.`` ...) are stripped. :func:`save_as_safetensors` converts such a file once.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unimae.core.errors import InputError
from unimae.core.fileio import atomic_path

__all__ = ["PICKLE_SUFFIXES", "NEST_KEYS", "MAE_DECODER_KEY", "read_state_dict", "save_as_safetensors"]

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl")
#: keys under which training checkpoints nest the model's state dict, in order of preference
NEST_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "network")
#: the keys of an MAE decoder (``mask_token``, ``decoder_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``)
MAE_DECODER_KEY = re.compile(r"^(mask_token|decoder_(embed|blocks|norm|pred)\b.*)$")


def _file_kind(path: Path) -> str:
    """``"safetensors"``, ``"pickle"`` or ``"unknown"``, from the file's first bytes, then its suffix."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"  # u64 header length, then a JSON header
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle protocol 2+
        return "pickle"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"
    return "unknown"


def _safe_pickle_globals() -> list[Any]:
    """Benign non-tensor objects that MAE / timm training checkpoints carry besides the weights."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
        dtypes = getattr(np, "dtypes", None)
        if dtypes is not None:
            allowed += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType")
                        if hasattr(dtypes, n)]
    except Exception:  # numpy is optional here
        pass
    return allowed


def _load_pickle(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_safe_pickle_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        m = re.search(r"GLOBAL ([\w.]+)", str(err), flags=re.IGNORECASE)
        if m is None:  # bad opcodes: not a pickle torch wrote, or damaged
            raise InputError("is not a readable PyTorch file (corrupt, truncated or not a torch checkpoint)", path) from err
        raise InputError(
            f"refused to load: the pickle holds a non-tensor object ({m.group(1)}) that safe loading "
            "(torch.load weights_only=True) does not allow; extract the state dict in a trusted "
            "environment and save it as .safetensors",
            path,
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as err:
        first = (str(err).splitlines() or [""])[0].split(". ")[0][:100]
        detail = f": {first}" if len(first) > 8 else ""
        raise InputError(
            f"is not a readable PyTorch file (corrupt, truncated or not a torch checkpoint{detail})", path
        ) from err


def _unwrap(obj: Any, path: Path | None) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint (``{"model": ...}``, ``{"state_dict": ...}`` ...)."""
    for _ in range(6):
        if not isinstance(obj, Mapping):
            raise InputError(f"does not hold a state dict (found {type(obj).__name__})", path)
        nested = next((k for k in NEST_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        elif type(v).__module__ == "numpy" and hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0:
            out[str(k)] = torch.as_tensor(v)
    if not out:
        keys = ", ".join(map(str, list(obj)[:6]))
        raise InputError(f"holds no tensors (top-level keys: {keys or 'none'})", path)
    return out


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP / torch.compile / wrapper prefixes (``module.``, ``_orig_mod.``, ``backbone.`` ...)."""
    def strip(p: str, only_if_all: bool) -> bool:
        nonlocal sd
        hits = [k for k in sd if k.startswith(p)]
        if not hits or (only_if_all and len(hits) != len(sd)):
            return False
        new = {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}
        if len(new) != len(sd):  # stripping would collide: keep the keys as they are
            return False
        sd = new
        return True

    changed = True
    while changed:
        changed = any([strip(p, False) for p in ("module.", "_orig_mod.")])
        changed = changed or any(strip(p, True) for p in ("model.", "net.", "backbone.", "encoder.", "vit."))
    # a backbone beside a head (linear-probe checkpoints): ``backbone.blocks...`` + ``head.*``
    if any(k.startswith("backbone.blocks.") for k in sd):
        strip("backbone.", False)
    # a timm ViT nested as ``encoder.*`` beside a head (UniMAE's own ``encoder.*`` has no pos_embed)
    if "encoder.pos_embed" in sd and not any(MAE_DECODER_KEY.match(k) for k in sd):
        strip("encoder.", False)
    return sd


def read_state_dict(source: str | Path | Mapping[str, Any], *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a dict, a ``.safetensors`` file or (opt-in) a torch pickle.

    Nested checkpoints (``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}``) are unwrapped and
    ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``backbone.`` / ``encoder.`` / ``model.`` wrapper
    prefixes are removed. Bad files raise :class:`InputError` with a one-line message.
    """
    if isinstance(source, Mapping):
        return _strip_prefixes(_unwrap(source, None))
    path = Path(source)
    if not path.exists() and not path.suffix and path.with_name(path.name + ".safetensors").is_file():
        path = path.with_name(path.name + ".safetensors")  # a UniMAE checkpoint given by its stem
    if not path.exists():
        raise InputError("weights file not found", path)
    if path.is_dir():
        raise InputError("is a folder; expected a weights file (.safetensors, or .pth/.pt/.bin with allow_pickle)", path)
    kind = _file_kind(path)
    if kind == "safetensors":
        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0][:120]
            raise InputError(f"is not a readable safetensors file (corrupt or truncated: {first})", path) from err
    elif kind == "pickle":
        if not allow_pickle:
            raise InputError(
                "is a PyTorch pickle, and loading a pickle can run code; pass allow_pickle=True to load it "
                "with torch.load(weights_only=True), which refuses arbitrary objects, or convert it once "
                "to .safetensors (unimae.core.weight_import.save_as_safetensors)",
                path,
            )
        obj = _load_pickle(path)
    else:
        raise InputError("unknown weights format; expected .safetensors, or a PyTorch .pth/.pt/.bin file", path)
    return _strip_prefixes(_unwrap(obj, path))


def save_as_safetensors(
    source: str | Path | Mapping[str, Any], path: str | Path, *, allow_pickle: bool = False
) -> Path:
    """Convert a weights file (e.g. a ``.pth`` read with ``weights_only``) to ``.safetensors``, atomically.

    Only the (unwrapped, prefix-stripped) state dict is kept. Returns the written path.
    """
    sd = read_state_dict(source, allow_pickle=allow_pickle)
    clean = {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()}  # no shared storage
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp))
    return path
