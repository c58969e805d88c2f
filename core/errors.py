"""Errors that reach users as one readable line.

Anything raised as :class:`InputError` is caught by the CLI (exit code 2) and by the app
(shown as a message) and printed as ``str(err)`` with no traceback. Messages name the file or
value and say what is wrong and, where useful, what is accepted.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["InputError", "look_up", "check_finite"]


class InputError(ValueError):
    """Bad user input: a file, a value or an option. ``str(err)`` is one line."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # always one line
        if path is not None:
            message = f"{Path(path).name}: {message}"
        super().__init__(message)
        self.path = None if path is None else str(path)


def look_up(value: str, options: Iterable[str], what: str = "option") -> str:
    """Return ``value`` if it is one of ``options``, else raise with the accepted values and close matches."""
    options = list(options)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InputError(f"unknown {what} {value!r}; known: {', '.join(map(str, options))}.{hint}")


def check_finite(x, what: str = "input", path: str | Path | None = None) -> None:
    """Raise :class:`InputError` when a tensor or array holds NaN or Inf."""
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        ok = bool(torch.isfinite(x).all()) if x.is_floating_point() else True
    else:
        arr = np.asarray(x)
        ok = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.floating) else True
    if not ok:
        raise InputError(f"{what} contains NaN or Inf values", path)
