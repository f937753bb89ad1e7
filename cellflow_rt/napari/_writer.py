"""Writers: a Labels layer as Cellpose's ``_cp_masks.tif`` or ``_seg.npy``.

Both go through cellflow-rt's own writers (atomic, Cellpose's format): the TIFF through
:func:`cellflow_rt.io.save_masks`, the ``_seg.npy`` through :func:`cellflow_rt.io.save_seg_npy`,
with the flows of the run that made the masks (kept in the layer's metadata) or, for masks drawn by
hand or read without flows, zero flows of the right shape.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np

from ..io import image_stem
from ..io import save_masks, save_seg_npy
from ._reader import SEG_SUFFIX


def write_masks_tif(path: str, data, meta: dict) -> List[str]:
    """Save labels as a zlib TIFF at ``path`` (uint16, or uint32 above 65535 labels), as ``_cp_masks.tif``."""
    path = Path(path)
    written = save_masks(np.asarray(data), path, png=False, tif=True, savedir=path.parent, suffix="")
    return [os.fspath(p) for p in written]


def _flows_for(masks: np.ndarray, info: dict):
    dP, cellprob = info.get("dP"), info.get("cellprob")
    if isinstance(dP, np.ndarray) and isinstance(cellprob, np.ndarray) and cellprob.shape == masks.shape \
            and dP.shape[1:] == masks.shape:
        return [None, dP, cellprob]
    ncomp = 3 if masks.ndim == 3 else 2
    return [None, np.zeros((ncomp, *masks.shape), np.float32), np.zeros(masks.shape, np.float32)]


def write_seg_npy(path: str, data, meta: dict) -> List[str]:
    """Save labels as a Cellpose ``_seg.npy``.

    A path not ending in ``_seg.npy`` gets that ending (``cells.npy`` -> ``cells_seg.npy``), the name
    Cellpose's GUI looks for. The file's ``filename`` entry is the layer's image file when its name
    matches, else ``<stem>.tif`` beside the output.
    """
    path = Path(path)
    stem = path.name[: -len(SEG_SUFFIX)] if path.name.endswith(SEG_SUFFIX) else image_stem(path)
    info = (meta.get("metadata") or {}).get("cellflow_rt", {})
    image_path = info.get("image_path")
    if not (image_path and image_stem(image_path) == stem):
        image_path = path.parent / f"{stem}.tif"
    masks = np.asarray(data)
    written = save_seg_npy(masks, _flows_for(masks, info), image_path, diameter=info.get("diameter") or 30.0,
                           channels=info.get("channels"), savedir=path.parent)
    return [os.fspath(written)]
