"""Do the chest X-ray anomaly maps point at the finding? Scored against NIH's expert bounding boxes.

The image score of the X-ray anomaly recipe ranks pneumonia films above normal ones (``real_data.py``,
``xray_anomaly``); this script asks the other question a radiologist asks of the map: does its hot region
fall on the opacity, or on the heart, the diaphragm, the ribs and the film's edge? ChestX-ray14 ships
bounding boxes drawn by radiologists for 984 findings (``BBox_List_2017.csv``, NIH Clinical Center, no
restrictions on use: download it with the images). For every film of the real X-ray set that has a box for
``--finding``, it scores, on the film's own grid:

* ``unimae``: the anomaly model's map, as ``unimae predict`` and the app give it;
* ``unimae_vs_normals``: the same map divided by the mean map of the set's normal films, position by position
  (chest films are roughly aligned, so this removes what every normal film's map also shows there);
* ``intensity_z``: a reference with no model: each pixel's absolute z-score against the normal films' mean
  and standard deviation at that pixel;

and per film: **pointing** (the map's maximum falls inside the box), **pixel AUROC** (box pixels against the
rest of the film), **top-10 % in box** (the share of the film's hottest tenth of pixels inside the box; chance
is the box's share of the film, printed as ``box area``) and **top-10 % on the edge** (the share of the hottest
tenth within 8 % of the film's border: the film's edge, not the lungs). The normal films are those the
model was trained on (all but its card's ``held_out`` films). On the held-out films it also gives the image
AUROC (normal vs the finding) of the recipe's image score, from the map as it is and from the map divided
by the normal mean map: a map that only marks what is unusual *at that place* should keep detecting.

    python benchmarks/xray_localization.py --boxes PATH/TO/BBox_List_2017.csv
    python benchmarks/xray_localization.py --boxes BBox_List_2017.csv --checkpoint runs/xray-anomaly/best --json

The boxes are in the original 1024 px films' pixels (``--source-size``) and are scaled to each film's size.
Nothing is copied into the project; without ``../shared/real`` the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_training import DEFAULT_REAL, ROOT, auroc, summary  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "domains" / "xray" / "demo" / "anomaly"
MAPS = ("unimae", "unimae_vs_normals", "intensity_z")
EDGE = 0.08  # the outer 8 % of the film on each side


class BoxError(ValueError):
    """A boxes file that cannot be read as NIH's ``BBox_List_2017.csv``."""


def read_nih_boxes(path: Path, finding: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{image name: [(x, y, w, h), ...]}`` of ``finding`` from NIH's box list.

    The file's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (the coordinate columns split over
    the brackets), so fields are taken by position: name, finding, x, y, w, h.
    """
    path = Path(path)
    if not path.is_file():
        raise BoxError(f"{path}: no such boxes file (NIH's BBox_List_2017.csv)")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or len(header) < 3 or header[0].strip().lower() != "image index" \
                or "finding" not in header[1].lower():  # fmt: skip
            raise BoxError(f"{path}: not NIH's box list (expected a header 'Image Index,Finding Label,Bbox [x,y,w,h]')")
        out: dict[str, list[tuple[float, float, float, float]]] = {}
        for line, row in enumerate(reader, start=2):
            if not row or not row[0].strip():
                continue
            if len(row) < 6:
                raise BoxError(f"{path}, line {line}: {len(row)} fields, need name, finding, x, y, w, h")
            if row[1].strip().lower() != finding.lower():
                continue
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError:
                raise BoxError(f"{path}, line {line}: box {row[2:6]} is not four numbers") from None
            if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
                raise BoxError(f"{path}, line {line}: box {row[2:6]} has no area")
            out.setdefault(row[0].strip(), []).append((x, y, w, h))
    return out


def box_mask(shape: Sequence[int], boxes: Sequence[tuple[float, float, float, float]], scale: float) -> np.ndarray:
    """Pixels of a ``shape`` film covered by any of ``boxes`` (source pixels times ``scale``; pixel centres)."""
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), bool)
    for bx, by, bw, bh in boxes:
        x0, y0, x1, y1 = bx * scale, by * scale, (bx + bw) * scale, (by + bh) * scale
        inside |= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    return inside


def localization_scores(heat: np.ndarray, inside: np.ndarray, edge: float = EDGE) -> dict[str, float]:
    """Pointing, pixel AUROC, top-10 % share in the box and on the edge, and the box's share of the film."""
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != inside.shape:
        raise ValueError(f"map {heat.shape} and box mask {inside.shape} differ")
    if not inside.any() or inside.all():
        raise ValueError("the box covers none or all of the film")
    iy, ix = np.unravel_index(int(np.argmax(heat)), heat.shape)
    k = max(1, int(round(0.1 * heat.size)))
    top = np.zeros(heat.size, bool)
    top[np.argsort(heat.ravel(), kind="stable")[-k:]] = True  # exactly the hottest tenth, ties broken by position
    top = top.reshape(heat.shape)
    h, w = heat.shape
    eh, ew = max(1, int(round(edge * h))), max(1, int(round(edge * w)))
    border = np.ones_like(inside)
    border[eh:h - eh, ew:w - ew] = False
    return {"pointing": float(inside[iy, ix]), "pixel_auroc": auroc(heat.ravel(), inside.ravel()),
            "top10_in_box": float((top & inside).sum() / k), "top10_on_edge": float((top & border).sum() / k),
            "box_area": float(inside.mean())}  # fmt: skip


