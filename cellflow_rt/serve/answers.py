"""Masks -> the bytes of an answer, chosen by the request's ``Accept`` header, built in memory.

The formats are those of ``cellflow-rt run``'s files, made by the same :mod:`cellflow_rt.io` functions
(HTTP compression, when a client asks for it, is the app's business):

=========================  =======================================  =============================
Accept                     answer                                   same as
=========================  =======================================  =============================
``image/tiff`` (default)   uint16/uint32 labels, 3D multipage       ``--save_tif``
``application/geo+json``   QuPath polygons (2D)                     ``--save_geojson``
``application/zip``        ImageJ ROI set (2D)                      ``--save_rois``
``application/json``       counts, diameter, timings, labels RLE    (the summary line + masks)
=========================  =======================================  =============================

The writers (and their numba kernels) are imported on first use: the Python client imports
:func:`rle_decode` from here and stays light.

The JSON answer's ``masks`` are run-length encoded over the label image in C (row-major) order:
``values[i]`` repeated ``lengths[i]`` times, reshaped to ``shape`` (see :func:`rle_decode`).
"""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

import numpy as np

TIFF, GEOJSON, ZIP, JSON = "image/tiff", "application/geo+json", "application/zip", "application/json"
#: Answer media types, the default first.
ANSWER_TYPES = (TIFF, GEOJSON, ZIP, JSON)


class NotAcceptableError(ValueError):
    """The client accepts none of the answer types, or one that cannot hold these masks (406)."""


def choose_answer(accept: str) -> str:
    """The answer type for an ``Accept`` header (missing or ``*/*``: the TIFF label image).

    The highest quality value wins; at equal quality an exact media type beats ``type/*``, which
    beats ``*/*``; then the order of :data:`ANSWER_TYPES`.

    Raises
    ------
    NotAcceptableError
    """
    if not accept.strip():
        return TIFF
    ranges: List[Tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges.append((media.lower(), q))
    best, best_score = None, (0.0, -1)
    for order, answer in enumerate(ANSWER_TYPES):
        kind = answer.split("/")[0]
        matches = [(q, specificity) for media, q in ranges
                   for specificity, pattern in ((2, answer), (1, f"{kind}/*"), (0, "*/*")) if media == pattern]
        if not matches:
            continue
        q, specificity = max(matches, key=lambda m: m[1])  # the most specific range decides the quality
        if q > 0 and (q, specificity) > best_score:
            best, best_score = answer, (q, specificity)
    if best is None:
        raise NotAcceptableError(f"cannot answer in {accept!r}; answers: {', '.join(ANSWER_TYPES)}")
    return best


def count_masks(masks: np.ndarray) -> int:
    """Number of distinct labels > 0."""
    if masks.size == 0:
        return 0
    return int(np.count_nonzero(np.bincount(masks.ravel())[1:]))


def rle_encode(masks: np.ndarray) -> Dict[str, list]:
    """Runs of equal labels over ``masks`` in C order: ``{"values": [...], "lengths": [...]}``."""
    flat = masks.ravel()
    if flat.size == 0:
        return {"values": [], "lengths": []}
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.append(starts, flat.size))
    return {"values": flat[starts].tolist(), "lengths": lengths.tolist()}


def rle_decode(masks: dict) -> np.ndarray:
    """The label image of a JSON answer's ``masks`` object (inverse of :func:`rle_encode`)."""
    values = np.asarray(masks["values"], dtype=masks.get("dtype", "uint32"))
    return np.repeat(values, np.asarray(masks["lengths"], np.int64)).reshape(masks["shape"])


def json_bytes(masks: np.ndarray, summary: dict) -> bytes:
    """``summary`` (model, counts, diameter, timings) plus the run-length encoded labels."""
    from ..io.masks import label_dtype

    encoded = {"encoding": "rle", "order": "C", "shape": list(masks.shape),
               "dtype": np.dtype(label_dtype(masks)).name, **rle_encode(masks)}
    return json.dumps({**summary, "masks": encoded}, separators=(",", ":")).encode()


def encode_answer(answer_type: str, masks: np.ndarray, summary: dict) -> bytes:
    """The body of an answer of ``answer_type`` (one of :data:`ANSWER_TYPES`).

    Raises
    ------
    NotAcceptableError
        GeoJSON or a ROI set asked for 3D masks.
    """
    from ..io import geojson_bytes, masks_tiff_bytes, rois_zip_bytes

    if answer_type == TIFF:
        # not compressed: zlib would cost more time than sending the bytes over loopback takes, and a
        # client across a network asks for HTTP compression (Accept-Encoding: gzip) instead
        return masks_tiff_bytes(masks, compression=None)
    if answer_type in (GEOJSON, ZIP):
        if masks.ndim != 2:
            raise NotAcceptableError(f"{answer_type} answers hold 2D masks; these masks have shape "
                                     f"{masks.shape}: ask for {TIFF} or {JSON}")
        return geojson_bytes(masks) if answer_type == GEOJSON else rois_zip_bytes(masks)
    return json_bytes(masks, summary)
