"""ImageJ/Fiji outputs: text outlines ``<stem>_cp_outlines.txt`` and the ROI set ``<stem>_rois.zip``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .atomic import atomic_write, write_bytes
from .errors import PathLike
from .outlines import planar_outlines
from .paths import output_path

__all__ = ["save_outlines_txt", "save_rois_zip"]


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
    """Save ``<stem>_rois.zip``, an ImageJ/Fiji ROI set (``roifile.ImagejRoi.frompoints`` per mask).

    Masks whose outline has 4 points or fewer are left out, as in Cellpose. ROIs are named by their
    label id, zero-padded so that ImageJ lists them in label order. An existing file is replaced
    (roifile alone would append to it).

    Returns
    -------
    Path
    """
    from roifile import ImagejRoi, roiwrite

    labels, outlines = planar_outlines(masks, "ROIs")
    width = len(str(int(labels[-1]))) if labels.size else 1
    rois = [ImagejRoi.frompoints(o, name=f"{int(label):0{width}d}")
            for label, o in zip(labels, outlines) if len(o)]
    path = output_path(file_name, "_rois.zip", savedir)
    with atomic_write(path) as tmp:
        roiwrite(tmp, rois, mode="w")
    return path
