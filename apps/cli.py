"""The ``unimae`` command line.

Usage::

    unimae pretrain --config configs/fundus/pretrain.yaml [key=value ...]
    unimae pretrain --config fundus model.preset=tiny train.max_steps=20 out_dir=runs/try
    unimae pretrain --config configs/ct/pretrain.yaml --print-config      # resolved config, no run
    torchrun --nproc_per_node 4 -m unimae.apps.cli pretrain --config configs/ct/pretrain.yaml
    unimae finetune --config configs/fundus/segment.yaml init=runs/fundus/model [key=value ...]
    unimae finetune --config xray/classify data.train=cxr/train.csv data.val=cxr/val.csv train.mode=linear
    unimae evaluate --checkpoint runs/fundus-segment/best --data synthetic --out eval/fundus
    unimae predict --checkpoint runs/fundus-segment/best --input photos/ --output results/
    unimae info scan.nii.gz [--json] [--domain ct]
    unimae app [--models DIR] [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--share]
    unimae demo [--force]                                                # build the app's demo models

Stable override keys: ``out_dir``, ``model.preset``, ``train.max_steps``, ``train.batch_size``,
``train.lr``, ``train.precision``, ``data.train``, ``data.val``, ``resume`` (see
:mod:`unimae.core.config` for the grammar and the section keys); ``finetune`` adds ``init``,
``init_allow_pickle``, ``train.mode``, ``train.layer_decay``, ``train.class_weights`` and the
``anomaly`` section (see :mod:`unimae.apps.finetune`).

Errors in what the user gave (a bad file, option, override or config) print one line,
``unimae: error: <message>``, and exit with status 2; Ctrl-C during training saves a checkpoint and exits
with 130. Only unexpected failures show a traceback (status 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything can import gradio

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from unimae.core.errors import InputError  # noqa: E402
from unimae.core.tasks import TASKS  # noqa: E402

__all__ = ["main", "build_parser", "bundled_configs"]

PROG = "unimae"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """An argparse usage error, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``unimae: error: <message>`` (no usage block), raised not exited."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _config_roots() -> list[Path]:
    """Where bundled configs live: the source checkout's ``configs/`` and ``./configs``."""
    roots = [Path(__file__).resolve().parents[1] / "configs", Path.cwd() / "configs"]
    out: list[Path] = []
    for r in roots:
        if r.is_dir() and r.resolve() not in [o.resolve() for o in out]:
            out.append(r)
    return out


FINETUNE_STAGES = TASKS  # bundled configs/<domain>/<task>.yaml, one per task


def bundled_configs(stage: str = "pretrain") -> dict[str, Path]:
    """``{domain: configs/<domain>/<stage>.yaml}`` for the configs shipped with UniMAE."""
    found: dict[str, Path] = {}
    for root in _config_roots():
        for path in sorted(root.glob(f"*/{stage}.yaml")):
            found.setdefault(path.parent.name, path)
    return found


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _resolve_config(value: str | None, stage: str) -> Path:
    """``--config`` as a path, or a bundled config's domain name (``--config ct``)."""
    configs = bundled_configs(stage)
    listing = ", ".join(_show(p) for p in configs.values()) or "none found"
    if not value:
        raise InputError(f"{stage} needs --config FILE; available configs: {listing}")
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if value in configs and not path.suffix:
        return configs[value]
    raise InputError(f"config file {value} not found; available configs: {listing}")


