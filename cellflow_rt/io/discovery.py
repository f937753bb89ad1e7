"""Finding the images of a folder with Cellpose's rules (``io.get_image_files``)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

from .errors import PathLike
from .paths import image_stem

__all__ = ["find_images", "IMAGE_EXTENSIONS", "OUTPUT_STEM_ENDINGS"]

#: Extensions :func:`find_images` picks up (any letter case). Cellpose's list plus ``.npy``, minus the
#: formats that need extra readers (.dax, .nd2, .nrrd).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".flex", ".npy")

#: Stem endings of files that are outputs or training targets, never inputs (Cellpose's list plus
#: ``_seg`` for the pickled ``_seg.npy`` files, since we also discover ``.npy`` images).
OUTPUT_STEM_ENDINGS = ("_cp_output", "_flows", "_flows_0", "_flows_1", "_flows_2", "_cellprob", "_masks",
                       "_seg")


def _natural_key(path: Path):
    # Cellpose sorts with natsort: digit runs compare as numbers ("img2" before "img10")
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def find_images(directory: PathLike, img_filter: Optional[str] = None, look_one_level_down: bool = False,
                mask_filter: str = "_masks") -> List[Path]:
    """Image files of a folder, with Cellpose's rules (``io.get_image_files``).

    Parameters
    ----------
    directory : str or path-like
        Folder to search.
    img_filter : str, optional
        Keep only images whose stem ends with this string (Cellpose's ``--img_filter``).
    look_one_level_down : bool
        Also search the folder's immediate subfolders.
    mask_filter : str
        Stem ending of label files to skip (Cellpose's ``--mask_filter``), in addition to the
        output endings ``_cp_output, _flows, _flows_0, _flows_1, _flows_2, _cellprob, _masks, _seg``
        (so ``_cp_masks`` outputs are never taken for inputs on a rerun).

    Returns
    -------
    list of Path
        Naturally sorted ("img2" before "img10"). Extensions: png, jpg, jpeg, tif, tiff, flex, npy, in
        any letter case; hidden files (leading ".") are skipped; ``.ome.tif`` stems exclude ``.ome``.

    Raises
    ------
    FileNotFoundError
        ``directory`` does not exist or is not a folder.
    ValueError
        No image is left after the rules above (the message says how many files were seen).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {os.fspath(directory)!r} does not exist or is not a folder")
    folders = [directory]
    if look_one_level_down:
        folders += sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=_natural_key)
    endings = OUTPUT_STEM_ENDINGS + ((mask_filter,) if mask_filter else ())
    n_files = n_images = 0
    found = []
    for folder in folders:
        for path in folder.iterdir():
            if not path.is_file():
                continue
            n_files += 1
            if not _is_image_name(path.name):
                continue
            n_images += 1
            stem = image_stem(path)
            if any(stem.endswith(e) for e in endings):
                continue
            if img_filter and not stem.endswith(img_filter):
                continue
            found.append(path)
    if not found:
        filt = f" ending with {img_filter!r}" if img_filter else ""
        raise ValueError(f"no images{filt} in {os.fspath(directory)!r}: {n_files} file(s), {n_images} with "
                         f"an image extension ({', '.join(IMAGE_EXTENSIONS)}), none left after skipping "
                         f"stems ending in {', '.join(endings)}")
    return sorted(found, key=_natural_key)
