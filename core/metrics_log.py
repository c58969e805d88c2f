"""The training log: ``metrics.csv`` (one row per logging window, flushed per row) and TensorBoard.

:class:`MetricsLog` writes it (and trims rows logged after the checkpoint a run resumes from);
:func:`read_metrics` reads it back as numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unimae.core.fileio import atomic_path

__all__ = ["METRIC_FIELDS", "MetricsLog", "read_metrics"]

METRIC_FIELDS = ("step", "epoch", "loss", "pixel", "gradient", "lr", "samples_per_s", "time", "val_loss")


class MetricsLog:
    """Rows of ``fields`` (default :data:`METRIC_FIELDS`) appended to ``metrics.csv`` (flushed per row), plus TensorBoard.

    On resume the rows after the resumed step (logged after the last checkpoint) are dropped first,
    with an atomic rewrite, so the CSV reads as one uninterrupted run.
    """

    def __init__(
        self, out_dir: Path, *, resume_step: int | None, tensorboard: bool, fields: Sequence[str] = METRIC_FIELDS
    ) -> None:
        self.path = out_dir / "metrics.csv"
        self.fields = tuple(fields)
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
            self._rewrite(kept)
        else:
            self._rewrite([])
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields)
        w.writeheader()
        w.writerows({k: _fmt(r.get(k)) for k in self.fields} for r in rows)
        with atomic_path(self.path) as tmp:
            tmp.write_text(buf.getvalue())

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in self.fields})
        self.file.flush()
        if self.tb is not None:
            step = int(row["step"])
            for k in self.fields:
                if k not in ("step", "epoch", "time") and row.get(k) is not None:
                    self.tb.add_scalar(f"{'val' if k.startswith('val_') else 'train'}/{k}", float(row[k]), step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: resumed runs compare exactly
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv`` as dicts of numbers, every column (empty cells -> None; a torn last line is skipped)."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            try:
                row = {k: (None if v in ("", None) else float(v)) for k, v in raw.items() if k is not None}
                row["step"] = int(row["step"])
                row["epoch"] = int(row["epoch"])
            except (TypeError, ValueError):
                continue
            rows.append(row)
    return rows