def _grey(path: Path, shape: Sequence[int] | None = None) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("L")
    if shape is not None and img.size != (shape[1], shape[0]):
        img = img.resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _resized(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    import cv2

    if a.shape == tuple(shape):
        return a
    return cv2.resize(a.astype(np.float32), (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def _shown(path: Path) -> str:
    """``path`` relative to the project when it is inside it (no machine's absolute path in a report)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT.resolve()))
    except ValueError:
        return str(path)


def run(real: Path, boxes_path: Path, checkpoint: Path, finding: str = "Pneumonia", normal_class: str = "No_findings",
        source_size: int = 1024, max_normals: int | None = None) -> dict[str, Any]:
    """Every film of ``real/xray`` with a box for ``finding``, its maps and their scores (see the module doc)."""
    from scipy.ndimage import gaussian_filter

    from unimae.apps.predict import load_predictor
    from unimae.apps.predict_stream import top_mean

    root = Path(real) / "xray"
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"path", "class_name"} - set(rows[0] if rows else {})
    if missing:
        raise BoxError(f"{root / 'manifest.csv'}: no {', '.join(sorted(missing))} column")
    boxes = read_nih_boxes(boxes_path, finding)
    films = [r for r in rows if r["class_name"] != normal_class and Path(r["path"]).name in boxes]
    if not films:
        raise BoxError(f"{boxes_path}: no box for {finding!r} matches a {finding} film of {root / 'manifest.csv'}")
    predictor = load_predictor(checkpoint, device="cpu", precision="auto")
    if predictor.task_def.name != "anomaly" or predictor.domain != "xray":
        raise BoxError(f"{checkpoint}: a {predictor.domain} {predictor.task_def.name} model, not an X-ray anomaly model")
    held = set((predictor.meta.get("model_card") or {}).get("held_out") or ())  # the films the model never saw
    normals = [r for r in rows if r["class_name"] == normal_class and f"xray/{r['path']}" not in held]
    if max_normals is not None:
        normals = normals[: int(max_normals)]
    grid = _grey(root / films[0]["path"]).shape  # the normal statistics' grid (NIH films are square)
    heat_n = np.stack([_resized(predictor.predict(root / r["path"], keep_source=False).heatmap, grid) for r in normals])
    grey_n = np.stack([_grey(root / r["path"], grid) for r in normals])
    # the normal films' mean map, smoothed over a few pixels so that no one film's detail remains
    heat_mean = gaussian_filter(heat_n.mean(0), 2.0) + 1e-6 * float(heat_n.mean() + 1e-12)
    grey_mean, grey_std = grey_n.mean(0), grey_n.std(0) + 1e-3
    per_film = []
    for r in films:
        path = root / r["path"]
        heat = predictor.predict(path, keep_source=False).heatmap.astype(np.float32)
        grey = _grey(path)
        inside = box_mask(heat.shape, boxes[Path(r["path"]).name], heat.shape[1] / float(source_size))
        maps = {"unimae": heat, "unimae_vs_normals": heat / _resized(heat_mean, heat.shape),
                "intensity_z": np.abs(grey - _resized(grey_mean, grey.shape)) / _resized(grey_std, grey.shape)}  # fmt: skip
        per_film.append({"film": f"xray/{r['path']}", **{k: localization_scores(_resized(m, heat.shape), inside)
                                                        for k, m in maps.items()}})  # fmt: skip
    out: dict[str, Any] = {"finding": finding, "films": len(per_film), "normals": len(normals),
                           "checkpoint": _shown(checkpoint), "per_film": per_film}  # fmt: skip
    for k in MAPS:
        out[k] = {m: summary([f[k][m] for f in per_film]) for m in per_film[0][k]}
    # the image score (mean of the map's hottest tenth, as the recipe scores) of the films the model never saw,
    # from the map as it is and from the map divided by the normal films' mean map
    test = [r for r in rows if f"xray/{r['path']}" in held]
    if test and any(r["class_name"] == normal_class for r in test) and any(r["class_name"] != normal_class for r in test):
        truth = [r["class_name"] != normal_class for r in test]
        heats = [predictor.predict(root / r["path"], keep_source=False).heatmap.astype(np.float32) for r in test]
        everywhere = np.ones(heats[0].shape, bool)
        out["image_auroc_held_out"] = {
            "films": len(test),
            "unimae": auroc([top_mean(h, everywhere, 0.1) for h in heats], truth),
            "unimae_vs_normals": auroc([top_mean(h / _resized(heat_mean, h.shape), everywhere, 0.1) for h in heats], truth),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=Path, required=True, help="NIH's BBox_List_2017.csv")
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the real data folder (default ../shared/real)")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="an X-ray anomaly model (default: the demo)")
    ap.add_argument("--finding", default="Pneumonia")
    ap.add_argument("--normal-class", default="No_findings")
    ap.add_argument("--source-size", type=int, default=1024, help="the width the boxes were drawn on (NIH: 1024)")
    ap.add_argument("--max-normals", type=int, default=None, help="use only the first N normal films (smoke runs)")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = ap.parse_args(argv)
    if not (args.real / "xray" / "manifest.csv").is_file():
        print(f"xray_localization: {args.real / 'xray' / 'manifest.csv'} is absent; nothing to score", file=sys.stderr)
        return 0
    try:
        res = run(args.real, args.boxes, args.checkpoint, args.finding, args.normal_class, args.source_size,
                  args.max_normals)  # fmt: skip
    except (BoxError, FileNotFoundError, ValueError) as e:
        print(f"xray_localization: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['films']} {res['finding']} films with a radiologist's box; normal statistics from {res['normals']} "
          f"normal films; checkpoint {res['checkpoint']}")  # fmt: skip
    print(f"{'map':<20} {'pointing':>9} {'pixel AUROC':>12} {'top10% in box':>14} {'top10% on edge':>15} {'box area':>9}")
    for k in MAPS:
        s = res[k]
        print(f"{k:<20} {s['pointing']['mean']:>9.2f} {s['pixel_auroc']['mean']:>6.3f} ± {s['pixel_auroc']['std']:.3f}"
              f" {s['top10_in_box']['mean']:>14.2f} {s['top10_on_edge']['mean']:>15.2f} {s['box_area']['mean']:>9.2f}")  # fmt: skip
    if "image_auroc_held_out" in res:
        a = res["image_auroc_held_out"]
        print(f"image AUROC on the model's {a['films']} held-out films (score: mean of the map's hottest tenth): "
              f"map as it is {a['unimae']:.3f}, divided by the normal mean map {a['unimae_vs_normals']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
