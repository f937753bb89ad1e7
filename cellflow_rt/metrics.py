"""Instance matching by IoU: Cellpose's ``metrics.average_precision`` for tests and benchmarks.

Definitions follow Cellpose 3.1.1.1 (``cellpose/metrics.py``), with one deliberate difference:
**the number of objects is the number of distinct labels, not the largest label**. Cellpose counts
``masks.max()`` objects, so ground truth with label gaps (1, 2, 5) gets false negatives for labels
that do not exist; here gaps never count as misses. With consecutive labels both agree.

Matching: a true and a predicted object match when their IoU is at least the threshold; each object
matches at most once and the number of matches is maximised. Cellpose computes this with a Hungarian
assignment (``linear_sum_assignment``) on the cost ``-[IoU >= th] - IoU / (2 n_min)``; the second
term is below 1/2 in total, so that assignment always has the maximum number of pairs with IoU >= th,
which is what we compute directly (Hopcroft-Karp on the sparse graph of such pairs) so that images
with tens of thousands of objects stay fast. "AP" is ``TP / (TP + FP + FN)``, the StarDist-style
matching accuracy that Cellpose reports, not COCO's average precision.

Overlaps are counted sparsely (runs of equal label pairs along rows, then one sort of the distinct
pairs), never as a dense (n_true x n_pred) matrix.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numba
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching

from ._labels import as_label_image, compact_labels
from ._numba import NUMBA_OPTS

__all__ = ["label_overlap", "intersection_over_union", "average_precision", "matching_summary"]

DEFAULT_THRESHOLDS = (0.5, 0.75, 0.9)


@numba.njit(**NUMBA_OPTS)
def _pair_runs(t_values, t_table, p_values, p_table, count_only, rows, cols, lengths):
    """Runs of equal (true index, pred index) pairs in raster order; returns the number of runs."""
    n = 0
    last_t = -1
    last_p = -1
    for i in range(t_values.size):
        t = t_table[t_values[i]]
        p = p_table[p_values[i]]
        if t == last_t and p == last_p:
            if not count_only:
                lengths[n - 1] += 1
            continue
        if not count_only:
            rows[n] = t
            cols[n] = p
            lengths[n] = 1
        n += 1
        last_t = t
        last_p = p
    return n


def _validated_pair(masks_true, masks_pred):
    masks_true = as_label_image(masks_true, "masks_true", ndim=None)
    masks_pred = as_label_image(masks_pred, "masks_pred", ndim=None)
    if masks_true.shape != masks_pred.shape:
        raise ValueError(f"masks_true and masks_pred must have the same shape, got {masks_true.shape} "
                         f"and {masks_pred.shape}")
    return masks_true, masks_pred


def _overlap(masks_true, masks_pred):
    """Sparse overlap counts between compact indices, plus the labels behind the indices."""
    t_values, t_table, labels_true = compact_labels(masks_true)
    p_values, p_table, labels_pred = compact_labels(masks_pred)
    t_flat, p_flat = np.ravel(t_values), np.ravel(p_values)
    empty = np.zeros(0, np.int64)
    nruns = _pair_runs(t_flat, t_table, p_flat, p_table, True, empty, empty, empty)
    rows, cols, lengths = (np.empty(nruns, np.int64) for _ in range(3))
    _pair_runs(t_flat, t_table, p_flat, p_table, False, rows, cols, lengths)
    shape = (labels_true.size + 1, labels_pred.size + 1)
    # coo -> csr sums the duplicate pairs
    overlap = sparse.csr_array(sparse.coo_array((lengths, (rows, cols)), shape=shape))
    overlap.sum_duplicates()
    return overlap, np.concatenate([[0], labels_true]), np.concatenate([[0], labels_pred])


def label_overlap(masks_true, masks_pred) -> Tuple[sparse.csr_array, np.ndarray, np.ndarray]:
    """Pixel overlaps between every true and predicted label, as a sparse matrix.

    Parameters
    ----------
    masks_true, masks_pred : ndarray
        Label images of the same shape (any number of dimensions); 0 = background.

    Returns
    -------
    overlap : scipy.sparse.csr_array
        int64, shape (n_true + 1, n_pred + 1): ``overlap[i, j]`` = number of pixels labelled
        ``labels_true[i]`` in ``masks_true`` and ``labels_pred[j]`` in ``masks_pred``. Row and column
        0 are the background.
    labels_true, labels_pred : ndarray
        int64 label values behind the rows and columns (0 first, then the labels present, sorted).

    Examples
    --------
    >>> t = np.array([[1, 1, 0], [0, 2, 2]])
    >>> p = np.array([[3, 3, 3], [0, 0, 0]])
    >>> overlap, lt, lp = label_overlap(t, p)
    >>> overlap.toarray()
    array([[1, 1],
           [0, 2],
           [2, 0]])
    >>> lp
    array([0, 3])
    """
    masks_true, masks_pred = _validated_pair(masks_true, masks_pred)
    return _overlap(masks_true, masks_pred)


def _iou_from_overlap(overlap: sparse.csr_array) -> sparse.csr_array:
    """IoU of every overlapping object pair, background row and column dropped."""
    area_true = np.asarray(overlap.sum(axis=1)).ravel()
    area_pred = np.asarray(overlap.sum(axis=0)).ravel()
    coo = overlap[1:, 1:].tocoo()
    inter = coo.data.astype(np.float64)
    union = area_true[coo.row + 1] + area_pred[coo.col + 1] - inter
    return sparse.csr_array((inter / union, (coo.row, coo.col)), shape=coo.shape)


def intersection_over_union(masks_true, masks_pred) -> Tuple[sparse.csr_array, np.ndarray, np.ndarray]:
    """IoU of every pair of overlapping true and predicted objects, as a sparse matrix.

    Parameters
    ----------
    masks_true, masks_pred : ndarray
        Label images of the same shape; 0 = background.

    Returns
    -------
    iou : scipy.sparse.csr_array
        float64, shape (n_true, n_pred); pairs that do not overlap are absent (IoU 0).
    labels_true, labels_pred : ndarray
        int64 label values behind the rows and columns (sorted, background excluded).
    """
    overlap, labels_true, labels_pred = label_overlap(masks_true, masks_pred)
    return _iou_from_overlap(overlap), labels_true[1:], labels_pred[1:]


def _matched_pairs(iou: sparse.csr_array, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a maximum matching among pairs with IoU >= threshold."""
    good = iou >= threshold
    if good.nnz == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    good = sparse.csr_array(good.astype(np.int8))
    good.eliminate_zeros()
    if np.all(np.diff(good.indptr) <= 1) and np.unique(good.indices).size == good.indices.size:
        # IoU > 0.5 pairs never share an object: the pairs are already the matching
        rows = np.repeat(np.arange(good.shape[0]), np.diff(good.indptr))
        return rows, good.indices.astype(np.int64)
    match = maximum_bipartite_matching(good, perm_type="column")
    rows = np.flatnonzero(match >= 0)
    return rows, match[rows].astype(np.int64)


