"""The restored image of image restoration: ``<stem>_restored.tif`` (``--save_restored``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import write_tiff
from .errors import PathLike
from .paths import output_path

__all__ = ["save_restored"]


def save_restored(img_restore, file_name: PathLike, savedir: Optional[PathLike] = None) -> Path:
    """Save the restored image of image restoration as ``<stem>_restored.tif`` (float32).

    Parameters
    ----------
    img_restore : ndarray
        (Ly, Lx, C) or (Lz, Ly, Lx, C), channels last, as ``CellposeDenoiseModel.eval`` returns it.
    file_name : str or path-like
        The input image's path.
    savedir : str or path-like, optional
        Output folder.

    Returns
    -------
    Path

    Notes
    -----
    Written as an ImageJ hyperstack with the channels first (axes ``CYX`` or ``ZCYX``), so that
    Fiji opens it with its channels; ``tifffile.imread`` returns (C, Ly, Lx) (squeezed to (Ly, Lx)
    for one channel).
    """
    img = np.asarray(img_restore, np.float32)
    if img.ndim not in (3, 4):
        raise ValueError(f"img_restore must be (Ly, Lx, C) or (Lz, Ly, Lx, C), got shape {img.shape}")
    axes = "CYX" if img.ndim == 3 else "ZCYX"
    return write_tiff(output_path(file_name, "_restored.tif", savedir), np.ascontiguousarray(np.moveaxis(img, -1, -3)),
                      imagej=True, metadata={"axes": axes})
