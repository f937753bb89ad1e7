"""Names of inputs and outputs: an image's stem, and ``<savedir>/<stem><suffix>`` for its outputs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import OutputWriteError, PathLike

__all__ = ["image_stem", "output_path", "MASKS_SUFFIX"]

#: Cellpose's default suffix of mask files (``--output_name`` replaces it).
MASKS_SUFFIX = "_cp_masks"


def image_stem(path: PathLike) -> str:
    """File name without its extension; ``.ome.tif`` / ``.ome.tiff`` count as one extension.

    Examples
    --------
    >>> image_stem("data/cells_01.tif"), image_stem("x/a.b.ome.tiff")
    ('cells_01', 'a.b')
    """
    name = Path(path).name
    lower = name.lower()
    for ext in (".ome.tif", ".ome.tiff"):
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
    return folder / f"{image_stem(file_name)}{suffix}"
