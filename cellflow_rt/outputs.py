"""Output files, with Cellpose 3.1.1.1's names (``io.save_masks``, ``io.masks_flows_to_seg``,
``io.save_rois``), plus GeoJSON and OME-TIFF labels.

Every writer takes the masks and the *input image's* path: outputs are named ``<stem><suffix>`` where
``<stem>`` is the image's file name without extension, in ``savedir`` or next to the image. Files are
written through :func:`cellflow_rt.io.atomic_write`: complete or absent, never partial. Each writer
returns the path(s) it wrote.

=============================  ===========================================  ======================
file                           content                                      writer
=============================  ===========================================  ======================
``<stem>_cp_masks.png``        uint16 labels (2D, < 65536 masks)            :func:`save_masks`
``<stem>_cp_masks.tif``        uint16/uint32 labels, zlib, 3D multi-page    :func:`save_masks`
``<stem>_cp_masks.ome.tif``    the same as OME-TIFF (axes YX / ZYX)         :func:`save_masks_ome_tif`
``<stem>_seg.npy``             Cellpose GUI file (pickled dict)             :func:`save_seg_npy`
``<stem>_cp_outlines.txt``     ImageJ text outlines, one mask per line      :func:`save_outlines_txt`
``<stem>_rois.zip``            ImageJ ROI set (roifile)                     :func:`save_rois_zip`
``<stem>.geojson``             QuPath-compatible polygons                   :func:`save_geojson`
``<stem>_flows_cp_masks.tif``  RGB flow picture (uint8)                     :func:`save_flows`
``<stem>_dP_cp_masks.tif``     float32 [dP..., cellprob]                    :func:`save_flows`
``<stem>_restored.tif``        float32 restored image (image restoration)   :func:`save_restored`
=============================  ===========================================  ======================
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ._labels import as_label_image
from .io import OutputWriteError, PathLike, atomic_write, image_stem
from .outlines import masks_to_outlines, outlines_with_labels
from .outputs_flows import cellprob_to_uint8, flow_to_rgb

__all__ = ["output_path", "save_masks", "save_masks_ome_tif", "save_seg_npy", "save_outlines_txt",
           "save_rois_zip", "save_geojson", "save_flows", "save_restored", "flow_to_rgb", "cellprob_to_uint8"]

#: Cellpose's default suffix of mask files (``--output_name`` replaces it).
MASKS_SUFFIX = "_cp_masks"


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


def _label_dtype(masks: np.ndarray):
    top = int(masks.max()) if masks.size else 0
    if top < 2**16:
        return np.uint16
    if top < 2**32:
        return np.uint32
    raise ValueError(f"masks has labels up to {top}; at most 2**32 - 1 can be saved")


def _write_tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    import tifffile

    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


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
    dtype = _label_dtype(masks)
    if masks.ndim == 3:
        png = False
    if png and dtype != np.uint16:
        warnings.warn(f"{int(masks.max())} masks do not fit a 16-bit PNG; saving {file_name} masks as TIF",
                      stacklevel=2)
        png, tif = False, True
    written = []
    if png:
        import imagecodecs

        written.append(_write_bytes(output_path(file_name, f"{suffix}.png", savedir),
                                    imagecodecs.png_encode(masks.astype(np.uint16, copy=False))))
    if tif:
        written.append(_write_tiff(output_path(file_name, f"{suffix}.tif", savedir),
                                   masks.astype(dtype, copy=False), photometric="minisblack",
                                   compression="zlib"))
    return written


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
    return _write_tiff(path, masks.astype(_label_dtype(masks), copy=False), ome=True, photometric="minisblack",
                       compression="zlib", metadata={"axes": axes, "Name": f"{image_stem(file_name)}{suffix}"})


def _seg_flows(flows: Sequence, masks: np.ndarray) -> list:
    """The five ``flows`` entries of a ``_seg.npy`` file, in the order Cellpose writes them."""
    from .resize import resize_nearest

    rgb, dP, cellprob = flows[0], np.asarray(flows[1]), np.asarray(flows[2])
    rgb = flow_to_rgb(dP) if rgb is None else np.asarray(rgb)
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
                 ratio: float = 1.0) -> Path:
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
        "flows": _seg_flows(flows, masks),
        "diameter": float(diameter),
    }
    if restore_type is not None and img_restore is not None:
        seg.update(restore=restore_type, ratio=float(ratio), img_restore=np.asarray(img_restore, np.float32))
    path = output_path(file_name, "_seg.npy", savedir)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, seg, allow_pickle=True)
    return path


def _outlines_2d(masks, what: str):
    masks = as_label_image(masks, "masks")
    if masks.ndim != 2:
        raise ValueError(f"{what} are written for 2D masks only, got shape {masks.shape}")
    return outlines_with_labels(masks)


def save_outlines_txt(masks, file_name: PathLike, savedir: Optional[PathLike] = None) -> Path:
    """Save ``<stem>_cp_outlines.txt``: one mask per line, ``x0,y0,x1,y1,...`` (Cellpose's ImageJ text).

    Lines follow increasing label order; a mask whose outline has 4 points or fewer gets an empty
    line, as in Cellpose. ImageJ reads the file with Cellpose's ``imagej_roi_converter.py`` macro.

    Returns
    -------
    Path
    """
    _, outlines = _outlines_2d(masks, "text outlines")
    lines = [",".join(map(str, o.ravel().tolist())) + "\n" for o in outlines]
    return _write_bytes(output_path(file_name, "_cp_outlines.txt", savedir), "".join(lines).encode())


def save_rois_zip(masks, file_name: PathLike, savedir: Optional[PathLike] = None) -> Path:
    """Save ``<stem>_rois.zip``, an ImageJ/Fiji ROI set (``roifile.ImagejRoi.frompoints`` per mask).

    Masks whose outline has 4 points or fewer are left out, as in Cellpose. ROIs are named by their
    label id, zero-padded so that ImageJ lists them in label order. An existing file is replaced
    (roifile alone would append to it).

    Returns
    -------
    Path
    """
    from roifile import ImagejRoi, roiwrite

    labels, outlines = _outlines_2d(masks, "ROIs")
    width = len(str(int(labels[-1]))) if labels.size else 1
    rois = [ImagejRoi.frompoints(o, name=f"{int(label):0{width}d}")
            for label, o in zip(labels, outlines) if len(o)]
    path = output_path(file_name, "_rois.zip", savedir)
    with atomic_write(path) as tmp:
        roiwrite(tmp, rois, mode="w")
    return path


def save_geojson(masks, file_name: PathLike, savedir: Optional[PathLike] = None,
                 object_type: str = "detection") -> Path:
    """Save ``<stem>.geojson``: a FeatureCollection with one Polygon per mask (QuPath imports it).

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) labels.
    file_name : str or path-like
        The input image's path.
    savedir : str or path-like, optional
        Output folder.
    object_type : {"detection", "annotation"}
        QuPath object type of each feature.

    Returns
    -------
    Path

    Notes
    -----
    Coordinates are pixel (x, y) of the outline pixels (the ``outlines_list`` points, the same as the
    ImageJ outputs), each ring closed by repeating its first point. Properties: ``objectType``,
    ``label`` (the mask's label id) and ``measurements: {"label": id}`` (kept by QuPath's importer).
    Masks whose outline has 4 points or fewer are left out, as in the ImageJ outputs.
    """
    if object_type not in ("detection", "annotation"):
        raise ValueError(f"object_type must be 'detection' or 'annotation', got {object_type!r}")
    labels, outlines = _outlines_2d(masks, "GeoJSON polygons")
    features = []
    for label, o in zip(labels, outlines):
        if not len(o):
            continue
        ring = o.tolist()
        ring.append(ring[0])
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": object_type, "label": int(label),
                                        "measurements": {"label": int(label)}}})
    text = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))
    return _write_bytes(output_path(file_name, ".geojson", savedir), text.encode())


def save_flows(flows: Sequence, file_name: PathLike, savedir: Optional[PathLike] = None,
               suffix: str = MASKS_SUFFIX) -> List[Path]:
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
    rgb = flow_to_rgb(dP) if flows[0] is None else np.asarray(flows[0], np.uint8)
    return [
        _write_tiff(output_path(file_name, f"_flows{suffix}.tif", savedir), rgb, photometric="rgb",
                    compression="zlib"),
        _write_tiff(output_path(file_name, f"_dP{suffix}.tif", savedir),
                    np.concatenate((dP, cellprob[np.newaxis]), axis=0), photometric="minisblack",
                    compression="zlib"),
    ]


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
    return _write_tiff(output_path(file_name, "_restored.tif", savedir), np.ascontiguousarray(np.moveaxis(img, -1, -3)),
                       imagej=True, metadata={"axes": axes})
