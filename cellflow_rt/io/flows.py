"""Flows as pictures and files: Cellpose's ``plot.dx_to_circ``, the uint8 images of the ``_seg.npy``
file, and ``<stem>_flows_cp_masks.tif`` / ``<stem>_dP_cp_masks.tif``.

Arithmetic follows the reference step by step in the input's float type (float32 flows stay
float32, as numpy 2 computes them in Cellpose), so the uint8 results are the reference's.
Percentiles use :func:`cellflow_rt.percentile.percentiles` (numpy 2.0's arithmetic, Cellpose 3's
reference; Cellpose 4's flow picture takes numpy 2.1's and subsamples big arrays: ``rule="numpy2.1"``).
Which rule a model's pictures follow is its family's choice (``model.family.flow_to_rgb``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..normalize import percentile_sample
from ..percentile import percentiles
from .atomic import write_tiff
from .errors import PathLike
from .paths import MASKS_SUFFIX, output_path

__all__ = ["flow_to_rgb", "cellprob_to_uint8", "normalize99", "save_flows"]


def normalize99(x: np.ndarray, lower: float = 1.0, upper: float = 99.0, rule: str = "numpy2.0") -> np.ndarray:
    """Scale so that the 1st percentile maps to 0 and the 99th to 1 (Cellpose's ``normalize99``).

    Float32 unless ``x`` is float64; all zeros when the percentiles differ by 1e-3 or less.
    ``rule``: ``"numpy2.0"`` (Cellpose 3.1.1.1's call, all values) or ``"numpy2.1"`` (Cellpose
    4.2.1.1's: numpy 2.1's percentiles, on a strided subsample of arrays above 224**3 elements).
    """
    if rule not in ("numpy2.0", "numpy2.1"):
        raise ValueError(f"rule must be 'numpy2.0' or 'numpy2.1', got {rule!r}")
    x = np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    if rule == "numpy2.1":
        lo, hi = percentiles(percentile_sample(x), (lower, upper), rule="numpy2.1")
    else:
        lo, hi = percentiles(x, (lower, upper))
    if hi - lo > 1e-3:
        x -= lo
        x /= hi - lo
    else:
        x[:] = 0
    return x


def flow_to_rgb(dP, rule: str = "numpy2.0") -> np.ndarray:
    """RGB picture of flows: hue from the direction, brightness from the magnitude (``dx_to_circ``).

    Parameters
    ----------
    dP : ndarray
        (2, Ly, Lx) flows [dY, dX], or (3, Lz, Ly, Lx) flows [dZ, dY, dX]; any leading spatial axes
        after the first are kept.
    rule : {"numpy2.0", "numpy2.1"}
        The magnitude's percentile rule (:func:`normalize99`): Cellpose 3.1.1.1's or 4.2.1.1's picture.

    Returns
    -------
    ndarray
        uint8 (..., 3). The magnitude uses all components, normalised to its 1st-99th percentiles;
        the angle is ``atan2(dP[1], dP[0])`` (dX and dY in 2D; dY and dZ in 3D, as in Cellpose).
    """
    dP = np.asarray(dP)
    if dP.ndim < 2 or dP.shape[0] not in (2, 3):
        raise ValueError(f"dP must have shape (2, Ly, Lx) or (3, Lz, Ly, Lx), got {dP.shape}")
    if dP.dtype != np.float64:
        dP = dP.astype(np.float32, copy=False)
    mag = 255 * np.clip(normalize99(np.sqrt(np.sum(dP**2, axis=0)), rule=rule), 0, 1.0)
    angles = np.arctan2(dP[1], dP[0]) + np.pi
    mag /= 2
    rgb = np.empty((*dP.shape[1:], 3), np.uint8)
    for c in range(3):
        rgb[..., c] = np.clip(mag * (np.cos(angles + c * 2 * np.pi / 3) + 1), 0, 255).astype(np.uint8)
    return rgb


def cellprob_to_uint8(cellprob) -> np.ndarray:
    """Cell probability logits as uint8 ``255 * clip(normalize99(cellprob), 0, 1)`` (``_seg.npy`` flows[1])."""
    return (np.clip(normalize99(cellprob), 0, 1) * 255).astype(np.uint8)


def save_flows(flows: Sequence, file_name: PathLike, savedir: Optional[PathLike] = None,
               suffix: str = MASKS_SUFFIX, rule: str = "numpy2.0") -> List[Path]:
    """Save the flow picture ``<stem>_flows_cp_masks.tif`` and the raw ``<stem>_dP_cp_masks.tif``.

    Parameters
    ----------
    flows : sequence
        ``[rgb, dP, cellprob]`` as returned by ``eval`` (``rgb`` None to compute it).
    file_name : str or path-like
        The input image's path.
    savedir : str or path-like, optional
        Output folder.
    suffix : str
        Replaces ``_cp_masks``.
    rule : {"numpy2.0", "numpy2.1"}
        How a missing flow picture is drawn (:func:`flow_to_rgb`; ``model.family.flow_picture_rule``).

    Returns
    -------
    list of Path
        The RGB picture (uint8 (Ly, Lx, 3), or (Lz, Ly, Lx, 3) pages) and the float32 stack
        ``[dY, dX, cellprob]`` (or ``[dZ, dY, dX, cellprob]``), both zlib-compressed.

    Notes
    -----
    Cellpose names these files the same way but, under numpy 2, fails before writing them (notes A9);
    its ``_dP`` file would hold dP only, ours adds cellprob as the last channel (``_seg.npy``'s
    ``flows[4]``). These names end in ``_cp_masks`` so :func:`cellflow_rt.io.find_images` skips them.
    """
    if len(flows) < 3:
        raise ValueError(f"flows must be [rgb, dP, cellprob], got {len(flows)} entries")
    dP, cellprob = np.asarray(flows[1], np.float32), np.asarray(flows[2], np.float32)
    if dP.shape[1:] != cellprob.shape:
        raise ValueError(f"dP {dP.shape} and cellprob {cellprob.shape} do not match")
    rgb = flow_to_rgb(dP, rule=rule) if flows[0] is None else np.asarray(flows[0], np.uint8)
    return [
        write_tiff(output_path(file_name, f"_flows{suffix}.tif", savedir), rgb, photometric="rgb",
                    compression="zlib"),
        write_tiff(output_path(file_name, f"_dP{suffix}.tif", savedir),
                    np.concatenate((dP, cellprob[np.newaxis]), axis=0), photometric="minisblack",
                    compression="zlib"),
    ]
