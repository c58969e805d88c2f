"""Dataset layouts read from folders: images + masks folders, masks beside their images, a folder per class.

:func:`unimae.domains.layouts.local_dataset` decides which layout a source has and calls these. Also the
helpers that find an image's companions on disk (its field-of-view mask, a dataset's image folder, the
masks among a folder's files) and the size check of masks against their images.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from unimae.core.errors import InputError
from unimae.domains.localdata import (
    FOV_DIRS,
    FOV_SUFFIXES,
    IMAGE_DIRS,
    IMAGE_SUFFIXES,
    LAYOUT_HELP,
    MASK_DIRS,
    MASK_EXTENSIONS,
    MASK_SUFFIXES,
    PAIRED_MASK_SUFFIXES,
    LocalDataset,
    _accepted,
    _few,
    _hidden,
    _is_dicom_dir,
    _is_image,
    _list_images,
    _norm_split,
    _stem,
    _subdirs,
)

if TYPE_CHECKING:
    from unimae.domains.base import DomainPlugin

__all__ = ["mask_files_among", "fov_for_image", "image_folder_of", "check_sizes"]


def _from_folder_layout(plugin: DomainPlugin, root: Path, want: str, mask_dir: str | None, opts: dict) -> LocalDataset:
    class_names = opts.get("class_names")
    multi = bool(opts.get("multi_label"))
    subs = _subdirs(root, plugin)
    split_dirs = {s: _norm_split(s.name) for s in subs}
    if subs and all(split_dirs.values()) and not _list_images(root, plugin, recurse=False):
        if class_names is None:  # the same class indices in every split
            union: set[str] = set()
            for s in subs:
                union.update(c.name for c in _class_dirs(s, plugin))
            class_names = sorted(union) if len(union) >= 2 else None
        present = {str(name) for name in split_dirs.values()}
        # read the wanted split's folder, or train/ when val is to be carved out of it
        read = want if want in present else ("train" if want == "val" and "train" in present else None)
        if read is None:
            found = ", ".join(s.name for s in subs)
            raise InputError(f"no {want} split folder (found {found}); add {want}/ or pass it as its own source", root)
        chosen = next(s for s, name in split_dirs.items() if name == read)
        ds = _from_plain_folder(plugin, chosen, class_names, mask_dir, multi)
        ds.item_splits = [read] * len(ds)  # type: ignore[attr-defined]
        ds.present_splits = present  # type: ignore[attr-defined]
        ds.split_folder_names = [s.name for s in subs]  # type: ignore[attr-defined]
        ds.split_source = "folders"
        ds.root = root
        return ds
    return _from_plain_folder(plugin, root, class_names, mask_dir, multi)


def _class_dirs(folder: Path, plugin: DomainPlugin) -> list[Path]:
    """Sub-folders that hold images (class folders), when ``folder`` has no loose images."""
    if _list_images(folder, plugin, recurse=False):
        return []
    return [s for s in _subdirs(folder, plugin) if _list_images(s, plugin, recurse=True)]


def _from_plain_folder(
    plugin: DomainPlugin, root: Path, class_names: Sequence[str] | None, mask_dir: str | None, multi_label: bool = False
) -> LocalDataset:
    # a 3D source that is itself one DICOM series
    if plugin.spatial_dims == 3 and _is_dicom_dir(root):
        return LocalDataset(plugin, [root], layout="folder", root=root)

    by_name = {s.name.lower(): s for s in _subdirs(root, plugin)}
    img_dir = next((by_name[n] for n in IMAGE_DIRS if n in by_name), None)
    if mask_dir is not None:
        m = root / mask_dir
        if not m.is_dir():
            raise InputError(f"mask folder {mask_dir!r} not found", root)
        if img_dir is None:
            raise InputError(f"mask folder {mask_dir!r} given but no images/ folder beside it", root)
        seg_dir: Path | None = m
    else:
        seg_dir = next((by_name[n] for n in MASK_DIRS if n in by_name), None)
    fov_dir = _fov_dir(by_name, seg_dir, img_dir, plugin) if img_dir is not None else None
    if fov_dir is not None and fov_dir == seg_dir:
        if mask_dir is not None:
            fov_dir = None  # asked for as the label masks
        else:
            seg_dir = None  # DRIVE's test/ with images/ + mask/ only: FOV masks
    if img_dir is not None and seg_dir is not None:
        ds = _from_segmentation(plugin, root, img_dir, seg_dir)
        if fov_dir is not None:
            _attach_fovs(ds, fov_dir)
        return ds
    if img_dir is not None and not _list_images(root, plugin, recurse=False):
        files = _list_images(img_dir, plugin, recurse=True)
        _require(files, img_dir, plugin)
        ds = LocalDataset(plugin, files, layout="folder", root=root)
        if fov_dir is not None:
            _attach_fovs(ds, fov_dir)
        return ds

    paired = _from_paired_folder(plugin, root)
    if paired is not None:
        return paired

    classes = _class_dirs(root, plugin)
    if len(classes) >= 2 or (classes and class_names is not None):
        names = list(class_names) if class_names is not None else [c.name for c in classes]
        files: list[Path] = []
        labels: list[int] = []
        for c in classes:
            if c.name not in names:
                raise InputError(f"class folder {c.name!r} is not one of the classes {names}", root)
            imgs = [f for f in _list_images(c, plugin, recurse=True)]
            masks_here = mask_files_among(imgs)
            imgs = [f for f in imgs if f not in masks_here]
            files.extend(imgs)
            labels.extend([names.index(c.name)] * len(imgs))
        ds = LocalDataset(
            plugin, files, labels=[[lab] for lab in labels] if multi_label else labels, class_names=names,
            multi_label=multi_label, layout="class_folders", root=root,
        )  # fmt: skip
        kind = "multi-label (data.multi_label=true)" if multi_label else "single-label, one class per image"
        ds.notes.append(f"classes: one per folder ({', '.join(names)}); {kind}")
        return ds

    files = _list_images(root, plugin, recurse=True)
    _require(files, root, plugin)
    return LocalDataset(plugin, files, layout="folder", root=root)


def _fov_dir(by_name: dict[str, Path], seg_dir: Path | None, img_dir: Path, plugin: DomainPlugin) -> Path | None:
    """The field-of-view folder beside ``images/``: an FOV-named folder, or DRIVE's ``mask/``."""
    fov = next((by_name[n] for n in FOV_DIRS if n in by_name), None)
    if fov is not None:
        return fov
    drive_mask = by_name.get("mask")
    if drive_mask is None:
        return None
    if seg_dir is not None and seg_dir != drive_mask:
        return drive_mask  # DRIVE training/: 1st_manual/ holds the vessels, mask/ the field of view
    # images/ + mask/ only: FOV masks when named like DRIVE's (<image stem>_mask), e.g. DRIVE test/
    images = _list_images(img_dir, plugin, recurse=False)
    stems = {_stem(m).lower() for m in drive_mask.iterdir() if m.is_file() and not _hidden(m)}
    if images and all(f"{_stem(i).lower()}_mask" in stems for i in images) and any(
        _stem(i).lower().endswith(("_test", "_training")) for i in images
    ):
        return drive_mask
    return None


