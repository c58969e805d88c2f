"""Inference building blocks, domain-agnostic: the task-checkpoint contract, sliding windows and streamed tiles.

* :func:`task_metadata` / :func:`parse_task_metadata`: the one definition of what a task checkpoint's
  JSON carries (task, domain, classes, input contract, anomaly thresholds), shared by the fine-tuning
  writer and the predict layer.
* :func:`sliding_window` (from :mod:`unimae.core.sliding`): MONAI ``sliding_window_inference`` with
  Gaussian blending for 2D/3D segmentation probabilities and anomaly maps larger than the model's input size.
* :func:`stream_blend`: tiles a very large 2D raster on a regular grid, predicts each tile (with
  context), blends overlaps with linear ramps and hands each finished block to a callback as soon as
  no later tile can touch it. Peak memory is one tile plus a strip ``overlap`` rows high across the
  scene width, never the scene area.
* :class:`TopFraction`: the exact streaming mean of the top fraction of values (the anomaly image score
  of :func:`~unimae.core.anomaly.image_scores`) over a scene seen block by block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from unimae.core.errors import InputError, look_up
from unimae.core.patch_embed import to_tuple
from unimae.core.sliding import sliding_window
from unimae.core.tasks import ANOMALY_SETTINGS, TASKS, all_tasks, get_task

__all__ = [
    "TASKS",
    "BLEND_MODES",
    "make_contract",
    "task_metadata",
    "parse_task_metadata",
    "sliding_window",
    "tile_grid",
    "ramp_profile",
    "stream_blend",
    "TopFraction",
]

BLEND_MODES = ("linear", "constant")
_ANOMALY_DEFAULTS: dict[str, Any] = ANOMALY_SETTINGS  # the old name


# ------------------------------------------------------------------------------------------------
# the task-checkpoint contract
# ------------------------------------------------------------------------------------------------
def make_contract(
    *,
    domain: str,
    spatial_dims: int,
    channels: Sequence[Mapping[str, Any]],
    patch_size: int | Sequence[int],
    input_size: int | Sequence[int],
    normalization: Mapping[str, Any] | None,
    preprocess: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``contract`` entry of a checkpoint: what the model expects as input.

    Args:
        domain: plugin name (``"ct"``, ``"fundus"``, ``"xray"``, ``"multispectral"``).
        spatial_dims: 2 or 3.
        channels: ``[{"name", "wavelength"}]`` of the model's input channels.
        patch_size: the encoder's patch size.
        input_size: the training input size; also the sliding-window region of interest.
        normalization: ``meta["normalization"]`` of the training data (recorded, for humans and checks).
        preprocess: keyword arguments of ``plugin.preprocess`` that reproduce the training
            preprocessing (e.g. ``{"window": "soft_tissue", "spacing": [1.5, 1.5, 1.5]}``).
    """
    sd = int(spatial_dims)
    return {
        "domain": str(domain),
        "spatial_dims": sd,
        "channels": [{"name": str(c["name"]), "wavelength": c.get("wavelength")} for c in channels],
        "patch_size": patch_size if isinstance(patch_size, int) else [int(p) for p in patch_size],
        "input_size": list(to_tuple(input_size, sd, "input_size")),
        "normalization": dict(normalization) if normalization is not None else None,
        "preprocess": dict(preprocess or {}),
    }


