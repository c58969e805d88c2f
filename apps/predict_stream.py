"""Streamed scenes: segmentation and anomaly maps of large inputs tile by tile, for domains that ``stream``.

A window is read with context, preprocessed, run through the sliding window and blended with its
neighbours; finished blocks go to the plugin's ``scene_writer`` on the input's own grid (GeoTIFF: CRS,
transform, nodata), so peak memory does not grow with the scene. :class:`SceneStreaming` is the part of
:class:`~unimae.apps.predictor.Predictor` that does it (``predict`` keeps small scenes in memory through the
same tiler; :meth:`SceneStreaming.predict_geotiff` streams to files).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimae.apps.predict_render import _heat_nodata, _int_dtype_for, _label_nodata, _Preview, _write_json
from unimae.apps.prediction import Prediction, class_fractions
from unimae.core.errors import InputError
from unimae.core.inference import TopFraction, stream_blend
from unimae.domains.base import Sample, check_pixel_limit
from unimae.domains.display import in_model_space

__all__ = ["SceneStreaming", "top_mean", "file_stem"]


def top_mean(values: np.ndarray, valid: np.ndarray, fraction: float) -> float:
    """The mean of the top ``fraction`` of the valid values (an anomaly map's image score)."""
    tf = TopFraction(fraction, int(values.size))
    tf.update(values[valid.astype(bool)])
    return tf.mean()


def file_stem(path: Path) -> str:
    """A file's name without its (double) extension: ``scan.nii.gz -> scan``; folders keep their name."""
    name = path.name
    for ext in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem if path.is_file() or path.suffix else name


class SceneStreaming:
    """Streamed prediction (a mixin of :class:`~unimae.apps.predictor.Predictor`, which provides the model,
    the plugin, the task (``task_def``), ``_sliding``, ``_preprocess``, ``check_channels``, ``_new`` and ``_anomaly_result``)."""

    def _tile_predict(self, read_window: Callable[[tuple[int, int, int, int]], Sample]):
        """``window -> (values (K, h, w), valid)`` for :func:`stream_blend`: read, preprocess, sliding window."""

        def predict(win: tuple[int, int, int, int]) -> tuple[np.ndarray | None, np.ndarray]:
            sample = read_window(win)
            valid = sample.valid.numpy().astype(bool)
            if not valid.any():
                return None, valid
            return self._sliding(sample).numpy(), valid

        return predict

    def _stream(
        self,
        shape: tuple[int, int],
        read_window: Callable[[tuple[int, int, int, int]], Sample],
        sink: Callable[[int, int, np.ndarray, np.ndarray], None],
        progress: bool | str = False,
    ) -> None:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=None, desc=progress if isinstance(progress, str) else "tiles", unit="tile", leave=False)

        def on_tile(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(1)

        try:
            stream_blend(shape, self._tile_predict(read_window), sink, channels=self.num_outputs, tile=self.tile,
                         overlap=self.tile_overlap, on_tile=on_tile)  # fmt: skip
        finally:
            if bar is not None:
                bar.close()

    def _open_scene(self, source: str | Path) -> Any:
        self.check_input(source)
        return self.plugin.open_scene(source, trained_read=dict(self.contract.get("read") or {}))

    def _scene_reader(self, reader: Any) -> Callable[[tuple[int, int, int, int]], Sample]:
        def read_window(win: tuple[int, int, int, int]) -> Sample:
            sample = self._preprocess(reader.read(win, allow_empty=True))
            self.check_channels(sample)
            return sample

        return read_window

    def _memory_reader(self, sample: Sample) -> Callable[[tuple[int, int, int, int]], Sample]:
        model_sample = sample if in_model_space(sample.meta) else self._preprocess(sample)
        self.check_channels(model_sample)

        def read_window(win: tuple[int, int, int, int]) -> Sample:
            r, c, h, w = win
            meta = dict(model_sample.meta)
            meta["valid"] = model_sample.valid[r : r + h, c : c + w]
            return model_sample.replace(image=model_sample.image[:, r : r + h, c : c + w], meta=meta, mask=None)

        return read_window

    def _predict_scene(
        self, source: str | Path | Sample, *, threshold: float | None, image_threshold: float | None, progress: bool
    ) -> Prediction:
        """A scene through the streamed tiler, kept in memory (for the app and small scenes)."""
        reader = None
        if isinstance(source, Sample):
            src = source
            read_window = self._memory_reader(source)
            shape = tuple(source.spatial_shape)
        else:
            reader = self._open_scene(source)
            shape = reader.shape
            check_pixel_limit(shape, source)
            src = None
            read_window = self._scene_reader(reader)
        try:
            k = self.num_outputs
            labels_out = self.task_def.class_outputs  # a label map (segment), else a heat map (anomaly)
            result = np.zeros(shape, dtype=np.int64 if labels_out else np.float32)
            valid_all = np.zeros(shape, dtype=bool)

            def sink(r: int, c: int, values: np.ndarray, valid: np.ndarray) -> None:
                h, w = valid.shape
                valid_all[r : r + h, c : c + w] = valid
                if not labels_out:
                    result[r : r + h, c : c + w] = np.where(valid, values[0], 0.0)
                else:
                    result[r : r + h, c : c + w] = np.where(valid, values.argmax(0), 0)

            self._stream(shape, read_window, sink, progress)
            if reader is not None:
                src = reader.read()  # the small scene itself, for displays and the source meta
        finally:
            if reader is not None:
                reader.close()
        meta = dict(src.meta)
        meta["valid"] = torch.from_numpy(valid_all)
        if labels_out:
            labels = result.astype(np.uint8 if len(self.class_names) <= 256 else np.int32)
            pred = self._new(meta, label_map=labels, class_fractions=class_fractions(result, meta, self.class_names))
        else:
            score = top_mean(result, valid_all, float(self.anomaly.get("top_fraction", 0.01)))
            pred = self._anomaly_result(meta, result, score, threshold, image_threshold)
        pred.source = src
        return pred

    def predict_geotiff(
        self,
        source: str | Path,
        out_dir: str | Path,
        *,
        stem: str | None = None,
        threshold: float | None = None,
        image_threshold: float | None = None,
        probabilities: bool = False,
        progress: bool = False,
        preview_size: int = 1024,
    ) -> dict[str, Path]:
        """Stream a GeoTIFF through the model and write the results tile by tile; the scene never sits in memory.

        Segmentation writes ``STEM_seg.tif`` (class indices) and, with ``probabilities``,
        ``STEM_probs.tif`` (one float band per class); anomaly writes ``STEM_heatmap.tif`` (float32) and
        ``STEM_anomaly_mask.tif`` (0/1). All are on the source grid (CRS, transform) with a nodata value
        that cannot be mistaken for a result (the source's when possible). Plus ``STEM_overlay.png``
        (natural-colour composite, at most ``preview_size`` pixels a side) and ``STEM.json``.

        Returns:
            ``{"seg" | "heatmap", "anomaly_mask", "probs", "overlay", "report": path}``.
        """
        if not self.task_def.per_pixel:
            raise InputError("predict_geotiff streams segmentation and anomaly maps; use predict() to classify")
        t0 = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or file_stem(Path(source))
        with self.plugin.stream_context(), self._open_scene(source) as reader:
            h, w = reader.shape
            probe = self._preprocess(reader.read((0, 0, min(h, 16), min(w, 16)), allow_empty=True))
            self.check_channels(probe)
            meta = reader.meta()
            may_be_invalid = bool(getattr(reader, "may_be_invalid", True))
            stride = self.tile - min(self.tile_overlap, self.tile // 2)
            block = stride if stride % 16 == 0 and 16 <= stride <= 1024 else 256
            k = len(self.class_names)
            files: dict[str, Path] = {}
            preview = _Preview((h, w), preview_size, meta["channels"], self.plugin.rgb_bands)
            pix_thr = self.anomaly.get("pixel_threshold") if threshold is None else float(threshold)
            top = TopFraction(float(self.anomaly.get("top_fraction", 0.01)), h * w)
            counts = np.zeros(max(k, 1), dtype=np.int64)
            labels_out = self.task_def.class_outputs  # a label map (segment), else a heat map (anomaly)
            with contextlib.ExitStack() as stack:
                writers: dict[str, Any] = {}

                def open_writer(name: str, suffix: str, count: int, dtype: str, nodata: float | None, desc=None) -> None:
                    path = out_dir / f"{stem}{suffix}"
                    files[name] = path
                    writers[name] = stack.enter_context(self.plugin.scene_writer(
                        source, path, count=count, dtype=dtype, nodata=nodata, descriptions=desc, tile=block))  # fmt: skip

                if labels_out:
                    nd = _label_nodata(meta.get("nodata"), k) if (may_be_invalid or meta.get("nodata") is not None) else None
                    open_writer("seg", "_seg.tif", 1, _int_dtype_for([0, k - 1] + ([nd] if nd is not None else [])), nd)
                    if probabilities:
                        open_writer("probs", "_probs.tif", k, "float32", float("nan"), list(self.class_names))
                else:
                    hnd = _heat_nodata(meta.get("nodata")) if (may_be_invalid or meta.get("nodata") is not None) else None
                    open_writer("heatmap", "_heatmap.tif", 1, "float32", hnd)
                    if pix_thr is not None:
                        open_writer("anomaly_mask", "_anomaly_mask.tif", 1, "uint8", 255.0 if hnd is not None else None)

                def read_window(win: tuple[int, int, int, int]) -> Sample:
                    raw = reader.read(win, allow_empty=True)
                    preview.add_image(win, raw.image.numpy(), raw.valid.numpy())
                    sample = self._preprocess(raw)
                    self.check_channels(sample)
                    return sample

                def sink(r: int, c: int, values: np.ndarray, valid: np.ndarray) -> None:
                    bh, bw = valid.shape
                    win = (r, c, bh, bw)
                    if labels_out:
                        labels = values.argmax(0)
                        counts[:] += np.bincount(labels[valid], minlength=k)[:k]
                        wr = writers["seg"]
                        fill = wr.nodata if wr.nodata is not None else 0
                        wr.write(np.where(valid, labels, fill).astype(wr.dtype), win)
                        preview.add_overlay(win, np.where(valid, labels, 0).astype(np.float32))
                        if "probs" in writers:
                            writers["probs"].write(np.where(valid[None], values, np.nan).astype(np.float32), win)
                    else:
                        heat = np.maximum(values[0], 0.0)
                        top.update(heat[valid])
                        wr = writers["heatmap"]
                        fill = wr.nodata if wr.nodata is not None else 0.0
                        wr.write(np.where(valid, heat, fill).astype(np.float32), win)
                        preview.add_overlay(win, np.where(valid, heat, 0.0).astype(np.float32))
                        if "anomaly_mask" in writers:
                            mw = writers["anomaly_mask"]
                            m = np.where(valid, heat > pix_thr, mw.nodata if mw.nodata is not None else 0)
                            counts[0] += int((heat[valid] > pix_thr).sum())
                            mw.write(m.astype(np.uint8), win)

                self._stream((h, w), read_window, sink, progress=f"{Path(source).name} tiles" if progress else False)
            n_valid = int(counts.sum()) if labels_out else top.count
            pred = self._new(meta)
            if labels_out:
                pred.class_fractions = {n: (float(counts[i]) / n_valid if n_valid else 0.0) for i, n in enumerate(self.class_names)}
                files["overlay"] = preview.write(out_dir / f"{stem}_overlay.png", labels=True)
            else:
                score = top.mean()
                pred = self._anomaly_result(meta, None, score, threshold, image_threshold)
                files["overlay"] = preview.write(out_dir / f"{stem}_overlay.png", labels=False, threshold=pred.threshold)
            pred.checkpoint = self.checkpoint
            pred.seconds = time.perf_counter() - t0
            report = pred.report(files)
            if not labels_out:
                report["anomalous_fraction"] = (float(counts[0]) / n_valid if n_valid else 0.0) if pred.threshold is not None else None
            report["streamed"] = {"tile": self.tile, "overlap": self.tile_overlap, "block": block}
            files["report"] = _write_json(out_dir / f"{stem}.json", report)
        return files