def _stem_matcher(candidates: Sequence[Path], suffixes: Sequence[str]) -> Callable[[Path], list[Path]]:
    """``image -> the candidates matching it``: the same stem, else the stem plus one of ``suffixes``
    (``_mask``, ``_manual1`` ...), else the image's stem without its own suffix (``_training``)."""
    by_stem: dict[str, list[Path]] = {}
    by_key: dict[str, list[Path]] = {}
    for m in candidates:
        by_stem.setdefault(_stem(m).lower(), []).append(m)
        by_key.setdefault(_strip(_stem(m), suffixes), []).append(m)

    def find(img: Path) -> list[Path]:
        stem = _stem(img).lower()
        for table, k in ((by_stem, stem), (by_key, stem), (by_key, _strip(stem, IMAGE_SUFFIXES))):
            if table.get(k):
                return table[k]
        return []

    return find


def _match(folder: Path, images: Sequence[Path], suffixes: Sequence[str]) -> tuple[list[Path | None], list[str]]:
    """Per image, the file of ``folder`` with its stem (or its stem + one of ``suffixes``)."""
    candidates = [p for p in sorted(folder.iterdir()) if not _hidden(p) and p.is_file()]
    find = _stem_matcher(candidates, suffixes)
    out: list[Path | None] = []
    missing: list[str] = []
    for img in images:
        found = find(img)
        out.append(found[0] if found else None)
        if not found:
            missing.append(img.name)
    return out, missing


def _attach_fovs(ds: LocalDataset, fov_dir: Path) -> None:
    fovs, missing = _match(fov_dir, ds.files, (*FOV_SUFFIXES, "_mask", "_masks"))
    if all(f is None for f in fovs):
        return
    ds.fovs = fovs
    ds.columns["fov"] = f"{fov_dir.name}/ folder"
    if missing:
        ds.notes.append(f"field of view: {len(missing)} images have no FOV mask in {fov_dir.name}/ ({_few(missing)}); "
                        "detected from intensity for those")  # fmt: skip