def task_metadata(
    *,
    task: str,
    domain: str,
    class_names: Sequence[str],
    contract: Mapping[str, Any],
    multi_label: bool = False,
    anomaly: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The task entries of a fine-tuned checkpoint's JSON, for ``save_checkpoint(path, model, **task_metadata(...))``.

    Args:
        task: ``"classify"``, ``"segment"`` or ``"anomaly"``.
        domain: plugin name.
        class_names: classify: the classes; segment: the classes with background at 0; anomaly:
            ``["normal", "anomaly"]`` (the default when empty).
        contract: from :func:`make_contract`.
        multi_label: classification logits are independent sigmoids.
        anomaly: anomaly settings and calibration: ``k``, ``sigma``, ``top_fraction``,
            ``image_threshold``, ``pixel_threshold``, ``fpr`` (missing keys take the defaults).

    Returns:
        ``{"task", "domain", "class_names", "multi_label", "contract"[, "anomaly"]}``.
    """
    t = get_task(task)
    names = [str(c) for c in class_names] or list(t.default_class_names)
    if not names:
        raise ValueError(f"a {t.name} checkpoint needs class_names")
    own = t.metadata(multi_label=bool(multi_label), settings=anomaly)
    out: dict[str, Any] = {
        "task": t.name,
        "domain": str(domain),
        "class_names": names,
        "multi_label": bool(own.pop("multi_label", False)),
        "contract": dict(contract),
    }
    out.update(own)
    return out


def parse_task_metadata(meta: Mapping[str, Any], path: Any = None) -> dict[str, Any]:
    """Validate a checkpoint's JSON as a task model and return its task entries, filled in.

    A ``MaskedAutoencoder`` checkpoint without a ``task`` (a pretraining checkpoint) is read as an
    anomaly model without calibrated thresholds. Raises :class:`InputError` naming what is missing.
    """
    contract = meta.get("contract")
    if not isinstance(contract, Mapping) or not contract:
        raise InputError("checkpoint has no input 'contract' (domain, channels, input size); cannot run it", path)
    task = meta.get("task")
    model_class = meta.get("model_class")
    if task is None:  # a pretraining checkpoint: the task whose model it is, if that task has no classes to learn
        found = [t.name for t in all_tasks() if t.model_class.__name__ == model_class and not t.class_outputs]
        if not found:
            raise InputError(f"checkpoint has no 'task' (model {model_class!r}); expected a fine-tuned task model", path)
        task = found[0]
    if task not in TASKS:
        raise InputError(f"checkpoint task {task!r} is not one of {', '.join(TASKS)}", path)
    t = get_task(task)
    expected = t.model_class.__name__
    if model_class != expected:
        raise InputError(f"a {task} checkpoint must hold a {expected}, this one holds {model_class!r}", path)
    domain = meta.get("domain") or contract.get("domain")
    if not domain:
        raise InputError("checkpoint names no 'domain'", path)
    for key in ("spatial_dims", "input_size"):
        if contract.get(key) is None:
            raise InputError(f"checkpoint contract lacks {key!r}", path)
    sd = int(contract["spatial_dims"])
    try:
        input_size = list(to_tuple(contract["input_size"], sd, "input_size"))
    except ValueError as err:
        raise InputError(f"checkpoint contract has a bad input_size: {err}", path) from err
    names = [str(c) for c in meta.get("class_names") or []] or list(t.default_class_names)
    if not names:
        raise InputError("checkpoint lists no 'class_names'", path)
    info = task_metadata(
        task=task,
        domain=str(domain),
        class_names=names,
        contract={**contract, "spatial_dims": sd, "input_size": input_size, "preprocess": dict(contract.get("preprocess") or {})},
        multi_label=bool(meta.get("multi_label", False)),
        anomaly=meta.get("anomaly"),
    )
    return info


# ------------------------------------------------------------------------------------------------
# streamed tiles for very large 2D rasters
# ------------------------------------------------------------------------------------------------
def tile_grid(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Blend regions ``(start, end)`` along one axis: a regular grid with stride ``tile - overlap``.

    The last region is clipped at ``length`` (its prediction still comes from a full-size window
    shifted inside the raster, see :func:`stream_blend`). Neighbouring regions share exactly
    ``overlap`` pixels; with ``overlap <= tile / 2`` no pixel lies in more than two regions.
    """
    length, tile, overlap = int(length), int(tile), int(overlap)
    if length <= 0 or tile <= 0:
        raise ValueError(f"length and tile must be positive, got length={length}, tile={tile}")
    if not 0 <= 2 * overlap <= tile:
        raise ValueError(f"overlap must be between 0 and half the tile ({tile // 2}), got {overlap}")
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [(i * stride, min(i * stride + tile, length)) for i in range(n)]


def ramp_profile(size: int, before: int, after: int, mode: str = "linear") -> np.ndarray:
    """A 1D blending weight of ``size`` samples: ramps up over ``before`` and down over ``after`` samples.

    Linear ramps ``(k + 1) / (overlap + 1)`` are complementary: two neighbours sharing ``overlap``
    pixels sum to exactly 1 there. ``mode="constant"`` gives all ones (plain averaging).
    """
    w = np.ones(int(size), dtype=np.float32)
    if mode == "constant":
        return w
    if before > 0:
        w[:before] = np.minimum(w[:before], (np.arange(before, dtype=np.float32) + 1.0) / (before + 1.0))
    if after > 0:
        w[size - after :] = np.minimum(w[size - after :], (np.arange(after, 0, -1, dtype=np.float32)) / (after + 1.0))
    return w


Window = tuple[int, int, int, int]  # (row_off, col_off, height, width)


def stream_blend(
    shape: Sequence[int],
    predict: Callable[[Window], tuple[np.ndarray | None, np.ndarray]],
    emit: Callable[[int, int, np.ndarray, np.ndarray], None],
    *,
    channels: int,
    tile: int | Sequence[int] = 512,
    overlap: int | Sequence[int] = 64,
    mode: str = "linear",
    on_tile: Callable[[int, int], None] | None = None,
) -> None:
    """Predict a large 2D raster tile by tile, blend the overlaps, emit finished blocks row-major.

    Tiles lie on a regular grid (:func:`tile_grid`); each tile's prediction comes from a full
    ``tile``-sized window (shifted back inside the raster at the far edges, so edge tiles keep their
    context) and is blended with its neighbours by complementary linear ramps over the shared
    ``overlap`` pixels. A block is handed to ``emit`` as soon as every tile that covers it is done,
    so only one tile, one ``tile x overlap`` strip and one ``overlap``-high strip across the raster
    width are ever held: peak memory does not depend on the raster's area.

    Args:
        shape: ``(height, width)`` of the raster.
        predict: ``window -> (values, valid)`` for a window ``(row_off, col_off, height, width)``:
            ``values`` ``(channels, height, width)`` float32 (or None when nothing in the window is
            valid: no prediction is made there) and ``valid`` ``(height, width)`` bool.
        emit: ``(row_off, col_off, values, valid)`` for each finished block; ``values`` is
            ``(channels, h, w)`` float32 (0 where no tile predicted), ``valid`` ``(h, w)`` bool.
            Blocks are emitted in row-major order and tile the raster exactly once.
        channels: number of output channels of ``predict``.
        tile: tile (window) size, int or ``(rows, cols)``.
        overlap: pixels shared by neighbouring tiles, at most half the tile.
        mode: ``"linear"`` ramps or ``"constant"`` (plain average of the overlapping tiles).
        on_tile: ``(done, total)`` after each tile, e.g. to drive a progress bar.
    """
    look_up(mode, BLEND_MODES, what="blend mode")
    height, width = (int(s) for s in shape)
    th, tw = to_tuple(tile, 2, "tile")
    oh, ow = to_tuple(overlap, 2, "overlap")
    th, tw = min(th, height), min(tw, width)
    oh, ow = min(oh, th // 2), min(ow, tw // 2)
    rows, cols = tile_grid(height, th, oh), tile_grid(width, tw, ow)
    c = int(channels)
    total, done_tiles = len(rows) * len(cols), 0
    top_acc = top_w = None  # pending rows shared with the previous band: (C, n, W), (n, W)
    for i, (r0, r1) in enumerate(rows):
        nr0 = rows[i + 1][0] if i + 1 < len(rows) else r1  # rows [r0, nr0) are final after this band
        wr = ramp_profile(r1 - r0, oh if i > 0 else 0, (r1 - nr0) if i + 1 < len(rows) else 0, mode)
        next_acc = np.zeros((c, r1 - nr0, width), dtype=np.float32)
        next_w = np.zeros((r1 - nr0, width), dtype=np.float32)
        n_top = 0 if top_acc is None else top_acc.shape[1]
        left_acc = left_w = None
        added_to = 0  # columns of the top strip already added (they travel in the left strip)
        for j, (c0, c1) in enumerate(cols):
            nc0 = cols[j + 1][0] if j + 1 < len(cols) else c1
            win_r = min(r0, max(0, height - th))
            win_c = min(c0, max(0, width - tw))
            values, valid_win = predict((win_r, win_c, th, tw))
            sr, sc = slice(r0 - win_r, r1 - win_r), slice(c0 - win_c, c1 - win_c)
            valid = np.asarray(valid_win, dtype=bool)[sr, sc]
            h, w = r1 - r0, c1 - c0
            if values is None:
                acc = np.zeros((c, h, w), dtype=np.float32)
                wgt = np.zeros((h, w), dtype=np.float32)
            else:
                values = np.asarray(values, dtype=np.float32)
                if values.shape != (c, th, tw):
                    raise ValueError(f"predict returned shape {values.shape}, expected {(c, th, tw)}")
                wc = ramp_profile(w, ow if j > 0 else 0, (c1 - nc0) if j + 1 < len(cols) else 0, mode)
                wgt = wr[:, None] * wc[None, :]
                acc = values[:, sr, sc] * wgt[None]
            if left_acc is not None:
                lw = left_acc.shape[2]
                acc[:, :, :lw] += left_acc
                wgt[:, :lw] += left_w
            if n_top:
                a = max(added_to, c0)
                acc[:, :n_top, a - c0 :] += top_acc[:, :, a:c1]
                wgt[:n_top, a - c0 :] += top_w[:, a:c1]
                added_to = c1
            k = nc0 - c0  # columns [c0, nc0) are final for this band
            if r1 > nr0:
                next_acc[:, :, c0:nc0] = acc[:, nr0 - r0 :, :k]
                next_w[:, c0:nc0] = wgt[nr0 - r0 :, :k]
            block_w = wgt[: nr0 - r0, :k]
            block = np.divide(
                acc[:, : nr0 - r0, :k], block_w[None], out=np.zeros((c, nr0 - r0, k), np.float32), where=block_w[None] > 0
            )
            emit(r0, c0, block, valid[: nr0 - r0, :k] & (block_w > 0))
            left_acc, left_w = (acc[:, :, k:], wgt[:, k:]) if c1 > nc0 else (None, None)
            done_tiles += 1
            if on_tile is not None:
                on_tile(done_tiles, total)
        top_acc, top_w = (next_acc, next_w) if r1 > nr0 else (None, None)


class TopFraction:
    """Exact streaming mean of the largest ``fraction`` of the values seen (an anomaly image score).

    Keeps at most ``ceil(max_count * fraction)`` values. After all blocks, :meth:`mean` takes the top
    ``max(1, round(count * fraction))`` of the ``count`` values seen, as
    :func:`~unimae.core.anomaly.image_scores` does on a whole image.
    """

    def __init__(self, fraction: float, max_count: int) -> None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.capacity = max(1, int(math.ceil(int(max_count) * self.fraction)) + 1)
        self.count = 0
        self._top = np.empty(0, dtype=np.float32)

    def update(self, values: np.ndarray) -> None:
        """Add a block of values (any shape; pass only the valid ones)."""
        v = np.asarray(values, dtype=np.float32).ravel()
        self.count += v.size
        if not v.size:
            return
        if v.size > self.capacity:
            v = np.partition(v, v.size - self.capacity)[v.size - self.capacity :]
        merged = np.concatenate([self._top, v])
        if merged.size > self.capacity:
            merged = np.partition(merged, merged.size - self.capacity)[merged.size - self.capacity :]
        self._top = merged

    def mean(self) -> float:
        """The mean of the top ``fraction`` of the values seen (0.0 if none)."""
        if self.count == 0:
            return 0.0
        k = min(max(1, int(round(self.count * self.fraction))), self._top.size)
        top = np.partition(self._top, self._top.size - k)[self._top.size - k :]
        return float(top.astype(np.float64).mean())
