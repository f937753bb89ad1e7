"""QuPath-compatible polygons ``<stem>.geojson`` (a GeoJSON FeatureCollection)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .atomic import write_bytes
from .errors import PathLike
from .outlines import planar_outlines
from .paths import output_path

__all__ = ["save_geojson", "geojson_bytes"]


def save_geojson(masks, file_name: PathLike, savedir: Optional[PathLike] = None,
                 object_type: str = "detection") -> Path:
    """Save ``<stem>.geojson``: a FeatureCollection with one Polygon per mask (QuPath imports it).

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) labels.
    file_name : str or path-like
        The input image's path.
    savedir : str or path-like, optional
        Output folder.
    object_type : {"detection", "annotation"}
        QuPath object type of each feature.

    Returns
    -------
    Path

    Notes
    -----
    Coordinates are pixel (x, y) of the outline pixels (the ``outlines_list`` points, the same as the
    ImageJ outputs), each ring closed by repeating its first point. Properties: ``objectType``,
    ``label`` (the mask's label id) and ``measurements: {"label": id}`` (kept by QuPath's importer).
    Masks whose outline has 4 points or fewer are left out, as in the ImageJ outputs.
    """
    data = geojson_bytes(masks, object_type)
    return write_bytes(output_path(file_name, ".geojson", savedir), data)


def geojson_bytes(masks, object_type: str = "detection") -> bytes:
    """The content of :func:`save_geojson`'s file: a compact UTF-8 GeoJSON FeatureCollection.

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) labels.
    object_type : {"detection", "annotation"}
        QuPath object type of each feature.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        3D masks, or another ``object_type``.
    """
    if object_type not in ("detection", "annotation"):
        raise ValueError(f"object_type must be 'detection' or 'annotation', got {object_type!r}")
    labels, outlines = planar_outlines(masks, "GeoJSON polygons")
    features = []
    for label, o in zip(labels, outlines):
        if not len(o):
            continue
        ring = o.tolist()
        ring.append(ring[0])
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": object_type, "label": int(label),
                                        "measurements": {"label": int(label)}}})
    return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")).encode()
