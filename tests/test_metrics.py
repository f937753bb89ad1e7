"""cellflow_rt.metrics: IoU matching with Cellpose's definitions, on hand-made and real label images."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from cellflow_rt.metrics import (average_precision, intersection_over_union, label_overlap,
                                 matching_summary)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DSB = SHARED / "data" / "dsb2018_sample"


def _two_cells():
    t = np.zeros((20, 40), np.uint16)
    t[2:12, 2:22] = 1  # 200 px
    t[14:19, 30:35] = 2  # 25 px
    return t


def test_identical_masks_score_one():
    t = _two_cells()
    ap, tp, fp, fn = average_precision(t, t)
    np.testing.assert_array_equal(ap, [1, 1, 1])
    np.testing.assert_array_equal(tp, [2, 2, 2])
    assert not fp.any() and not fn.any()
    assert ap.dtype == np.float32 and ap.shape == (3,)


def test_relabelled_prediction_and_label_gaps_do_not_matter():
    t = _two_cells()
    p = np.where(t == 1, 17, np.where(t == 2, 3, 0))
    np.testing.assert_array_equal(average_precision(t, p)[0], [1, 1, 1])
    # ground truth with a gap: Cellpose would count max label = 5 objects (3 misses); we count 2
    gap = np.where(t == 2, 5, t)
    ap, tp, fp, fn = average_precision(gap, t)
    np.testing.assert_array_equal(ap, [1, 1, 1])
    np.testing.assert_array_equal(fn, [0, 0, 0])


def test_one_split_cell():
    t = _two_cells()
    p = t.copy()
    p[2:12, 14:22] = 3  # cell 1 split: left part 120 px (IoU 0.6), right part 80 px (IoU 0.4)
    ap, tp, fp, fn = average_precision(t, p)
    np.testing.assert_array_equal(tp, [2, 1, 1])
    np.testing.assert_array_equal(fp, [1, 2, 2])
    np.testing.assert_array_equal(fn, [0, 1, 1])
    np.testing.assert_allclose(ap, [2 / 3, 1 / 4, 1 / 4])


def test_empty_predictions_and_empty_images():
    t = _two_cells()
    ap, tp, fp, fn = average_precision(t, np.zeros_like(t))
    np.testing.assert_array_equal(ap, [0, 0, 0])
    np.testing.assert_array_equal(fn, [2, 2, 2])
    ap, tp, fp, fn = average_precision(np.zeros_like(t), t)
    np.testing.assert_array_equal(fp, [2, 2, 2])
    ap, *_ = average_precision(np.zeros_like(t), np.zeros_like(t))
    assert np.isnan(ap).all()  # 0 / 0, as in Cellpose


def test_maximum_matching_below_iou_one_half():
    # T1 = [0, 10), T2 = [10, 20); P1 = [4, 14) overlaps both, P2 = [0, 4) only T1.
    # IoU(T1,P1) = 6/14, IoU(T1,P2) = 4/10, IoU(T2,P1) = 4/16: a greedy best-IoU match finds one pair,
    # the assignment (Cellpose's Hungarian) finds two.
    t = np.zeros((1, 20), int)
    t[0, :10], t[0, 10:] = 1, 2
    p = np.zeros((1, 20), int)
    p[0, 4:14], p[0, :4] = 1, 2
    iou, lt, lp = intersection_over_union(t, p)
    np.testing.assert_allclose(iou.toarray(), [[6 / 14, 4 / 10], [4 / 16, 0]])
    ap, tp, fp, fn = average_precision(t, p, threshold=[0.25, 0.42, 0.5])
    np.testing.assert_array_equal(tp, [2, 1, 0])


def test_exact_half_iou_ties():
    t = np.array([[1, 1, 0, 0]])
    p = np.array([[1, 2, 0, 0]])
    ap, tp, fp, fn = average_precision(t, p, threshold=0.5)
    assert tp.tolist() == [1] and fp.tolist() == [1] and fn.tolist() == [0]


def _cellpose_counts(t, p, thresholds):
    """Cellpose 3.1.1.1's average_precision restated densely (consecutive labels only)."""
    nt, np_ = t.max(), p.max()
    overlap = np.zeros((nt + 1, np_ + 1))
    np.add.at(overlap, (t.ravel(), p.ravel()), 1)
    iou = overlap / (overlap.sum(0, keepdims=True) + overlap.sum(1, keepdims=True) - overlap)
    iou = np.nan_to_num(iou)[1:, 1:]
    tps = []
    for th in thresholds:
        if np_ == 0 or nt == 0:
            tps.append(0)
            continue
        n_min = min(iou.shape)
        rows, cols = linear_sum_assignment(-(iou >= th).astype(float) - iou / (2 * n_min))
        tps.append(int((iou[rows, cols] >= th).sum()))
    return np.array(tps)


