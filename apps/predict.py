"""The predict layer shared by ``unimae predict`` and the Gradio app: pure functions, no UI.

::

    predictor = load_predictor("runs/fundus_segment/best")          # cached by path + mtime
    pred = predictor.predict("image.tif")                           # -> Prediction (source grid)
    files = write_prediction(pred, "out", "image")                  # PNG / NIfTI / GeoTIFF + overlay + JSON
    predictor.predict_geotiff("scene.tif", "out")                   # streamed: the scene never sits in memory
    predict_paths("runs/ct_segment/best", "scans/", "out")          # a folder, with a CSV and one-line errors

Two halves, one import path (everything below is importable from here):

* inference -- :mod:`unimae.apps.predictor` (:class:`Predictor`, :func:`load_predictor`: read, preprocess,
  run the model per task, map back to the source grid with the domain plugin) and
  :mod:`unimae.apps.predict_stream` (GeoTIFF-sized inputs tile by tile);
* rendering and writing -- :mod:`unimae.apps.predict_render` (:func:`display_image`, :func:`overlay_image`,
  :func:`write_prediction`: the domain plugin's ``write`` on the source grid, an overlay PNG, a JSON report)
  and the result type :class:`~unimae.apps.prediction.Prediction`.

This module adds the files-and-folders side: :func:`collect_inputs`, :func:`predict_paths` (a CSV of every
input, one-line errors) and ``unimae predict`` (:func:`run_predict`). Results keep the input's geometry
(NIfTI with the source affine, GeoTIFF with the source CRS / transform / nodata, PNG for pictures); reports
never contain patient fields.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimae.apps.commands import add_predict_parser  # noqa: F401 (re-exported)
from unimae.apps.predict_render import display_image, overlay_image, result_suffix, write_prediction
from unimae.apps.predict_stream import file_stem as _stem
from unimae.apps.prediction import Prediction, safe_meta
from unimae.apps.predictor import SEGMENT_MODES, Predictor, clear_predictor_cache, load_predictor, resolve_device
from unimae.core.errors import InputError
from unimae.core.fileio import write_csv_rows
from unimae.core.inference import make_contract, task_metadata
from unimae.core.tasks import get_task
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.folders import image_folder_of, mask_files_among
from unimae.domains.sniff import has_dicom_magic

__all__ = [
    "Prediction",
    "Predictor",
    "PredictSummary",
    "SEGMENT_MODES",
    "load_predictor",
    "clear_predictor_cache",
    "resolve_device",
    "write_prediction",
    "predict_paths",
    "collect_inputs",
    "add_predict_parser",
    "run_predict",
    "task_metadata",
    "make_contract",
    "display_image",
    "overlay_image",
    "result_suffix",
    "safe_meta",
    "has_dicom_magic",
]

PROG = "unimae"


# ------------------------------------------------------------------------------------------------
# files and folders
# ------------------------------------------------------------------------------------------------
def _looks_dicom(path: Path) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or has_dicom_magic(path)


def collect_inputs(inputs: str | Path, plugin: DomainPlugin) -> tuple[list[Path], list[Path]]:
    """``(inputs, skipped)`` for a file, a DICOM series folder or a folder of inputs.

    A folder's non-hidden files are all inputs (files of another kind fail with a one-line error
    rather than being skipped) except the masks of other files there (CHASE_DB1's ``_1stHO``/``_2ndHO``,
    STARE's ``.ah``/``.vk``, ``_mask``, ``_fov`` ...: see :func:`~unimae.domains.datasets.mask_files_among`),
    which are skipped; its sub-folders are inputs when the domain reads them (DICOM series) and are
    reported as skipped otherwise. A dataset folder with no files but an ``images/`` sub-folder (DRIVE's
    ``training/``) is read through that sub-folder.
    """
    p = Path(inputs).expanduser()
    if not p.exists():
        raise InputError("input not found", p)
    if p.is_file():
        return [p], []
    children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
    files = [c for c in children if c.is_file()]
    if plugin.accepts(p) and any(_looks_dicom(f) for f in files[:32]):
        return [p], []
    if not files and image_folder_of(p) is not None:
        return collect_inputs(image_folder_of(p), plugin)  # type: ignore[arg-type]
    masks = mask_files_among(files)
    items, skipped = [], []
    for c in children:
        if c in masks:
            skipped.append(c)  # some image's mask: never an input
        elif c.is_file() or plugin.accepts(c):
            items.append(c)
        else:
            skipped.append(c)
    if not items:
        raise InputError(f"folder holds no files to predict (accepted: {', '.join(plugin.extensions)})", p)
    return items, skipped


def _with_companions(predictor: Predictor, path: Path) -> Path | Sample:
    """``path``, or its sample read with what the plugin finds published beside it (``read_options``: e.g. the
    fundus field-of-view mask in DRIVE's ``mask/`` or ``<stem>_fov.png``; the report's ``fov_source`` says
    which was used)."""
    options = predictor.plugin.read_options(path) if path.is_file() else {}
    if not options:
        return path
    predictor.check_input(path)
    return predictor.plugin.read(path, **options)


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did: outputs per input, one-line errors, the CSV."""

    outputs: dict[str, dict[str, Path]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    csv: Path | None = None
    unexpected: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def _csv_row(pred: Prediction, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"file": name}
    row.update(get_task(pred.task).csv_row(pred))
    return row


def _report_row(report: Mapping[str, Any], name: str, class_names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"file": name}
    if "class_fractions" in report:
        row.update({f"fraction_{n}": round(float(v), 6) for n, v in (report["class_fractions"] or {}).items()})
    else:
        row.update(score=report.get("score"), is_anomalous=report.get("is_anomalous"),
                   anomalous_fraction=report.get("anomalous_fraction"))  # fmt: skip
    return row


def predict_paths(
    checkpoint: str | Path,
    inputs: str | Path,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    image_threshold: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    probabilities: bool = False,
    on_error: Callable[[str], None] | None = None,
    tta: str | None = None,
) -> PredictSummary:
    """Predict every input (a file, a DICOM series folder, or a folder of them) and write the results.

    Each input gets the files of :func:`write_prediction` (GeoTIFF segmentation / anomaly maps are
    streamed with :meth:`Predictor.predict_geotiff`); ``OUT/predictions.csv`` has one row per input
    (class probabilities, class fractions or anomaly scores, and the error of inputs that failed). A bad
    input is reported as one line (to ``on_error``) and the others still run.

    Raises:
        InputError: for a bad checkpoint, device or input path (nothing can run).
    """
    from tqdm.auto import tqdm

    predictor = load_predictor(checkpoint, device=device, precision=precision, tta=tta)
    if predictor.not_reliable:
        print(f"{PROG}: warning: this model's card marks it NOT RELIABLE: {predictor.not_reliable}", file=sys.stderr)
    items, skipped = collect_inputs(inputs, predictor.plugin)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(skipped=[str(s) for s in skipped])
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    report = on_error or (lambda msg: tqdm.write(f"{PROG}: error: {msg}", file=sys.stderr))
    bar = tqdm(items, desc=f"predict ({predictor.domain} {predictor.task})", unit="file", disable=not progress)
    for path in bar:
        stem = _stem(path)
        if stem in used:
            stem = f"{stem}_{''.join(path.suffixes).lstrip('.').replace('.', '_') or 'dir'}"
        n = 2
        while stem in used:
            stem, n = f"{stem}_{n}", n + 1
        used.add(stem)
        try:
            if predictor.plugin.streams and predictor.task_def.per_pixel:
                files = predictor.predict_geotiff(path, out_dir, stem=stem, threshold=threshold,
                                                  image_threshold=image_threshold, probabilities=probabilities,
                                                  progress=progress)  # fmt: skip
                rep = json.loads(files["report"].read_text())
                rows.append(_report_row(rep, path.name, predictor.class_names))
            else:
                pred = predictor.predict(_with_companions(predictor, path), threshold=threshold,
                                        image_threshold=image_threshold)  # fmt: skip
                files = write_prediction(pred, out_dir, stem, plugin=predictor.plugin)
                rows.append(_csv_row(pred, path.name))
            summary.outputs[str(path)] = files
        except InputError as err:
            msg = str(err) if path.name in str(err) else f"{path.name}: {err}"
            summary.errors[str(path)] = msg
            rows.append({"file": path.name, "error": msg})
            report(msg)
        except (OSError, ValueError, RuntimeError) as err:  # unexpected: still one line, keep going
            msg = f"{path.name}: {type(err).__name__}: {' '.join(str(err).split())}"
            summary.unexpected = True
            summary.errors[str(path)] = msg
            rows.append({"file": path.name, "error": msg})
            report(msg)
    summary.csv = _write_csv(out_dir / "predictions.csv", rows)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns and key != "error":
                columns.append(key)
    columns.append("error")
    return write_csv_rows(path, rows, columns)


# ------------------------------------------------------------------------------------------------
# the CLI command
# ------------------------------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    """Run ``unimae predict``: 0 when every input succeeded, 2 when an input or the checkpoint was bad, 1 otherwise."""
    try:
        summary = predict_paths(
            args.checkpoint, args.input, args.output, threshold=args.threshold,
            image_threshold=getattr(args, "image_threshold", None), device=args.device, precision=args.precision,
            progress=not getattr(args, "no_progress", False), probabilities=getattr(args, "probabilities", False),
            tta=getattr(args, "tta", None),
        )  # fmt: skip
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    n_ok, n_bad = len(summary.outputs), len(summary.errors)
    for s in summary.skipped:
        what = "folder" if Path(s).is_dir() else "file"
        why = "not an input of this model" if Path(s).is_dir() else "the mask of an image beside it"
        print(f"{PROG}: note: skipped {what} {Path(s).name} ({why})", file=sys.stderr)
    print(f"{PROG}: predicted {n_ok} input(s) into {args.output}" + (f"; {n_bad} failed" if n_bad else ""))
    if not n_bad:
        return 0
    return 1 if summary.unexpected else 2
