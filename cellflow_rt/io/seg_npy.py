"""The Cellpose GUI's ``<stem>_seg.npy`` (``io.masks_flows_to_seg``): written, never loaded here."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._labels import as_label_image
from .atomic import atomic_write
from .errors import PathLike
from .flows import cellprob_to_uint8, flow_to_rgb
from .outlines import masks_to_outlines
from .paths import output_path

__all__ = ["save_seg_npy"]


def _seg_flows(flows: Sequence, masks: np.ndarray, rule: str) -> list:
    """The five ``flows`` entries of a ``_seg.npy`` file, in the order Cellpose writes them."""
    from ..resize import resize_nearest

    rgb, dP, cellprob = flows[0], np.asarray(flows[1]), np.asarray(flows[2])
    rgb = flow_to_rgb(dP, rule=rule) if rgb is None else np.asarray(rgb)
    cp8 = cellprob_to_uint8(cellprob)
    if rgb.ndim == 3:
        Ly, Lx = masks.shape[-2:]
        zeros = np.zeros((1, *rgb.shape), np.uint8)  # the flow picture's own size, as Cellpose's
        if rgb.shape[:2] != (Ly, Lx):  # flows at another size than the masks
            rgb, cp8 = resize_nearest(rgb, Ly, Lx), resize_nearest(cp8, Ly, Lx)
        first = [rgb[np.newaxis], cp8[np.newaxis], zeros]
    else:
        # 3D: dZ as uint8 around 127 (Cellpose casts without clipping; we clip |dZ| > 10)
        dz8 = np.clip(dP[0] / 10 * 127 + 127, 0, 255).astype(np.uint8)
        first = [rgb, cp8, dz8]
    extra = flows[3] if len(flows) > 3 else []
    return first + [extra, np.concatenate((dP, cellprob[np.newaxis]), axis=0)]


def save_seg_npy(masks, flows: Sequence, file_name: PathLike, diameter: float = 30.0,
                 channels: Optional[Sequence[int]] = None, savedir: Optional[PathLike] = None,
                 img_restore: Optional[np.ndarray] = None, restore_type: Optional[str] = None,
                 ratio: float = 1.0, rule: str = "numpy2.0") -> Path:
    """Save ``<stem>_seg.npy``, the file the Cellpose GUI opens (``io.masks_flows_to_seg``).

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) or (Lz, Ly, Lx) labels.
    flows : sequence
        ``[rgb, dP, cellprob]`` as returned by ``eval``: ``rgb`` the flow picture (or None to compute
        it), ``dP`` (2, Ly, Lx) or (3, Lz, Ly, Lx) flows, ``cellprob`` the logits. A fourth entry, if
        any, is stored as ``flows[3]``.
    file_name : str or path-like
        The input image's path; stored as ``filename`` (the GUI reopens the image from it).
    diameter : float
        Diameter used (or estimated).
    channels : sequence of int, optional
        ``[chan, chan2]`` used (``chan_choose``); default ``[0, 0]``.
    savedir : str or path-like, optional
        Output folder; Cellpose always writes next to the image.
    img_restore : ndarray, optional
        The restored image (image restoration), stored with ``restore_type`` and ``ratio``.
    restore_type : str, optional
        The restoration model's name; the three restoration keys are written only with both it and
        ``img_restore``, as in Cellpose.
    ratio : float
        Stored as ``ratio``. Cellpose's command line always writes 1.0 here, also for upsampling
        (its computed ratio goes unused).
    rule : {"numpy2.0", "numpy2.1"}
        How a missing flow picture is drawn (:func:`~cellflow_rt.io.flows.flow_to_rgb`; a model's
        family gives it: ``model.family.flow_picture_rule``).

    Returns
    -------
    Path

    Notes
    -----
    The file is ``np.save`` of a dict, i.e. a pickle, because that is the GUI's format; this package
    writes it but never loads one. Keys: ``outlines`` (label id on outline pixels), ``masks``
    (uint16, or uint32 from 65535 masks), ``chan_choose``, ``ismanual`` (False per label up to the
    largest), ``filename``, ``flows`` (list of 5: RGB flow (1, Ly, Lx, 3) uint8 at mask size, cellprob
    uint8 (1, Ly, Lx), zeros (1, Ly, Lx, 3) uint8 -- in 3D the RGB flow (Lz, Ly, Lx, 3), cellprob
    (Lz, Ly, Lx) and dZ as uint8 --, ``[]``, and float32 ``[dP..., cellprob]``), ``diameter``; with
    image restoration also ``restore``, ``ratio`` and ``img_restore``.
    """
    masks = as_label_image(masks, "masks")
    if len(flows) < 3:
        raise ValueError(f"flows must be [rgb, dP, cellprob], got {len(flows)} entries")
    dtype = np.uint16 if masks.max(initial=0) < 2**16 - 1 else np.uint32
    outlines = np.where(masks_to_outlines(masks), masks, 0)
    chan_choose = [0, 0] if channels is None else [int(c) for c in channels]
    seg = {
        "outlines": outlines.astype(dtype),
        "masks": masks.astype(dtype),
        "chan_choose": chan_choose,
        "ismanual": np.zeros(int(masks.max(initial=0)), bool),
        "filename": os.fspath(file_name),
        "flows": _seg_flows(flows, masks, rule),
        "diameter": float(diameter),
    }
    if restore_type is not None and img_restore is not None:
        seg.update(restore=restore_type, ratio=float(ratio), img_restore=np.asarray(img_restore, np.float32))
    path = output_path(file_name, "_seg.npy", savedir)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, seg, allow_pickle=True)
    return path