def _voronoi_labels(rng, shape, n):
    seeds = np.zeros(shape, int)
    seeds[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[iy, ix]
    lab[rng.random(shape) < 0.3] = 0
    values, inverse = np.unique(lab, return_inverse=True)
    return inverse.reshape(shape) + (values[0] != 0)


def test_counts_equal_cellpose_assignment_on_random_images():
    rng = np.random.default_rng(0)
    thresholds = [0.1, 0.3, 0.5, 0.75, 0.9]
    for _ in range(25):
        shape = tuple(rng.integers(10, 60, 2))
        t = _voronoi_labels(rng, shape, int(rng.integers(1, 25)))
        p = _voronoi_labels(rng, shape, int(rng.integers(1, 25)))
        ap, tp, fp, fn = average_precision(t, p, threshold=thresholds)
        expected = _cellpose_counts(t, p, thresholds)
        np.testing.assert_array_equal(tp, expected)
        np.testing.assert_array_equal(fp, p.max() - expected)
        np.testing.assert_array_equal(fn, t.max() - expected)


def test_list_input_gives_per_image_rows():
    t = _two_cells()
    ap, tp, fp, fn = average_precision([t, t], [t, np.zeros_like(t)], threshold=0.5)
    assert ap.shape == (2, 1)
    np.testing.assert_array_equal(ap[:, 0], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        average_precision([t, t], [t])


def test_label_overlap_counts():
    t = np.array([[1, 1, 0], [0, 2, 2]])
    p = np.array([[3, 3, 3], [0, 0, 0]])
    overlap, lt, lp = label_overlap(t, p)
    np.testing.assert_array_equal(overlap.toarray(), [[1, 1], [0, 2], [2, 0]])
    np.testing.assert_array_equal(lt, [0, 1, 2])
    np.testing.assert_array_equal(lp, [0, 3])


def test_huge_label_values_and_3d():
    t = np.zeros((3, 10, 10), np.uint32)
    t[:, 2:5, 2:5] = 4_000_000_000
    t[1, 6:9, 6:9] = 7
    p = np.where(t > 0, 1, 0)
    p[1, 6:9, 6:9] = 2
    iou, lt, lp = intersection_over_union(t, p)
    np.testing.assert_array_equal(lt, [7, 4_000_000_000])
    np.testing.assert_array_equal(iou.toarray(), [[0, 1], [1, 0]])


def test_input_validation():
    t = _two_cells()
    with pytest.raises(ValueError, match="same shape"):
        average_precision(t, t[:5])
    with pytest.raises(ValueError, match="negative"):
        average_precision(t.astype(int) - 1, t)
    with pytest.raises(ValueError, match="integer labels"):
        average_precision(t + 0.5, t)
    with pytest.raises(ValueError, match="thresholds"):
        average_precision(t, t, threshold=0)
    np.testing.assert_array_equal(average_precision(t.astype(np.float32), t)[0], [1, 1, 1])


def test_matching_summary():
    t = _two_cells()
    p = t.copy()
    p[2:12, 14:22] = 3
    s = matching_summary(t, p)
    assert s["n_true"] == 2 and s["n_pred"] == 3
    assert s["tp_0.5"] == 2 and s["fp_0.5"] == 1 and s["fn_0.5"] == 0
    assert s["ap_0.5"] == pytest.approx(2 / 3)
    assert s["precision_0.5"] == pytest.approx(2 / 3) and s["recall_0.5"] == 1.0
    assert s["f1_0.5"] == pytest.approx(0.8)
    assert s["mean_matched_iou_0.5"] == pytest.approx((0.6 + 1.0) / 2)
    assert s["tp_0.9"] == 1 and s["ap_0.75"] == pytest.approx(0.25)
    json.dumps(s)  # plain Python numbers


def test_real_labels_against_eroded_copy():
    path = DSB / "dsb_00_labels.tif"
    if not path.is_file():
        pytest.skip(f"shared data not found at {DSB}")
    t = tifffile.imread(path)
    n = len(np.unique(t)) - 1
    assert average_precision(t, t)[0].tolist() == [1, 1, 1]
    # one-pixel erosion of every nucleus: every object keeps its identity, IoU drops with size
    eroded = np.where(ndi.minimum_filter(t, 3) == ndi.maximum_filter(t, 3), t, 0)
    s = matching_summary(t, eroded)
    assert s["n_true"] == n == 157
    assert s["n_pred"] == len(np.unique(eroded)) - 1
    assert s["tp_0.5"] >= n - 3  # only the tiniest nuclei fall below IoU 0.5
    assert s["tp_0.9"] < s["tp_0.75"] < s["tp_0.5"]
    assert s["fp_0.5"] == s["n_pred"] - s["tp_0.5"] and s["fn_0.5"] == n - s["tp_0.5"]
