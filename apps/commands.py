"""The arguments of ``unimae evaluate`` and ``unimae predict``, free of torch / MONAI imports.

``unimae --help`` and argument errors answer at once; a command imports its module (and torch) only when it
runs. :mod:`unimae.apps.evaluate` and :mod:`unimae.apps.predict` re-export these functions.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from unimae.core.precision import PRECISIONS
from unimae.core.tta import TTA_MODES

__all__ = ["EVAL_SEED", "DEFAULT_SYNTHETIC_SAMPLES", "add_device_args", "add_threshold_args", "add_evaluate_parser",
           "add_predict_parser"]

EVAL_SEED = 909_091
"""Default seed of ``--data synthetic``: unlike fine-tuning's train (``seed``) and val (``seed + 100003``) seeds."""
DEFAULT_SYNTHETIC_SAMPLES = 32


def _deferred(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """``args -> module.name(args)``, importing ``module`` on the call."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    run.__name__ = name
    return run


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``: where and how a model runs (evaluate, predict, app)."""
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS), help="auto: bf16 where the hardware runs it")


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    """``--threshold`` and ``--image-threshold``: overrides of a checkpoint's decision thresholds."""
    p.add_argument("--threshold", type=float, default=None,
                   help="anomaly pixel threshold or multi-label decision threshold (default: calibrated / 0.5)")  # fmt: skip
    p.add_argument("--image-threshold", type=float, default=None, help="anomaly image-score threshold (default: calibrated)")


def add_tta_arg(p: argparse.ArgumentParser) -> None:
    """``--tta``: an override of a checkpoint's test-time augmentation (evaluate, predict)."""
    p.add_argument("--tta", default=None, choices=list(TTA_MODES),
                   help="classification / segmentation: average the model over mirrored (mirror) or rotated and "
                        "mirrored (dihedral, 2D) copies of each input; default: what the checkpoint records")  # fmt: skip


#: ``unimae evaluate`` and ``unimae predict``: (help, description, module, function that runs it)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "evaluate": (
        "score a fine-tuned model on labelled data",
        "Evaluate a classification, segmentation or anomaly checkpoint on a CSV manifest, a folder "
        "(class folders, images + masks) or fresh synthetic data. Writes OUT/metrics.json, OUT/per_case.csv and "
        "plots (confusion matrix and ROC; per-class Dice; anomaly ROC). Segmentation and anomaly maps are "
        "compared with the masks on each file's own grid, inside its valid region.",
        "unimae.apps.evaluate",
        "run_evaluate",
    ),
    "predict": (
        "run a fine-tuned model over files or a folder",
        "Run a classification, segmentation or anomaly checkpoint over a file, a DICOM series "
        "folder or a folder of inputs. Results keep the input's geometry: NIfTI with the source affine, "
        "GeoTIFF with the source CRS/transform/nodata (streamed for large scenes), PNG for pictures, plus "
        "PNG overlays, a JSON report per input and OUTPUT/predictions.csv.",
        "unimae.apps.predict",
        "run_predict",
    ),
}


def _checkpoint_command(subparsers: Any, name: str) -> argparse.ArgumentParser:
    """The parser of :data:`COMMANDS` ``[name]``, with the ``--checkpoint`` it runs and the function it calls."""
    help_text, description, module, function = COMMANDS[name]
    p = subparsers.add_parser(name, help=help_text, description=description)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint (NAME, NAME.json or NAME.safetensors)")
    p.set_defaults(func=_deferred(module, function))
    return p


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``unimae evaluate`` to an argparse ``subparsers`` object; it runs :func:`unimae.apps.evaluate.run_evaluate`."""
    p = _checkpoint_command(subparsers, "evaluate")
    p.add_argument("--data", required=True, metavar="MANIFEST_OR_FOLDER",
                   help="a CSV manifest, a dataset folder, or 'synthetic'")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help=f"synthetic cases (default {DEFAULT_SYNTHETIC_SAMPLES}); for files, only the first N")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, metavar="S", help=f"synthetic data seed (default {EVAL_SEED})")
    p.add_argument("--split", default=None, help="train, val or test rows/folders (default: test, else val)")
    add_threshold_args(p)
    p.add_argument("--normal-class", default=None, metavar="NAME",
                   help="anomaly on a labelled set: its normal class (default: the one the model was trained on, "
                   "else a class named normal / healthy / No Finding ...); every other class counts as anomalous")
    p.add_argument("--ignore-index", type=int, default=None, metavar="V",
                   help="segmentation: mask value of unlabelled pixels, not scored (e.g. 255)")  # fmt: skip
    add_device_args(p)
    add_tta_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``unimae predict`` to an argparse ``subparsers`` object; it runs :func:`unimae.apps.predict.run_predict`."""
    p = _checkpoint_command(subparsers, "predict")
    p.add_argument("--input", required=True, metavar="FILE_OR_FOLDER", help="an input file, a DICOM series folder or a folder of inputs")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    add_threshold_args(p)
    add_device_args(p)
    add_tta_arg(p)
    p.add_argument("--probabilities", action="store_true", help="GeoTIFF segmentation: also write per-class probabilities")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p
