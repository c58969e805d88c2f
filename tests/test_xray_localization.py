"""benchmarks/xray_localization.py: NIH's box list is read as released, and the localisation scores mean what they say."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
DEMO = ROOT / "domains" / "xray" / "demo" / "anomaly.json"


@pytest.fixture(scope="module")
def loc():
    spec = importlib.util.spec_from_file_location("xray_localization", ROOT / "benchmarks" / "xray_localization.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nih_box_list_is_read_by_position_whatever_the_bracketed_header(loc, tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                 "a.png,Pneumonia,10,20,30,40\n"            # as released: six fields
                 "a.png,Pneumonia,100,200,5.5,6,,,\n"       # with the header's trailing empties
                 "b.png,Nodule,1,2,3,4\n"
                 "c.png,pneumonia,0,0,1,1\n")  # fmt: skip
    boxes = loc.read_nih_boxes(p, "Pneumonia")
    assert boxes == {"a.png": [(10.0, 20.0, 30.0, 40.0), (100.0, 200.0, 5.5, 6.0)], "c.png": [(0.0, 0.0, 1.0, 1.0)]}
    assert loc.read_nih_boxes(p, "Nodule") == {"b.png": [(1.0, 2.0, 3.0, 4.0)]}


@pytest.mark.parametrize(("text", "match"), [
    ("path,label\nx.png,1\n", "not NIH's box list"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Pneumonia,1,2,three,4\n", "line 2: box .* not four numbers"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Pneumonia,1,2,0,4\n", "line 2: .* no area"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Pneumonia,1,2\n", "line 2: 4 fields"),
])  # fmt: skip
def test_a_file_that_is_not_the_box_list_is_named_with_its_line(loc, tmp_path, text, match):
    p = tmp_path / "boxes.csv"
    p.write_text(text)
    with pytest.raises(loc.BoxError, match=match):
        loc.read_nih_boxes(p, "Pneumonia")
    with pytest.raises(loc.BoxError, match="no such boxes file"):
        loc.read_nih_boxes(tmp_path / "absent.csv", "Pneumonia")


def test_boxes_scale_from_the_1024_px_original_to_the_film(loc):
    inside = loc.box_mask((256, 256), [(512, 256, 256, 128)], 256 / 1024)
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (64, 95, 128, 191)
    two = loc.box_mask((256, 256), [(0, 0, 64, 64), (960, 960, 64, 64)], 0.25)
    assert two.sum() == 2 * 16 * 16 and two[0, 0] and two[255, 255]


def test_scores_tell_a_map_on_the_box_from_one_on_the_heart_or_the_edge(loc):
    inside = np.zeros((100, 100), bool)
    inside[20:60, 50:90] = True  # 16 % of the film
    yy, xx = np.mgrid[0:100, 0:100]
    on_box = -((yy - 40) ** 2 + (xx - 70) ** 2).astype(float)  # peaks in the box's centre
    s = loc.localization_scores(on_box, inside)
    assert s["pointing"] == 1.0 and s["pixel_auroc"] > 0.95 and s["top10_in_box"] == 1.0
    assert s["box_area"] == pytest.approx(0.16) and s["top10_on_edge"] == 0.0
    elsewhere = -((yy - 75) ** 2 + (xx - 25) ** 2).astype(float)  # "the heart": away from the box
    e = loc.localization_scores(elsewhere, inside)
    assert e["pointing"] == 0.0 and e["pixel_auroc"] < 0.5 and e["top10_in_box"] == 0.0
    edge = np.zeros((100, 100))
    edge[:, :5] = 1.0  # a bright film border
    b = loc.localization_scores(edge, inside)
    assert b["top10_on_edge"] == 1.0 and b["top10_in_box"] == 0.0
    flat = loc.localization_scores(np.ones((100, 100)), inside)
    assert flat["pixel_auroc"] == pytest.approx(0.5)  # a map with no opinion is at chance
    with pytest.raises(ValueError, match="covers none"):
        loc.localization_scores(on_box, np.zeros((100, 100), bool))


@pytest.mark.skipif(not (REAL / "xray" / "manifest.csv").is_file(), reason="../shared/real/xray is absent")
@pytest.mark.skipif(not DEMO.is_file(), reason="the X-ray anomaly demo model is not shipped")
def test_the_script_scores_the_shipped_model_on_real_films(loc, tmp_path, capsys):
    rows = list(csv.DictReader(open(REAL / "xray" / "manifest.csv", newline="")))
    sick = [r for r in rows if r["class_name"] == "Pneumonia"][:2]
    boxes = tmp_path / "BBox_List_2017.csv"  # plumbing only: boxes of our own over the lower right lung
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                     + "".join(f"{Path(r['path']).name},Pneumonia,560,400,300,400\n" for r in sick))  # fmt: skip
    assert loc.main(["--boxes", str(boxes), "--real", str(REAL), "--max-normals", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["films"] == 2 and res["normals"] == 3 and res["checkpoint"] == "domains/xray/demo/anomaly"
    assert [f["film"] for f in res["per_film"]] == [f"xray/{r['path']}" for r in sick]
    for arm in ("unimae", "unimae_vs_normals", "intensity_z"):
        assert 0.0 <= res[arm]["pixel_auroc"]["mean"] <= 1.0
        assert res[arm]["box_area"]["mean"] == pytest.approx(300 * 400 / 1024**2, abs=0.01)
    held = res["image_auroc_held_out"]  # the demo model's held-out fold, normal and pneumonia films
    assert held["films"] > 50 and all(0.0 <= held[k] <= 1.0 for k in ("unimae", "unimae_vs_normals"))
    nothing = tmp_path / "none.csv"
    nothing.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nnot_in_the_set.png,Pneumonia,1,2,3,4\n")
    assert loc.main(["--boxes", str(nothing), "--real", str(REAL)]) == 2
    assert "no box for 'Pneumonia' matches" in capsys.readouterr().err