def _resolve_finetune_config(value: str | None) -> Path:
    """``--config`` as a path, or a bundled config named ``DOMAIN/TASK`` (``--config fundus/segment``)."""
    found = [p for stage in FINETUNE_STAGES for p in bundled_configs(stage).values()]
    listing = ", ".join(sorted(_show(p) for p in found)) or "none found"
    if not value:
        raise InputError(f"finetune needs --config FILE; available configs: {listing}")
    path = Path(value).expanduser()
    if path.is_file():
        return path
    domain, _, task = value.strip("/").partition("/")
    if task in FINETUNE_STAGES and not path.suffix:
        bundled = bundled_configs(task).get(domain)
        if bundled is not None:
            return bundled
    raise InputError(f"config file {value} not found; available configs: {listing}")


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def _train(args: argparse.Namespace, cfg: dict[str, Any], dump: Callable[[Any], str], runner: str) -> dict | None:
    """Print the resolved config (``--print-config``) or run ``runner`` (``"module:function"``, imported only
    now) on it; returns the run's result on the process that reports it (rank 0), else None."""
    if args.print_config:
        print(dump(cfg), end="")
        return None
    module, name = runner.split(":")
    result = getattr(importlib.import_module(module), name)(cfg)
    return result if result.get("rank", 0) == 0 else None


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from unimae.core.config import dump_config, load_config

    cfg = load_config(_resolve_config(args.config, "pretrain"), args.overrides)
    result = _train(args, cfg, dump_config, "unimae.apps.pretrain:pretrain")
    if result is not None:
        loss = result.get("loss")
        loss_txt = f", last loss {loss:.4f}" if isinstance(loss, float) else ""
        print(f"{PROG}: pretrained {result['step']} steps{loss_txt}; model: {result['model']}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from unimae.apps.finetune import dump_finetune_config, load_finetune_config

    cfg = load_finetune_config(_resolve_finetune_config(args.config), args.overrides)
    result = _train(args, cfg, dump_finetune_config, "unimae.apps.finetune:finetune")
    if result is not None:
        best = result.get("best_value")
        best_txt = (
            f"; best {result['monitor']} {best:.4f} at step {result['best_step']}" if isinstance(best, float) else ""
        )
        print(f"{PROG}: fine-tuned {cfg.get('domain')} {result['task']} for {result['step']} steps{best_txt}")
        thr = result.get("anomaly") or {}
        if thr.get("image_threshold") is not None:
            print(f"{PROG}: anomaly thresholds at {thr['fpr']:g} false positives on normal validation images: "
                  f"image {thr['image_threshold']:.4g}, pixel {thr['pixel_threshold']:.4g}")  # fmt: skip
        print(f"{PROG}: best model: {result['best']}; final model: {result['model']}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from unimae.domains.datasets import describe, format_description

    d = describe(args.file, args.domain, bands=getattr(args, "bands", None))
    print(json.dumps(d, indent=2, ensure_ascii=False) if args.json else format_description(d))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``unimae`` argument parser (subcommands ``pretrain``, ``finetune``, ``evaluate``, ``predict``, ``info``)."""
    parser = _Parser(
        prog=PROG,
        description="UniMAE: masked-autoencoder foundation models for CT, fundus, chest X-ray and multispectral "
        "images.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "pretrain",
        help="masked-autoencoder pretraining from a config",
        description="Pretrain a masked autoencoder. Overrides are key=value with dotted keys, e.g. "
        "model.preset=tiny train.max_steps=20 data.train=path/to/images out_dir=runs/x resume=true.",
    )
    p.add_argument(
        "--config", metavar="FILE", help="a YAML config, e.g. configs/fundus/pretrain.yaml (or a domain name)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a classifier, a segmenter or an anomaly detector from a config",
        description="Fine-tune on a task (classify, segment, anomaly) from a config such as "
        "configs/fundus/segment.yaml. Overrides are key=value with dotted keys, e.g. init=runs/fundus/model "
        "train.mode=linear data.train=path/to/data data.val=path/to/val out_dir=runs/x. Without data.train the "
        "domain's synthetic labelled data are used. Writes OUT/best.{safetensors,json} (best by the validation "
        "metric), OUT/model.*, OUT/learning_curve.png and OUT/metrics.csv.",
    )
    p.add_argument("--config", metavar="FILE", help="a YAML config, e.g. configs/fundus/segment.yaml (or fundus/segment)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_finetune)

    from unimae.apps.app import add_app_parser
    from unimae.apps.commands import add_evaluate_parser, add_predict_parser
    from unimae.apps.demo_models import add_demo_parser

    add_evaluate_parser(sub)
    add_predict_parser(sub)
    add_app_parser(sub)
    add_demo_parser(sub)

    p = sub.add_parser("info", help="describe an image file as UniMAE reads it", description="Describe a file: "
                       "shape, spacing, channels, geometry, value range (never patient fields).")  # fmt: skip
    p.add_argument("file", help="an image file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--domain", default=None, help="the domain to read it as (default: guessed)")
    p.add_argument("--bands", default=None, metavar="PRESET_OR_NAMES",
                   help="multispectral: the file's band order, a preset (eurosat, sentinel2_l1c ...) or comma-separated "
                   "band names (default: the file's descriptions, else guessed from the band count)")
    p.set_defaults(func=_cmd_info)

    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_USER_ERROR


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings as one line each: ``unimae: warning: <message>``."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 unexpected failure, 2 user error, 130 Ctrl-C)."""
    warnings.showwarning = _show_warning
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        return _error(str(err))
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        return _error(str(err))
    except FileNotFoundError as err:
        name = err.filename or ""
        return _error(f"{Path(name).name + ': ' if name else ''}{err.strerror or err}")
    except _UsageError as err:
        return _error(str(err))
    except KeyboardInterrupt as err:
        print(f"{PROG}: {str(err) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