def _validated_thresholds(threshold) -> np.ndarray:
    thresholds = np.atleast_1d(np.asarray(threshold, dtype=np.float64))
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"threshold must be a number or a non-empty sequence of numbers, got {threshold!r}")
    if not np.all((thresholds > 0) & (thresholds <= 1)):
        raise ValueError(f"IoU thresholds must be in (0, 1], got {thresholds.tolist()}")
    return thresholds


def _as_list(masks) -> Tuple[list, bool]:
    if isinstance(masks, (list, tuple)):
        return list(masks), True
    return [masks], False


def average_precision(masks_true, masks_pred, threshold=DEFAULT_THRESHOLDS):
    """Matching accuracy TP / (TP + FP + FN) at IoU thresholds, with the counts behind it.

    Parameters
    ----------
    masks_true, masks_pred : ndarray or list of ndarray
        Ground-truth and predicted label images (0 = background), one array or a list of the same
        length; each pair must have the same shape.
    threshold : float or sequence of float
        IoU thresholds.

    Returns
    -------
    ap, tp, fp, fn : ndarray
        float32, shape (n_thresholds,) for single arrays or (n_images, n_thresholds) for lists
        (Cellpose's layout). ``ap`` is NaN when an image has no true and no predicted object (0/0,
        as in Cellpose).

    Notes
    -----
    Objects are counted as distinct labels (Cellpose counts the largest label; see the module
    docstring). Matching maximises the number of pairs with IoU >= threshold, each object used
    once, which gives the same counts as Cellpose's Hungarian assignment.

    Examples
    --------
    >>> t = np.zeros((8, 8), int); t[:4, :4] = 1; t[4:, 4:] = 2
    >>> ap, tp, fp, fn = average_precision(t, t)
    >>> ap
    array([1., 1., 1.], dtype=float32)
    """
    trues, is_list = _as_list(masks_true)
    preds, _ = _as_list(masks_pred)
    if len(trues) != len(preds):
        raise ValueError(f"masks_true and masks_pred must have the same length, got {len(trues)} and "
                         f"{len(preds)}")
    thresholds = _validated_thresholds(threshold)
    shape = (len(trues), thresholds.size)
    ap, tp, fp, fn = (np.zeros(shape, np.float32) for _ in range(4))
    for n, (t, p) in enumerate(zip(trues, preds)):
        counts = _counts(t, p, thresholds)
        tp[n], fp[n], fn[n] = counts["tp"], counts["fp"], counts["fn"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[n] = tp[n] / (tp[n] + fp[n] + fn[n])
    if not is_list:
        return ap[0], tp[0], fp[0], fn[0]
    return ap, tp, fp, fn


def _counts(masks_true, masks_pred, thresholds) -> Dict[str, np.ndarray]:
    masks_true, masks_pred = _validated_pair(masks_true, masks_pred)
    overlap, labels_true, labels_pred = _overlap(masks_true, masks_pred)
    iou = _iou_from_overlap(overlap)
    n_true, n_pred = labels_true.size - 1, labels_pred.size - 1
    tp = np.zeros(len(thresholds), np.int64)
    mean_iou = np.full(len(thresholds), np.nan)
    for k, th in enumerate(thresholds):
        rows, cols = _matched_pairs(iou, th)
        tp[k] = rows.size
        if rows.size:
            mean_iou[k] = float(np.mean(iou[rows, cols]))
    return {"n_true": n_true, "n_pred": n_pred, "tp": tp, "fp": n_pred - tp, "fn": n_true - tp,
            "mean_matched_iou": mean_iou}


def _threshold_key(th: float) -> str:
    return f"{th:g}"


def matching_summary(masks_true, masks_pred, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """Counts and scores of one image's matching, as a flat JSON-friendly dict.

    Parameters
    ----------
    masks_true, masks_pred : ndarray
        Ground-truth and predicted label images of the same shape.
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    dict
        ``n_true``, ``n_pred`` and, for each threshold ``th`` (formatted like ``0.5``, ``0.75``):
        ``ap_<th>`` (TP / (TP + FP + FN)), ``tp_<th>``, ``fp_<th>``, ``fn_<th>``, ``precision_<th>``,
        ``recall_<th>``, ``f1_<th>`` and ``mean_matched_iou_<th>`` (mean IoU of the matched pairs).
        Undefined ratios (0/0) are NaN.

    Examples
    --------
    >>> t = np.zeros((8, 8), int); t[:4, :4] = 1; t[4:, 4:] = 2
    >>> s = matching_summary(t, t)
    >>> s["n_true"], s["ap_0.5"], s["tp_0.9"]
    (2, 1.0, 2)
    """
    thresholds = _validated_thresholds(thresholds)
    c = _counts(masks_true, masks_pred, thresholds)
    out = {"n_true": int(c["n_true"]), "n_pred": int(c["n_pred"])}

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    for k, th in enumerate(thresholds):
        key = _threshold_key(float(th))
        tp, fp, fn = int(c["tp"][k]), int(c["fp"][k]), int(c["fn"][k])
        out[f"ap_{key}"] = ratio(tp, tp + fp + fn)
        out[f"tp_{key}"], out[f"fp_{key}"], out[f"fn_{key}"] = tp, fp, fn
        out[f"precision_{key}"] = ratio(tp, tp + fp)
        out[f"recall_{key}"] = ratio(tp, tp + fn)
        out[f"f1_{key}"] = ratio(2 * tp, 2 * tp + fp + fn)
        out[f"mean_matched_iou_{key}"] = float(c["mean_matched_iou"][k])
    return out
