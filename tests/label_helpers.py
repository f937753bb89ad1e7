"""Exact comparison of label images, for the parity tests whose code path reproduces Cellpose exactly."""
from __future__ import annotations

import numpy as np

#: how many differing labels a failure message names
_SHOWN = 8


def label_pairs(ours: np.ndarray, ref: np.ndarray):
    """The pairs (our label, reference label) that share pixels, with how many.

    Parameters
    ----------
    ours, ref : ndarray of int
        Label images of the same shape (0 is background).

    Returns
    -------
    pairs : ndarray of int64, shape (n, 2)
        Every distinct (ours, ref) pair, sorted by our label then the reference's.
    counts : ndarray of int64, shape (n,)
        The pixels of each pair.
    """
    stacked = np.stack([ours.ravel().astype(np.int64), ref.ravel().astype(np.int64)], axis=1)
    return np.unique(stacked, axis=0, return_counts=True)


def _pixels_off_the_best_pairing(pairs, counts, size: int) -> int:
    """Pixels outside a one-to-one pairing of labels made greedily by overlap (background with background)."""
    used_ours, used_ref, kept = {0}, {0}, 0
    for (x, y), n in zip(pairs.tolist(), counts.tolist()):
        if x == 0 and y == 0:
            kept += n
    for i in np.argsort(-counts, kind="stable"):
        x, y = pairs[i].tolist()
        if x not in used_ours and y not in used_ref:
            used_ours.add(x)
            used_ref.add(y)
            kept += int(counts[i])
    return size - kept


def relabelling_problems(ours: np.ndarray, ref: np.ndarray, *, same_ids: bool = False) -> str:
    """Why ``ours`` is not ``ref`` up to a one-to-one relabelling ('' when it is).

    Parameters
    ----------
    ours, ref : ndarray of int
        Label images (0 is background).
    same_ids : bool
        Require the identity map: the same id for the same mask, pixel for pixel.

    Returns
    -------
    str
        Empty when the images match; otherwise the mask counts, the number of differing pixels and
        the first reference labels whose pixels are not exactly one of ours (with what we have there).
    """
    if ours.shape != ref.shape:
        return f"shapes differ: ours {ours.shape}, reference {ref.shape}"
    pairs, counts = label_pairs(ours, ref)
    a, b = pairs[:, 0], pairs[:, 1]
    # a bijection: each label on either side meets exactly one label on the other, 0 only 0
    ua, na = np.unique(a, return_counts=True)
    ub, nb = np.unique(b, return_counts=True)
    split_ours = set(ua[na > 1].tolist())  # our labels over several reference labels
    split_ref = set(ub[nb > 1].tolist())  # reference labels over several of ours
    bad = [(x, y) for x, y in pairs.tolist()
           if x in split_ours or y in split_ref or (x == 0) != (y == 0) or (same_ids and x != y)]
    if not bad:
        return ""
    n_ours, n_ref = int(np.count_nonzero(ua)), int(np.count_nonzero(ub))
    if same_ids:
        differ, rule = int(np.count_nonzero(ours != ref)), "ids must match"
    else:
        differ, rule = _pixels_off_the_best_pairing(pairs, counts, ours.size), "up to a one-to-one relabelling"
    refs = sorted({y for _, y in bad if y})[:_SHOWN]
    detail = "; ".join(f"ref {y} -> ours {a[b == y].tolist()}" for y in refs)
    return (f"masks ours {n_ours}, reference {n_ref}; {differ} of {ours.size} pixels differ ({rule}); "
            f"first differing: {detail}")


def assert_same_labels(ours: np.ndarray, ref: np.ndarray, *, same_ids: bool = False, what: str = "masks") -> None:
    """Assert that two label images are identical up to a one-to-one relabelling.

    Parameters
    ----------
    ours, ref : ndarray of int
        Label images of the same shape (0 is background).
    same_ids : bool
        Also require the same ids (the reference's label order reproduced).
    what : str
        Name used in the failure message.

    Raises
    ------
    AssertionError
        With the mask counts, the number of differing pixels and the first differing labels.
    """
    problems = relabelling_problems(ours, ref, same_ids=same_ids)
    assert not problems, f"{what}: {problems}"
