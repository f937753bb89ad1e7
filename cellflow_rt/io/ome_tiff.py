"""OME-TIFF labels ``<stem>_cp_masks.ome.tif`` (axes YX or ZYX), for OME-aware viewers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .._labels import as_label_image
from .atomic import write_tiff
from .errors import PathLike
from .masks import label_dtype
from .paths import MASKS_SUFFIX, image_stem, output_path

__all__ = ["save_masks_ome_tif"]


def save_masks_ome_tif(masks, file_name: PathLike, savedir: Optional[PathLike] = None,
                       suffix: str = MASKS_SUFFIX) -> Path:
    """Save labels as OME-TIFF ``<stem>_cp_masks.ome.tif`` (zlib; axes YX or ZYX; uint16/uint32).

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) or (Lz, Ly, Lx) labels.
    file_name : str or path-like
        The input image's path.
    savedir : str or path-like, optional
        Output folder.
    suffix : str
        Replaces ``_cp_masks``.

    Returns
    -------
    Path
    """
    masks = as_label_image(masks, "masks")
    axes = "YX" if masks.ndim == 2 else "ZYX"
    path = output_path(file_name, f"{suffix}.ome.tif", savedir)
    return write_tiff(path, masks.astype(label_dtype(masks), copy=False), ome=True, photometric="minisblack",
                       compression="zlib", metadata={"axes": axes, "Name": f"{image_stem(file_name)}{suffix}"})
