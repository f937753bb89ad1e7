"""Label images: ``<stem>_cp_masks.png`` (16-bit) and ``<stem>_cp_masks.tif`` (Cellpose's ``io.save_masks``)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

from .._labels import as_label_image
from .atomic import write_bytes
from .errors import PathLike
from .paths import MASKS_SUFFIX, output_path
from .png import write_png

__all__ = ["save_masks", "masks_tiff_bytes", "label_dtype"]


def label_dtype(masks: np.ndarray):
    """uint16 when the largest label fits, else uint32 (ValueError beyond 2**32 - 1)."""
    top = int(masks.max()) if masks.size else 0
    if top < 2**16:
        return np.uint16
    if top < 2**32:
        return np.uint32
    raise ValueError(f"masks has labels up to {top}; at most 2**32 - 1 can be saved")


def save_masks(masks, file_name: PathLike, png: bool = True, tif: bool = False,
               savedir: Optional[PathLike] = None, suffix: str = MASKS_SUFFIX) -> List[Path]:
    """Save label images as ``<stem>_cp_masks.png`` and/or ``<stem>_cp_masks.tif``.

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) or (Lz, Ly, Lx) labels, 0 = background.
    file_name : str or path-like
        The input image's path (its stem names the outputs; its folder is the default ``savedir``).
    png : bool
        Write a 16-bit PNG (2D only). With 65536 masks or more a TIF is written instead, as in Cellpose.
    tif : bool
        Write a zlib-compressed TIFF (uint16, or uint32 when needed; 3D as one page per plane).
    savedir : str or path-like, optional
        Output folder (created when missing).
    suffix : str
        Replaces ``_cp_masks`` (Cellpose's ``--output_name``).

    Returns
    -------
    list of Path
        The files written.

    Notes
    -----
    Unlike Cellpose, masks without any object are written too (an all-zero image), so that every
    input has its mask file.

    Raises
    ------
    ValueError
        3D masks with ``png=True`` and ``tif=False`` (PNG holds one plane).
    """
    masks = as_label_image(masks, "masks")
    if masks.ndim == 3 and png and not tif:
        raise ValueError("cannot save 3D masks as PNG; use tif=True")
    dtype = label_dtype(masks)
    if masks.ndim == 3:
        png = False
    if png and dtype != np.uint16:
        warnings.warn(f"{int(masks.max())} masks do not fit a 16-bit PNG; saving {file_name} masks as TIF",
                      stacklevel=2)
        png, tif = False, True
    written = []
    if png:
        written.append(write_png(output_path(file_name, f"{suffix}.png", savedir), masks.astype(np.uint16, copy=False)))
    if tif:
        data = masks_tiff_bytes(masks)
        written.append(write_bytes(output_path(file_name, f"{suffix}.tif", savedir), data))
    return written


def masks_tiff_bytes(masks, compression: Optional[str] = "zlib") -> bytes:
    """The label TIFF of :func:`save_masks` (``tif=True``) as bytes: uint16, or uint32 when needed;
    3D masks one page per plane.

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) or (Lz, Ly, Lx) labels, 0 = background.
    compression : {"zlib", None}
        zlib, as the file is written, or none (faster to make, e.g. for an answer sent over loopback).

    Returns
    -------
    bytes
    """
    import tifffile

    masks = as_label_image(masks, "masks")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, masks.astype(label_dtype(masks), copy=False), photometric="minisblack",
                     compression=compression)
    return buffer.getvalue()