def _require(files: Sequence[Path], folder: Path, plugin: DomainPlugin) -> None:
    if not files:
        raise InputError(f"no {plugin.name} images found (accepted: {_accepted(plugin)}); {LAYOUT_HELP}", folder)


def _strip(stem: str, suffixes: Sequence[str]) -> str:
    low = stem.lower()
    for s in suffixes:
        if low.endswith(s) and len(low) > len(s):
            return low[: -len(s)]
    return low


def _from_segmentation(plugin: DomainPlugin, root: Path, img_dir: Path, seg_dir: Path) -> LocalDataset:
    images = _list_images(img_dir, plugin, recurse=False)
    _require(images, img_dir, plugin)
    candidates = [p for p in sorted(seg_dir.iterdir()) if not _hidden(p) and (p.is_file() or _is_image(p, plugin))]
    find = _stem_matcher(candidates, MASK_SUFFIXES)

    masks: list[Path] = []
    missing: list[str] = []
    for img in images:
        found = find(img)
        if not found:
            missing.append(img.name)
            continue
        if len(found) > 1:
            raise InputError(
                f"image {img.name} matches several masks in {seg_dir.name}/: {_few([f.name for f in found])}", root
            )
        masks.append(found[0])
    if missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images in {img_dir.name}/ have no mask in {seg_dir.name}/: "
            f"{_few(missing)} (masks are matched by file stem, optionally with a suffix such as _mask)",
            root,
        )
    ds = LocalDataset(plugin, images, masks=masks, layout="segmentation", root=root)
    ds.columns["mask"] = f"{seg_dir.name}/ folder"
    return ds


# -- images and masks in one folder (CHASE_DB1, STARE, x.png + x_mask.png) --------------------------
def _mask_role(stem: str, image_stems: set[str]) -> tuple[str, str, str] | None:
    """``(kind, image stem, suffix)`` when ``stem`` is an image's stem plus a mask or FOV suffix."""
    low = stem.lower()
    for kind, suffixes in (("fov", FOV_SUFFIXES), ("mask", PAIRED_MASK_SUFFIXES)):
        for s in suffixes:
            if low.endswith(s) and low[: -len(s)] in image_stems:
                return kind, low[: -len(s)], s
    return None


def mask_files_among(files: Iterable[str | Path]) -> set[Path]:
    """The files of ``files`` that are some other file's mask or FOV mask (same folder, stem + suffix).

    ``Image_01L_1stHO.png`` beside ``Image_01L.jpg`` (CHASE_DB1), ``im0001.ah.ppm`` beside ``im0001.ppm``
    (STARE), ``x_mask.png`` / ``x_fov.png`` beside ``x.png``. Used so that ``predict`` never runs on a mask.
    """
    paths = [Path(f) for f in files]
    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, []).append(p)
    out: set[Path] = set()
    for group in by_folder.values():
        stems = {_stem(p).lower() for p in group}
        for p in group:
            stem = _stem(p).lower()
            role = _mask_role(stem, stems - {stem})
            if role is not None:
                out.add(p)
    return out


def _from_paired_folder(plugin: DomainPlugin, root: Path) -> LocalDataset | None:
    """Images with their masks beside them in ``root``; None when no file there is an image's mask."""
    files = [p for p in sorted(root.iterdir()) if p.is_file() and not _hidden(p)]
    accepted = [p for p in files if plugin.accepts(p)]
    if not accepted:
        return None
    maskish = [p for p in files if p.name.lower().endswith(MASK_EXTENSIONS) or plugin.accepts(p)]
    all_stems = {_stem(p).lower() for p in accepted}
    roles: dict[Path, tuple[str, str, str]] = {}
    for p in maskish:
        stem = _stem(p).lower()
        role = _mask_role(stem, all_stems - {stem})
        if role is not None:
            roles[p] = role
    if not roles:
        return None
    images = [p for p in accepted if p not in roles]
    if not images:
        return None
    masks: list[Path | None] = []
    fovs: list[Path | None] = []
    missing: list[str] = []
    used: set[str] = set()
    alternatives: set[str] = set()
    order = {s: i for i, s in enumerate(PAIRED_MASK_SUFFIXES)}
    by_image: dict[str, list[tuple[Path, tuple[str, str, str]]]] = {}
    for p, r in roles.items():
        by_image.setdefault(r[1], []).append((p, r))
    for img in images:
        stem = _stem(img).lower()
        mine = by_image.get(stem, [])
        segs = sorted((x for x in mine if x[1][0] == "mask"), key=lambda x: order.get(x[1][2], 99))
        fov = next((p for p, r in mine if r[0] == "fov"), None)
        fovs.append(fov)
        if segs:
            masks.append(segs[0][0])
            used.add(segs[0][1][2])
            alternatives.update(r[2] for _, r in segs[1:])
        else:
            masks.append(None)
            missing.append(img.name)
    has_masks = any(m is not None for m in masks)
    if has_masks and missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images have no mask beside them: {_few(missing)} (in this folder "
            f"masks are named after their image with a suffix such as {', '.join(sorted(used))})",
            root,
        )
    ds = LocalDataset(plugin, images, masks=masks if has_masks else None, fovs=fovs, layout="paired", root=root)
    if has_masks:
        ds.columns["mask"] = "masks beside their images (" + ", ".join(sorted(used)) + ")"
        alt = sorted(alternatives - used)
        extra = f"; other annotations ({', '.join(alt)}) not used" if alt else ""
        ds.notes.append(f"masks: {len(images)} images with their masks beside them (suffix {', '.join(sorted(used))}){extra}")
    if ds.fovs is not None:
        ds.columns["fov"] = "_fov files beside their images"
    return ds


