"""Names of inputs and outputs: an image's stem, ``<savedir>/<stem><suffix>`` for its outputs, and
the folders Cellpose's ``--savedir`` / ``--dir_above`` / ``--in_folders`` put each output in."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import OutputWriteError, PathLike

__all__ = ["image_stem", "output_path", "OutputLayout", "MASKS_SUFFIX"]

#: Cellpose's default suffix of mask files (``--output_name`` replaces it).
MASKS_SUFFIX = "_cp_masks"


def image_stem(path: PathLike) -> str:
    """File name without its extension; ``.ome.tif`` / ``.ome.tiff`` / ``.ome.zarr`` count as one extension.

    Examples
    --------
    >>> image_stem("data/cells_01.tif"), image_stem("x/a.b.ome.tiff")
    ('cells_01', 'a.b')
    """
    name = Path(path).name
    lower = name.lower()
    for ext in (".ome.tif", ".ome.tiff", ".ome.zarr"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def output_path(file_name: PathLike, suffix: str, savedir: Optional[PathLike] = None) -> Path:
    """Path of an output file: ``<savedir or the image's folder>/<image stem><suffix>``.

    ``savedir`` is created when missing.

    Examples
    --------
    >>> output_path("data/img_01.tif", "_cp_masks.png").as_posix()
    'data/img_01_cp_masks.png'
    """
    folder = Path(savedir) if savedir is not None else Path(file_name).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(folder, f"cannot create the output folder ({exc.strerror or exc})") from exc
    path = folder / f"{image_stem(file_name)}{suffix}"
    if path.exists() and Path(file_name).exists() and os.path.samefile(path, file_name):
        raise OutputWriteError(path, "the output would replace the input image (an empty --output_name?)")
    return path


#: ``--in_folders`` subfolder of each kind of output (Cellpose's names; ``figure`` stays at the top).
_SUBFOLDERS = {"masks": "masks", "outlines": "outlines", "txt": "txt_outlines", "flows": "flows", "figure": None}


@dataclass(frozen=True)
class OutputLayout:
    """Where a run's outputs go and how the mask files are named (Cellpose 3.1.1.1's ``io.save_masks``).

    Attributes
    ----------
    savedir : Path or None
        Folder of the outputs; None: the image's folder, or the folder above it with ``dir_above``.
    dir_above : bool
        Without ``savedir``, write into the image folder's parent.
    in_folders : bool
        Sort outputs into ``masks/``, ``outlines/``, ``txt_outlines/`` and ``flows/`` under that folder.
    suffix : str
        Ending of the mask, outline-picture, figure and flow file names (``_cp_masks``, or Cellpose's
        ``--output_name``).

    Notes
    -----
    ``_seg.npy`` and ``_rois.zip`` always go next to the image, as in Cellpose. Kinds: ``masks``
    (label PNG/TIFF, OME-TIFF), ``outlines`` (outline picture), ``txt`` (ImageJ text outlines,
    GeoJSON), ``flows``, ``figure`` (the ``--save_mpl`` figure, never in a subfolder).
    """

    savedir: Optional[Path] = None
    dir_above: bool = False
    in_folders: bool = False
    suffix: str = MASKS_SUFFIX

    def folder(self, image: PathLike, kind: str) -> Path:
        """Folder of the ``kind`` output of ``image`` (not created here)."""
        if kind not in _SUBFOLDERS:
            raise ValueError(f"kind must be one of {', '.join(_SUBFOLDERS)}, got {kind!r}")
        if self.savedir is not None:
            base = Path(self.savedir)
        else:
            # absolute first: the folder above "cells.tif" is "..", not "."
            base = Path(image).absolute().parent.parent if self.dir_above else Path(image).parent
        sub = _SUBFOLDERS[kind]
        return base / sub if self.in_folders and sub else base
