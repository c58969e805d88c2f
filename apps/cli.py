"""The ``unimae`` command line.

Usage::

    unimae pretrain --config configs/fundus/pretrain.yaml [key=value ...]
    unimae pretrain --config fundus model.preset=tiny train.max_steps=20 out_dir=runs/try
    unimae pretrain --config configs/ct/pretrain.yaml --print-config      # resolved config, no run
    torchrun --nproc_per_node 4 -m unimae.apps.cli pretrain --config configs/ct/pretrain.yaml
    unimae info scan.nii.gz [--json] [--domain ct]

Stable override keys: ``out_dir``, ``model.preset``, ``train.max_steps``, ``train.batch_size``,
``train.lr``, ``train.precision``, ``data.train``, ``data.val``, ``resume`` (see
:mod:`unimae.core.config` for the grammar and the section keys).

Errors in what the user gave (a bad file, option, override or config) print one line,
``unimae: error: <message>``, and exit with status 2; Ctrl-C during training saves a checkpoint and exits
with 130. Only unexpected failures show a traceback (status 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything can import gradio

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

from unimae.core.errors import InputError  # noqa: E402

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


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def _cmd_pretrain(args: argparse.Namespace) -> int:
    from unimae.core.config import dump_config, load_config

    path = _resolve_config(args.config, "pretrain")
    cfg = load_config(path, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from unimae.apps.pretrain import pretrain

    result = pretrain(cfg)
    if result.get("rank", 0) == 0:
        loss = result.get("loss")
        loss_txt = f", last loss {loss:.4f}" if isinstance(loss, float) else ""
        print(f"{PROG}: pretrained {result['step']} steps{loss_txt}; model: {result['model']}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from unimae.domains.datasets import describe, format_description

    d = describe(args.file, args.domain)
    print(json.dumps(d, indent=2, ensure_ascii=False) if args.json else format_description(d))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``unimae`` argument parser (subcommands ``pretrain`` and ``info``)."""
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

    p = sub.add_parser("info", help="describe an image file as UniMAE reads it", description="Describe a file: "
                       "shape, spacing, channels, geometry, value range (never patient fields).")  # fmt: skip
    p.add_argument("file", help="an image file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--domain", default=None, help="the domain to read it as (default: guessed)")
    p.set_defaults(func=_cmd_info)

    # Later issues add: finetune, evaluate, predict, app, demo. They are not listed until they work.
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