def _image_hw(path: Path) -> tuple[int, ...] | None:
    """The spatial size of an image or mask from its header (PIL, NIfTI), or None when it cannot be told."""
    low = path.name.lower()
    try:
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return tuple(int(s) for s in nib.load(str(path)).shape[:3])
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return (int(im.height), int(im.width))
    except Exception:  # noqa: BLE001 - e.g. a multi-band GeoTIFF PIL cannot open: try rasterio
        pass
    if low.endswith((".tif", ".tiff")):
        try:
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(path) as src:
                    return (int(src.height), int(src.width))
        except Exception:  # noqa: BLE001
            return None
    return None


def check_sizes(ds: LocalDataset) -> None:
    """A one-line error naming the mask (or FOV mask) whose size differs from its image's, before training."""
    if ds.masks is None and ds.fovs is None:
        return
    for i, img in enumerate(ds.files):
        pairs = [("mask", ds.masks[i] if ds.masks is not None else None),
                 ("FOV mask", ds.fovs[i] if ds.fovs is not None else None)]  # fmt: skip
        if all(p is None for _, p in pairs) or img.is_dir():
            continue
        size = _image_hw(img)
        if size is None:
            continue
        for what, m in pairs:
            if m is None or m.is_dir():
                continue
            msize = _image_hw(m)
            if msize is not None and msize != size:
                def fmt(s: tuple[int, ...]) -> str:
                    return f"{s[1]}x{s[0]} (WxH)" if len(s) == 2 else "x".join(map(str, s))

                raise InputError(f"{what} is {fmt(msize)} but its image {img.name} is {fmt(size)}", m)


def fov_for_image(path: str | Path) -> Path | None:
    """A field-of-view mask published beside an image: DRIVE's ``../mask/<stem>_mask.gif``, an FOV folder,
    or ``<stem>_fov.*`` in the image's folder; None when there is none."""
    p = Path(path)
    folder = p.parent
    stem = _stem(p).lower()
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if f.is_file() and f != p and _stem(f).lower() in {stem + s for s in FOV_SUFFIXES}:
            return f
    if folder.name.lower() not in IMAGE_DIRS:
        return None
    parent = folder.parent
    by_name = {s.name.lower(): s for s in parent.iterdir() if s.is_dir() and not _hidden(s)}
    dirs = [by_name[n] for n in FOV_DIRS if n in by_name]
    if "mask" in by_name:
        others = [n for n in MASK_DIRS if n in by_name and n != "mask"]
        m = by_name["mask"]
        names = {_stem(x).lower() for x in m.iterdir() if x.is_file()}
        if others or f"{stem}_mask" in names:
            dirs.append(m)
    for d in dirs:
        fovs, _ = _match(d, [p], (*FOV_SUFFIXES, "_mask", "_masks"))
        if fovs[0] is not None:
            return fovs[0]
    return None


def image_folder_of(folder: str | Path) -> Path | None:
    """The image sub-folder of a dataset folder (``images/`` beside ``1st_manual/``, ``mask/`` ...), if any."""
    f = Path(folder)
    if not f.is_dir():
        return None
    by_name = {s.name.lower(): s for s in f.iterdir() if s.is_dir() and not _hidden(s)}
    return next((by_name[n] for n in IMAGE_DIRS if n in by_name), None)
