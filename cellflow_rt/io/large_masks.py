"""Label images larger than memory, written piece by piece: a tiled BigTIFF, or a PNG band by band.

A blockwise run (``--blocksize``) keeps its labels in a zarr array; with ``--save_tif`` /
``--save_png`` they are copied from it into Cellpose's ``<stem>_cp_masks.tif`` / ``.png`` without
ever holding the whole image:

- **TIFF**: BigTIFF (no 4 GB limit), 256 x 256 tiles, Deflate, one page per Z plane; read one row of
  tiles at a time, in spans about one zarr chunk wide. Memory: a few chunks, whatever the image size
  (2.3 MiB for a 4096^2 canvas in 512^2 chunks, ``tests/io/test_large_masks.py``).
- **PNG** (16-bit gray, Cellpose's format): written :data:`PNG_BAND_ROWS` rows at a time, so memory
  grows with the image's *width*: the band (8 bytes per pixel: the uint32 read, the uint16 rows, the
  encoder's copy) plus the zarr chunks it crosses (15 MiB measured for that canvas; by that rate an
  estimated few hundred MB for a 100,000-pixel-wide slide). PNG holds one 2D plane, at most 65535 labels and
  2**31 - 1 pixels a side, and has no tiles: a viewer decodes the whole image (20 GB for 100,000^2
  pixels), so it suits images up to a few ten thousand pixels a side; larger slides want the TIFF.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from .atomic import atomic_write
from .errors import PathLike
from .paths import MASKS_SUFFIX, output_path
from .png import write_png_bands

__all__ = ["save_large_masks", "TIFF_TILE", "PNG_BAND_ROWS"]

#: Side of the TIFF tiles.
TIFF_TILE = 256
#: Rows per band of the PNG writer.
PNG_BAND_ROWS = 256


def _largest_label(labels) -> int:
    top = 0
    for y in range(0, labels.shape[-2], PNG_BAND_ROWS):
        top = max(top, int(np.max(labels[..., y:y + PNG_BAND_ROWS, :], initial=0)))
    return top


def _span(labels) -> int:
    """Columns read at once: the zarr chunk width rounded up to whole tiles (4 tiles for other arrays)."""
    chunk = getattr(labels, "chunks", None)
    width = chunk[-1] if chunk else 4 * TIFF_TILE
    return TIFF_TILE * max(1, -(-int(width) // TIFF_TILE))


def _tiff_tiles(labels, dtype) -> Iterator[np.ndarray]:
    """Tiles in TIFF order (planes, tile rows, tile columns), read a tile row and a span at a time."""
    Ly, Lx = labels.shape[-2:]
    span = _span(labels)
    planes = [()] if labels.ndim == 2 else [(z,) for z in range(labels.shape[0])]
    for plane in planes:
        for y in range(0, Ly, TIFF_TILE):
            for x0 in range(0, Lx, span):
                piece = np.asarray(labels[plane + (slice(y, y + TIFF_TILE), slice(x0, x0 + span))]).astype(dtype)
                for x in range(0, piece.shape[1], TIFF_TILE):
                    yield piece[:, x:x + TIFF_TILE]


def save_large_masks(labels, file_name: PathLike, savedir: Optional[PathLike] = None, tif: bool = True,
                     png: bool = False, suffix: str = MASKS_SUFFIX, n_labels: Optional[int] = None) -> List[Path]:
    """Write ``<stem><suffix>.tif`` and/or ``.png`` from an array read in pieces (e.g. a zarr array).

    Parameters
    ----------
    labels : array-like
        (Ly, Lx) or (Lz, Ly, Lx) labels supporting numpy slicing (zarr, dask, memmap, ndarray).
    file_name : str or path-like
        The input image's path (its stem names the outputs; ``big.ome.zarr`` -> ``big``).
    savedir : str or path-like, optional
        Output folder (default: the input's folder; created when missing).
    tif, png : bool
        Which files to write. PNG needs 2D labels below 65536; otherwise it is skipped and a TIFF
        written instead (Cellpose's rule for its PNG), with a warning.
    suffix : str
        ``_cp_masks`` or Cellpose's ``--output_name``.
    n_labels : int, optional
        The largest label, if known (a blockwise run knows it); else found in one more pass.

    Returns
    -------
    list of Path
        The files written.
    """
    import warnings

    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    top = _largest_label(labels) if n_labels is None else int(n_labels)
    dtype = np.uint16 if top < 2**16 else np.uint32
    if png and (labels.ndim != 2 or dtype != np.uint16):
        why = "3D labels" if labels.ndim != 2 else f"{top} labels do not fit a 16-bit PNG"
        warnings.warn(f"{why}: writing {Path(file_name).name}'s masks as TIFF instead of PNG", stacklevel=2)
        png, tif = False, True
    written = []
    if tif:
        import tifffile

        path = output_path(file_name, f"{suffix}.tif", savedir)
        with atomic_write(path) as tmp:
            tifffile.imwrite(tmp, _tiff_tiles(labels, dtype), shape=tuple(labels.shape), dtype=dtype,
                             tile=(TIFF_TILE, TIFF_TILE), bigtiff=True, compression="zlib", photometric="minisblack",
                             metadata=None)
        written.append(path)
    if png:
        bands = (np.asarray(labels[y:y + PNG_BAND_ROWS]).astype(np.uint16)
                 for y in range(0, labels.shape[0], PNG_BAND_ROWS))
        written.append(write_png_bands(output_path(file_name, f"{suffix}.png", savedir), tuple(labels.shape),
                                       np.uint16, bands))
    return written
