"""CSV manifests: one row per image (path, label, mask, field of view, split, group), and class-name checks.

Column names are matched case-insensitively (:data:`~unimae.domains.localdata.COLUMNS`); paths are
relative to the CSV's folder; class names come from every row, so all splits agree on label indices.
Also :func:`normal_class_index` (which class is "normal" for anomaly data) and :func:`check_classes`
(classes a classifier could not learn or validate, before training starts).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimae.core.errors import InputError
from unimae.domains.localdata import COLUMNS, NORMAL_NAMES, LocalDataset, _accepted, _close, _is_image, _norm_split

if TYPE_CHECKING:
    from unimae.domains.base import DomainPlugin

__all__ = ["normal_class_index", "check_classes"]


class _DoesNotFit(InputError):
    """A folder's manifest.csv that does not describe the folder in a way this tool reads."""

    def __init__(self, reason: str, path: Path) -> None:
        super().__init__(reason, path)
        self.reason = reason


def _norm_col(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _column(cols: dict[str, str], options: Sequence[str]) -> str | None:
    return next((cols[o] for o in options if o in cols), None)


def _as_int(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        try:
            f = float(token)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def _from_manifest(
    plugin: DomainPlugin,
    csv_path: Path,
    *,
    class_names: Sequence[str] | None = None,
    smap: dict[str, str] | None = None,
    multi_label: bool | None = None,
    group_by: str | None = None,
) -> LocalDataset:
    """Every row of a manifest (files checked), with ``item_splits`` when it has a split column."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError("manifest is not a UTF-8 text CSV", csv_path) from err
    except OSError as err:
        raise InputError(f"cannot read manifest ({err.strerror or err})", csv_path) from err
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InputError("manifest is empty (expected a header row with an 'image' column)", csv_path)
    cols: dict[str, str] = {}
    for c in reader.fieldnames:
        if c is not None:
            cols.setdefault(_norm_col(c), c)
    image_col = _column(cols, COLUMNS["image"])
    if image_col is None:
        raise _DoesNotFit(
            f"manifest has no 'image' column (columns: {', '.join(str(c) for c in reader.fieldnames)}; "
            f"an image column may be called {', '.join(COLUMNS['image'][:6])} ...)",
            csv_path,
        )
    label_col = _column(cols, COLUMNS["label"])
    name_col = _column(cols, COLUMNS["class_name"])
    if label_col is None and name_col is not None:
        label_col, name_col = name_col, None  # class names are the labels
    mask_col = _column(cols, COLUMNS["mask"])
    fov_col = _column(cols, COLUMNS["fov"])
    split_col = _column(cols, COLUMNS["split"])
    group_source = None
    if group_by is not None and str(group_by).strip().lower() not in ("none", "null", "", "false", "prefix",
                                                                        "stem_prefix", "filename_prefix"):  # fmt: skip
        group_col = cols.get(_norm_col(group_by))
        if group_col is None:
            raise InputError(
                f"data.group_by={group_by!r} is not a column of the manifest (columns: "
                f"{', '.join(str(c) for c in reader.fieldnames)})",
                csv_path,
            )
    elif group_by is not None and str(group_by).strip().lower() in ("none", "null", "", "false"):
        group_col = None
    elif group_by is not None:
        group_col = None  # "prefix": file-name groups, set after listing
    else:
        group_col = _column(cols, COLUMNS["group"])

    def cell(row: dict, col: str | None) -> str:
        v = row.get(col) if col is not None else None
        return "" if v is None else str(v).strip()

    rows: list[tuple[int, dict]] = [(line, row) for line, row in enumerate(reader, start=2)]
    if not rows:
        raise InputError("manifest has a header but no rows", csv_path)

    # splits first: names the manifest uses that cannot be mapped are one clear choice for the user
    smap = dict(smap or {})
    row_splits: list[str] | None = None
    if split_col is not None:
        row_splits = []
        unknown: dict[str, int] = {}
        for line, row in rows:
            s = cell(row, split_col)
            norm = smap.get(s.lower()) or _norm_split(s)
            if norm is None:
                unknown.setdefault(s, line)
            row_splits.append(norm or "")
        if unknown:
            first_name, first_line = next(iter(unknown.items()))
            names = ", ".join(repr(u) for u in unknown)
            example = ",".join(f"{u or 'EMPTY'}:train" for u in list(unknown)[:2])
            raise _DoesNotFit(
                f"line {first_line}: unknown split {first_name!r} (split names in column {split_col!r} this tool "
                f"cannot map: {names}; it understands train, val, test and their aliases: map them with "
                f"data.split_map={example} (or NAME:none to leave those rows out))",
                csv_path,
            )
        if all(s == "none" for s in row_splits):
            raise InputError("data.split_map leaves every row out", csv_path)

    # labels: the class list comes from all rows, whatever the split
    raw = [cell(r, label_col) for _, r in rows]
    tokens = [[t.strip() for t in v.split("|") if t.strip()] for v in raw]
    has_labels = label_col is not None and any(tokens)
    multi = bool(multi_label) if multi_label is not None else any("|" in v for v in raw)
    if multi_label is False and any("|" in v for v in raw):
        line = next(line for (line, _), v in zip(rows, raw) if "|" in v)
        raise InputError(f"line {line}: several labels ('|') but data.multi_label=false", csv_path)
    names: list[str] = []
    numeric = False
    if has_labels:
        flat = [t for ts in tokens for t in ts]
        numeric = all(_as_int(t) is not None for t in flat)
        if class_names is not None:
            names = [str(c) for c in class_names]
        elif numeric:
            names = _names_for_indices(csv_path, rows, tokens, name_col, cell)
        else:
            names = sorted(set(flat))

    files: list[Path] = []
    labels: list[Any] = []
    masks: list[Path] = []
    fovs: list[Path | None] = []
    groups: list[str | None] = []
    splits_kept: list[str] = []
    for k, ((line, row), toks) in enumerate(zip(rows, tokens)):
        if row_splits is not None and row_splits[k] == "none":
            continue
        rel = cell(row, image_col)
        img = _listed_file(csv_path, line, rel, "image")
        if not _is_image(img, plugin):
            raise _DoesNotFit(
                f"line {line}: {rel!r} is not a file the {plugin.name} domain reads (accepted: {_accepted(plugin)})",
                csv_path,
            )
        files.append(img)
        if has_labels:
            labels.append(_encode(csv_path, line, toks, names, multi, numeric, class_names is not None))
        if mask_col is not None:
            empty = " (every row needs one when a mask column exists)"
            masks.append(_listed_file(csv_path, line, cell(row, mask_col), "mask", empty=empty))
        if fov_col is not None:
            frel = cell(row, fov_col)
            fovs.append(_listed_file(csv_path, line, frel, "FOV mask") if frel else None)
        if group_col is not None:
            groups.append(cell(row, group_col) or None)
        if row_splits is not None:
            splits_kept.append(row_splits[k])

    ds = LocalDataset(
        plugin,
        files,
        labels=labels if has_labels else None,
        masks=masks if mask_col is not None else None,
        fovs=fovs if fov_col is not None else None,
        groups=groups if group_col is not None else None,
        class_names=names,
        multi_label=multi and has_labels,
        layout="csv",
        root=csv_path,
    )
    roles = {"image": image_col, "label": label_col if has_labels else None, "class_name": name_col,
             "mask": mask_col, "fov": fov_col, "split": split_col, "group": group_col}  # fmt: skip
    ds.columns = {k: str(v) for k, v in roles.items() if v is not None}
    if group_col is not None:
        ds.group_source = str(group_col)
        ds.all_groups = list(ds.groups or [])  # type: ignore[attr-defined]
    used = ", ".join(f"{role} {col!r}" for role, col in ds.columns.items())
    ignored = [str(c) for c in reader.fieldnames if c is not None and c not in ds.columns.values()]
    ds.notes.append(f"{csv_path.name}: columns used: {used}" + (f"; not used: {', '.join(ignored)}" if ignored else ""))
    if has_labels:
        kind = "multi-label ('|'-separated names)" if ds.multi_label else "single-label, one class per image"
        ds.notes.append(f"classes: {', '.join(names)} ({kind})")
    if row_splits is not None:
        ds.item_splits = splits_kept  # type: ignore[attr-defined]
        ds.split_source = "column"
    return ds


def _resolve(base: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else base / p


def _listed_file(csv_path: Path, line: int, rel: str | None, what: str, *, empty: str = "") -> Path:
    """The existing file a manifest row names (``rel``, relative to the CSV's folder) in its ``what`` column;
    ``empty`` ends the error for an empty cell."""
    if not rel:
        raise InputError(f"line {line}: empty {what} path{empty}", csv_path)
    path = _resolve(csv_path.parent, rel)
    if not path.exists():
        raise InputError(f"line {line}: {what} file {rel!r} not found (paths are relative to the CSV)", csv_path)
    return path


def _names_for_indices(csv_path: Path, rows, tokens, name_col: str | None, cell) -> list[str]:
    """Class names for integer labels: from a ``class_name`` column when present, else ``"0"``, ``"1"`` ..."""
    idx = [_as_int(t) for ts in tokens for t in ts]
    for (line, _), ts in zip(rows, tokens):
        for t in ts:
            if _as_int(t) < 0:  # type: ignore[operator]
                raise InputError(f"line {line}: negative label {t!r}", csv_path)
    n = max(idx) + 1  # type: ignore[type-var]
    mapping: dict[int, str] = {}
    if name_col is not None:
        for (line, row), ts in zip(rows, tokens):
            nm = [x.strip() for x in cell(row, name_col).split("|") if x.strip()]
            if not nm:
                continue
            if len(nm) != len(ts):
                raise InputError(f"line {line}: {len(ts)} labels but {len(nm)} class names", csv_path)
            for t, name in zip(ts, nm):
                i = _as_int(t)
                if mapping.setdefault(i, name) != name:  # type: ignore[arg-type]
                    raise InputError(
                        f"line {line}: label {i} is called {name!r} here but {mapping[i]!r} earlier", csv_path
                    )
    return [mapping.get(i, str(i)) for i in range(n)]


def _encode(
    csv_path: Path, line: int, toks: list[str], names: list[str], multi: bool, numeric: bool, fixed: bool
) -> int | list[int] | None:
    """Label tokens of one row -> an index (single-label) or a list of indices (multi-label)."""
    out: list[int] = []
    for t in toks:
        if t in names and (fixed or not numeric):
            out.append(names.index(t))
            continue
        i = _as_int(t) if (numeric or fixed) else None
        if i is None:
            raise InputError(f"line {line}: unknown class {t!r}; known: {', '.join(names)}.{_close(t, names)}", csv_path)
        if not 0 <= i < len(names):
            raise InputError(f"line {line}: label {i} is out of range for {len(names)} classes", csv_path)
        out.append(i)
    if multi:
        return sorted(set(out))
    if not out:
        raise InputError(f"line {line}: empty label", csv_path)
    return out[0]


# ------------------------------------------------------------------------------------------------
# checks before training, normal classes, prediction helpers
# ------------------------------------------------------------------------------------------------
def _norm_name(name: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def normal_class_index(names: Sequence[str], given: Any = None, *, where: Any = None) -> tuple[int | None, str]:
    """The index of the normal class among ``names`` and how it was chosen (for a note).

    ``given`` (``data.normal_class`` / ``--normal-class``): a class name (case-insensitive) or an index.
    Otherwise a class named like :data:`NORMAL_NAMES` (``normal``, ``healthy``, ``No Finding``,
    ``No_findings`` ...), else ``"0"`` when every class name is an integer (a 0/1-labelled set).
    Returns ``(None, reason)`` when none is found; an unknown ``given`` raises :class:`InputError`.
    """
    norm = [_norm_name(n) for n in names]
    if given is not None and str(given).strip() not in ("", "none", "null"):
        g = _norm_name(given)
        if g in norm:
            return norm.index(g), f"data.normal_class={given}"
        i = _as_int(str(given).strip())
        if i is not None and 0 <= i < len(names):
            return i, f"data.normal_class={given} (label {i})"
        raise InputError(
            f"normal class {given!r} is not one of the classes ({', '.join(map(str, names))})", where
        )
    for i, n in enumerate(norm):
        if n in NORMAL_NAMES:
            return i, f"the class named {names[i]!r}"
    if norm and all(_as_int(n) is not None for n in norm) and "0" in norm:
        return norm.index("0"), "label 0 of integer labels"
    return None, f"no class is named normal / healthy / no finding ({', '.join(map(str, names))})"


def check_classes(train: LocalDataset, val: LocalDataset | None, where: Any = None) -> None:
    """One-line errors, before training, for classes a single-label classifier cannot learn or validate.

    A class with one image in all (naming it and its file), a class with images in validation but none
    in training, and a class with training images but none in validation.
    """
    if train.labels is None or train.multi_label:
        return
    names = train.class_names
    tr = Counter(int(lab) for lab in train.labels if lab is not None)
    va = Counter(int(lab) for lab in (val.labels or [])) if val is not None and val.labels is not None else Counter()
    same_files = val is not None and set(val.files) == set(train.files)
    for c, name in enumerate(names):
        total = tr[c] + (0 if same_files else va[c])
        if total == 1 and not same_files:
            single = train if tr[c] else val
            f = next(p for p, lab in zip(single.files, single.labels) if lab == c)  # type: ignore[union-attr, arg-type]
            raise InputError(
                f"class {name!r} has only one image ({f.name}); a class needs at least two, one to train on and one to "
                "validate on (add images or drop the class)",
                where,
            )
        if va[c] and not tr[c]:
            raise InputError(f"class {name!r} has {va[c]} validation images but no training images", where)
        if val is not None and val.labels is not None and tr[c] and not va[c]:
            how = {"carved": "the carved validation set", "holdout": "the held-out validation set",
                   "column": "the split column's val rows", "folders": "the val/ folder"}.get(
                       str(val.split_source), "the validation data")  # fmt: skip
            raise InputError(
                f"class {name!r} has no validation images in {how} (its {tr[c]} images are all in train); "
                "add some to the validation split",
                where,
            )
