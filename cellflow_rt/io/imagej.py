"""ImageJ/Fiji outputs: text outlines ``<stem>_cp_outlines.txt`` and the ROI set ``<stem>_rois.zip``."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Optional

from .atomic import write_bytes
from .errors import PathLike
from .outlines import planar_outlines
from .paths import output_path

__all__ = ["save_outlines_txt", "save_rois_zip", "rois_zip_bytes"]


def save_outlines_txt(masks, file_name: PathLike, savedir: Optional[PathLike] = None) -> Path:
    """Save ``<stem>_cp_outlines.txt``: one mask per line, ``x0,y0,x1,y1,...`` (Cellpose's ImageJ text).

    Lines follow increasing label order; a mask whose outline has 4 points or fewer gets an empty
    line, as in Cellpose. ImageJ reads the file with Cellpose's ``imagej_roi_converter.py`` macro.

    Returns
    -------
    Path
    """
    _, outlines = planar_outlines(masks, "text outlines")
    lines = [",".join(map(str, o.ravel().tolist())) + "\n" for o in outlines]
    return write_bytes(output_path(file_name, "_cp_outlines.txt", savedir), "".join(lines).encode())


def save_rois_zip(masks, file_name: PathLike, savedir: Optional[PathLike] = None) -> Path:
    """Save ``<stem>_rois.zip``, an ImageJ/Fiji ROI set (the content of :func:`rois_zip_bytes`).

    An existing file is replaced (roifile's ``roiwrite`` would append to it).

    Returns
    -------
    Path
    """
    data = rois_zip_bytes(masks)
    return write_bytes(output_path(file_name, "_rois.zip", savedir), data)


def rois_zip_bytes(masks) -> bytes:
    """An ImageJ/Fiji ROI set as zip bytes: one ``roifile.ImagejRoi.frompoints`` polygon per mask.

    Masks whose outline has 4 points or fewer are left out, as in Cellpose. ROIs are named by their
    label id, zero-padded so that ImageJ lists them in label order (entries ``<name>.roi``, stored
    uncompressed, as roifile's ``roiwrite`` writes them).

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) labels.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        3D masks.
    """
    from roifile import ImagejRoi

    labels, outlines = planar_outlines(masks, "ROIs")
    width = len(str(int(labels[-1]))) if labels.size else 1
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, outline in zip(labels, outlines):
            if len(outline):
                name = f"{int(label):0{width}d}"
                archive.writestr(f"{name}.roi", ImagejRoi.frompoints(outline, name=name).tobytes())
    return buffer.getvalue()
