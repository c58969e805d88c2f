"""Metrics against hand-computed values: classification, segmentation inside ``valid``, anomaly AUROC/AUPRO."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unimae.core import metrics as M

# ------------------------------------------------------------------------------------------------
# classification
# ------------------------------------------------------------------------------------------------
T = [0, 1, 2, 2, 1, 0]
P = [0, 2, 2, 1, 1, 0]


def test_confusion_accuracy_balanced_accuracy_by_hand():
    cm = M.confusion_matrix(T, P)
    assert cm.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert M.accuracy(T, P) == pytest.approx(4 / 6)
    # imbalanced: recall 1 for class 0 (1 sample), 1/3 for class 1 (3 samples) -> mean 2/3, accuracy 2/4
    t, p = [0, 1, 1, 1], [0, 1, 0, 0]
    assert M.accuracy(t, p) == pytest.approx(0.5)
    assert M.balanced_accuracy(t, p) == pytest.approx((1 + 1 / 3) / 2)
    # a class that is only predicted, never true, is left out of balanced accuracy (as scikit-learn)
    assert M.balanced_accuracy([0, 0, 1], [0, 2, 1], num_classes=3) == pytest.approx((0.5 + 1) / 2)


def test_macro_f1_by_hand():
    # class 0: tp 2 fp 1 fn 0 -> 4/5; class 1: tp 1 fp 0 fn 1 -> 2/3; class 2: tp 0 fp 0 fn 1 -> 0
    t, p = [0, 0, 1, 1, 2], [0, 0, 1, 0, 1]
    f1 = M.f1_scores(t, p)
    assert f1 == pytest.approx([0.8, 0.5, 0.0])  # class 1: tp 1 fp 1 fn 1 -> 2/4
    assert M.macro_f1(t, p) == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    # a class neither true nor predicted is undefined and not averaged
    f1 = M.f1_scores([0, 1], [0, 1], num_classes=3)
    assert math.isnan(f1[2]) and M.macro_f1([0, 1], [0, 1], num_classes=3) == pytest.approx(1.0)


def test_quadratic_kappa_by_hand():
    # O has (1,2) and (2,1) = 1, W = (i-j)^2/4 -> sum(W*O) = 0.5; marginals all 2 -> E = 2/3 each,
    # sum(W*E) = 2/3 * (4 * 1/4 + 2 * 1) = 2 -> kappa = 1 - 0.5/2
    assert M.quadratic_weighted_kappa(T, P) == pytest.approx(0.75)
    assert M.quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    # an off-by-one grade costs less than an off-by-three one
    near = M.quadratic_weighted_kappa([0, 1, 2, 3], [1, 1, 2, 3])
    far = M.quadratic_weighted_kappa([0, 1, 2, 3], [3, 1, 2, 3])
    assert 0 < far < near < 1
    # systematic disagreement is below chance
    assert M.quadratic_weighted_kappa([0, 0, 3, 3], [3, 3, 0, 0]) < 0
    # degenerate: everything one grade -> undefined
    assert math.isnan(M.quadratic_weighted_kappa([1, 1, 1], [1, 1, 1], num_classes=3))


def test_auroc_with_ties_counts_half():
    assert M.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positives 0.5, 0.8; negatives 0.5, 0.5: 0.8 beats both (2), 0.5 ties both (2 x 1/2) -> 3/4
    assert M.auroc([0.5, 0.5, 0.5, 0.8], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert M.auroc(torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0, 1, 1])) == pytest.approx(0.5)
    assert math.isnan(M.auroc([0.2, 0.9], [1, 1]))  # one class: undefined, not a crash
    with pytest.raises(ValueError, match="0 or 1"):
        M.auroc([0.2, 0.9], [0, 2])


def test_roc_curve_points_and_area():
    fpr, tpr, thr = M.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.8, 0.4, 0.35, 0.1]
    rng = np.random.default_rng(0)
    s, t = rng.random(300).round(2), (rng.random(300) < 0.4).astype(int)  # many ties
    fpr, tpr, _ = M.roc_curve(s, t)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.auroc(s, t), abs=1e-9)


def test_per_class_auroc_one_vs_rest_and_multi_label():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    aucs = M.per_class_auroc(probs, [0, 1, 2, 1])
    assert aucs == pytest.approx([1.0, 1.0, 1.0])
    # class 2 absent -> NaN for it
    # class 0 positives 0.7, 0.1 vs negatives 0.2, 0.4 -> 2/4; class 1: 0.5, 0.4 vs 0.2, 0.3 -> 1
    aucs = M.per_class_auroc(probs, [0, 1, 0, 1])
    assert aucs[:2] == pytest.approx([0.5, 1.0]) and math.isnan(aucs[2])
    hot = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    ml = M.per_class_auroc(probs, hot)
    assert ml[0] == pytest.approx(M.auroc(probs[:, 0], hot[:, 0]))
    assert ml[2] == pytest.approx(M.auroc(probs[:, 2], hot[:, 2]))


def test_classification_metrics_summary_multi_class():
    probs = np.eye(3)[P] * 0.8 + 0.2 / 3
    out = M.classification_metrics(probs, T, class_names=["g0", "g1", "g2"], ordinal=True)
    json.dumps(out, allow_nan=False)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["quadratic_kappa"] == pytest.approx(0.75)
    assert out["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert set(out["auroc"]) == {"g0", "g1", "g2"} and out["support"] == {"g0": 2, "g1": 2, "g2": 2}
    assert out["macro_auroc"] == pytest.approx(np.mean(list(out["auroc"].values())))


def test_classification_metrics_degenerate_gives_null_with_note():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    out = M.classification_metrics(probs, [0, 0], class_names=["normal", "disease"])
    text = json.dumps(out, allow_nan=False)  # no NaN leaks into JSON
    assert out["auroc"] == {"normal": None, "disease": None} and out["macro_auroc"] is None
    assert out["quadratic_kappa"] is None
    assert any("undefined" in n for n in out["notes"]) and "null" in text


def test_classification_metrics_multi_label():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    hot = np.array([[1, 0], [0, 1], [0, 0], [0, 1]])
    out = M.classification_metrics(probs, hot, class_names=["effusion", "nodule"], multi_label=True)
    # at 0.5: effusion predicted [1,0,1,0] vs [1,0,0,0] -> tp1 fp1 fn0 tn2; nodule [0,1,0,1] exact
    assert out["confusion"]["effusion"] == {"tp": 1, "fp": 1, "fn": 0, "tn": 2}
    assert out["accuracy"] == pytest.approx(7 / 8) and out["exact_match"] == pytest.approx(3 / 4)
    assert out["f1"]["effusion"] == pytest.approx(2 / 3) and out["f1"]["nodule"] == pytest.approx(1.0)
    assert out["balanced_accuracy"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert out["auroc"] == {"effusion": pytest.approx(1.0), "nodule": pytest.approx(1.0)}


# ------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------
def test_dice_iou_by_hand_and_only_inside_valid():
    pred = np.array([[0, 1, 1], [0, 1, 2], [2, 2, 2]])
    tgt = np.array([[0, 1, 1], [0, 1, 1], [2, 2, 0]])
    dice, iou = M.dice_iou(pred, tgt, 3)
    # class 0: |P|=2 |T|=3 inter 2 -> 4/5, 2/3; class 1: 3,4,3 -> 6/7, 3/4; class 2: 4,2,2 -> 4/6, 2/4
    assert dice == pytest.approx([0.8, 6 / 7, 2 / 3], abs=1e-6)
    assert iou == pytest.approx([2 / 3, 0.75, 0.5], abs=1e-6)
    # the wrong pixels (1,2) and (2,2) lie outside the field of view: inside it everything matches
    valid = np.ones((3, 3), bool)
    valid[1, 2] = valid[2, 2] = False
    dice, iou = M.dice_iou(torch.as_tensor(pred), torch.as_tensor(tgt), 3, valid=torch.as_tensor(valid))
    assert dice == pytest.approx([1.0, 1.0, 1.0]) and iou == pytest.approx([1.0, 1.0, 1.0])
    # a class absent from the truth is undefined (NaN), not 0
    dice, _ = M.dice_iou(pred, tgt, 4)
    assert math.isnan(dice[3])


def test_dice_iou_3d_and_label_confusion():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 3, (4, 5, 6))
    p = t.copy()
    p[0] = 0
    dice, iou = M.dice_iou(p, t, 3)
    cm = M.label_confusion(p, t, 3)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    assert dice == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert iou == pytest.approx(tp / (tp + fp + fn))
    assert cm.sum() == t.size


def test_segmentation_metrics_background_apart_and_pooled():
    dice = np.array([[0.9, 0.5, np.nan], [0.7, 0.7, np.nan]])
    iou = dice / (2 - dice)
    cm = np.array([[10, 2, 1], [1, 5, 0], [0, 0, 0]])
    out = M.segmentation_metrics(dice, iou, class_names=["background", "vessel", "lesion"], confusion=cm)
    json.dumps(out, allow_nan=False)
    assert out["dice"] == {"vessel": pytest.approx(0.6), "lesion": None}
    assert out["mean_dice"] == pytest.approx(0.6)  # background excluded, lesion undefined
    assert out["background"]["dice"] == pytest.approx(0.8)
    assert out["pooled"]["dice"]["vessel"] == pytest.approx(10 / (10 + 2 + 1))
    assert out["pooled"]["dice"]["lesion"] == pytest.approx(0.0)  # 1 false-positive pixel, no truth
    assert out["cases_with_class"]["lesion"] == 0 and any("lesion" in n for n in out["notes"])


def test_segmentation_metrics_real_class_zero_is_scored():
    dice = np.array([[0.4, 0.8], [0.6, np.nan]])
    out = M.segmentation_metrics(dice, dice, class_names=["water", "forest"])
    assert out["background"] is None and out["dice"] == {"water": pytest.approx(0.5), "forest": pytest.approx(0.8)}
    assert out["mean_dice"] == pytest.approx(0.65)
    forced = M.segmentation_metrics(dice, dice, class_names=["water", "forest"], background=True)
    assert forced["mean_dice"] == pytest.approx(0.8) and forced["background"]["dice"] == pytest.approx(0.5)
    assert M.is_background("Background") and not M.is_background("water")


# ------------------------------------------------------------------------------------------------
# anomaly
# ------------------------------------------------------------------------------------------------
def test_aupro_toy_case_by_hand():
    """Two regions of sizes 4 and 2 in a 10x10 image with 94 normal pixels.

    Scores: region A (4 px) = [0.9, 0.9, 0.2, 0.2], region B (2 px) = [0.8, 0.8], normal pixels 0.1 except
    ten at 0.5. Curve: t=0.9 -> (0, 0.25); t=0.8 -> (0, 0.75); t=0.5 -> (10/94, 0.75); t=0.2 -> (10/94, 1);
    t=0.1 -> (1, 1). Area to FPR 0.3: 0.75 * 10/94 + 1 * (0.3 - 10/94); normalised by 0.3.
    """
    amap = np.full((10, 10), 0.1)
    mask = np.zeros((10, 10), int)
    mask[0, 0:4] = 1
    amap[0, 0:4] = [0.9, 0.9, 0.2, 0.2]
    mask[5, 5:7] = 1
    amap[5, 5:7] = 0.8
    amap[9, 0:10] = 0.5
    fpr, pro, thr = M.pro_curve(amap[mask >= 0], M.region_labels(mask)[0].ravel())
    assert fpr == pytest.approx([0, 0, 0, 10 / 94, 10 / 94, 1])
    assert pro == pytest.approx([0, 0.25, 0.75, 0.75, 1, 1])
    expected = (0.75 * 10 / 94 + (0.3 - 10 / 94)) / 0.3
    assert M.aupro(amap, mask) == pytest.approx(expected)
    # pixels outside valid (the false-positive row) do not count
    valid = np.ones((10, 10), bool)
    valid[9] = False
    assert M.aupro(amap, mask, valid) == pytest.approx(1.0)
    # a perfect map scores 1; a constant one (all tied: the diagonal) 0.3^2 / 2 / 0.3 = 0.15, like chance
    assert M.aupro(mask.astype(float), mask) == pytest.approx(1.0)
    assert M.aupro(np.zeros((10, 10)), mask) == pytest.approx(0.15)


def test_aupro_is_per_region_not_per_pixel():
    """A big region found and a small one missed: PRO counts each region once, pixel AUROC each pixel."""
    mask = np.zeros((20, 20), int)
    mask[0:10, 0:10] = 1  # 100 px, detected
    mask[15, 15] = 1  # 1 px, missed
    amap = np.where(mask > 0, 1.0, 0.0)
    amap[15, 15] = 0.0
    assert M.region_labels(mask)[1] == 2
    assert M.pixel_auroc(amap.ravel(), mask.ravel()) > 0.99
    # curve (0, 0.5) at t=1, then the missed pixel ties with every normal one: a line to (1, 1),
    # which is at 0.65 at FPR 0.3 -> mean height (0.5 + 0.65) / 2
    assert M.aupro(amap, mask) == pytest.approx((0.5 + 0.65) / 2)


def test_aupro_regions_across_images_and_3d_connectivity():
    vol = np.zeros((4, 4, 4), int)
    vol[0, 0, 0] = vol[1, 1, 1] = 1  # diagonal neighbours: one region with full connectivity
    assert M.region_labels(vol)[1] == 1
    maps = [np.eye(3), np.zeros((2, 5))]
    masks = [np.eye(3, dtype=int), np.zeros((2, 5), int)]
    masks[1][0, 0] = 1
    acc = M.PixelAccumulator()
    for a, m in zip(maps, masks):
        acc.add(a, m)
    assert acc.num_regions == 2 and acc.num_cases == 2 and acc.num_pixels == 9 + 10
    assert acc.aupro() == pytest.approx(M.aupro(maps, masks))
    assert 0.5 < acc.aupro() < 1.0  # one region found, one missed


def test_pixel_auroc_subsampling_is_deterministic_and_close():
    rng = np.random.default_rng(0)
    t = (rng.random(60_000) < 0.02).astype(int)
    s = rng.normal(size=t.size) + 1.5 * t
    full = M.pixel_auroc(s, t, max_pixels=None)
    sub = M.pixel_auroc(s, t, max_pixels=5_000, seed=3)
    assert sub == M.pixel_auroc(s, t, max_pixels=5_000, seed=3)
    assert sub == pytest.approx(full, abs=0.03)
    assert math.isnan(M.pixel_auroc(s, np.zeros_like(t)))


def test_pixel_accumulator_cap_keeps_estimates():
    rng = np.random.default_rng(2)
    mask = np.zeros((100, 100), int)
    mask[10:30, 10:30] = 1
    mask[60:70, 50:90] = 1
    amap = rng.normal(size=mask.shape) + 2.0 * mask
    exact, capped = M.PixelAccumulator(None), M.PixelAccumulator(2_000, seed=1)
    exact.add(amap, mask)
    capped.add(amap, mask)
    assert capped.num_pixels == 2_000 and exact.num_pixels == 10_000
    assert capped.aupro() == pytest.approx(exact.aupro(), abs=0.05)
    assert capped.pixel_auroc() == pytest.approx(exact.pixel_auroc(), abs=0.03)


def test_anomaly_metrics_summary_and_degenerate():
    acc = M.PixelAccumulator()
    mask = np.zeros((8, 8), int)
    mask[2:4, 2:4] = 1
    acc.add(mask * 1.0, mask)
    out = M.anomaly_metrics([0.1, 0.9, 0.4], [0, 1, 0], pixels=acc, threshold=0.5)
    json.dumps(out, allow_nan=False)
    assert out["image_auroc"] == pytest.approx(1.0) and out["pixel_auroc"] == pytest.approx(1.0)
    assert out["aupro"] == pytest.approx(1.0) and out["num_regions"] == 1
    assert out["sensitivity"] == 1.0 and out["specificity"] == 1.0
    normal = M.anomaly_metrics([0.1, 0.2], [0, 0], pixels=M.PixelAccumulator())
    assert normal["image_auroc"] is None and normal["aupro"] is None and normal["pixel_auroc"] is None
    assert len(normal["notes"]) == 2


def test_to_json_replaces_non_finite():
    assert M.to_json({"a": np.float32(np.nan), "b": [np.int64(2), float("inf")], "c": np.array([1.5])}) == {
        "a": None,
        "b": [2, None],
        "c": [1.5],
    }
