"""Files in and out: reading images, finding them in folders, and every output file, each written
atomically (complete or absent, never partial).

One module per format or concern, so that a new format has an obvious home:

=================  ====================================================================================
module             job
=================  ====================================================================================
``read``           :func:`imread` (a file), :func:`imread_bytes` (its bytes in memory): TIFF, PNG, JPEG,
                   ``.npy``
``peek``           :func:`peek_shape`: an image's shape from its header, before decoding
``source``         the readers' input: a path or an in-memory buffer, one code path for both
``pillow_read``    PNG/JPEG, and LZW/JPEG TIFFs without imagecodecs, through Pillow
``discovery``      :func:`find_images`: a folder's images with Cellpose's rules
``paths``          :func:`image_stem`, :func:`output_path`, :class:`OutputLayout` (``--savedir``,
                   ``--dir_above``, ``--in_folders``, ``--output_name``)
``atomic``         :func:`atomic_write` and its two helpers (bytes, TIFF)
``errors``         :class:`ImageReadError`, :class:`OutputWriteError`
``masks``          ``<stem>_cp_masks.png`` / ``.tif``: :func:`save_masks`, :func:`masks_tiff_bytes`
``ome_tiff``       ``<stem>_cp_masks.ome.tif``: :func:`save_masks_ome_tif`
``seg_npy``        ``<stem>_seg.npy`` (the Cellpose GUI's file): :func:`save_seg_npy`
``imagej``         ``<stem>_cp_outlines.txt``, ``<stem>_rois.zip``: :func:`save_outlines_txt`, :func:`save_rois_zip`,
                   :func:`rois_zip_bytes`
``geojson``        ``<stem>.geojson`` (QuPath): :func:`save_geojson`, :func:`geojson_bytes`
``restored``       ``<stem>_restored.tif`` (image restoration): :func:`save_restored`
``flows``          flow pictures (:func:`flow_to_rgb`) and ``<stem>_flows_cp_masks.tif``, ``<stem>_dP_cp_masks.tif``
``pictures``       ``<stem>_outlines_cp_masks.png``, ``<stem>_cp_output_cp_masks.png``: :func:`save_outlines_png`,
                   :func:`save_summary_png`
``large_masks``    labels larger than memory, streamed into a tiled BigTIFF or a PNG: :func:`save_large_masks`
``png``            the PNG encoder (whole images or bands of rows)
``outlines``       mask outlines (:func:`masks_to_outlines`, :func:`outlines_list`; numba kernels in
                   ``_outline_kernels``)
=================  ====================================================================================

Writers take the masks and the *input image's* path: outputs are named ``<stem><suffix>`` in
``savedir`` or next to the image, with Cellpose 3.1.1.1's names. Where a file is also sent elsewhere
(``cellflow-rt serve``'s answers), a ``*_bytes`` function builds its content in memory and the
``save_*`` function writes those bytes. The writers (and the numba kernels behind them) are imported
on first use, so reading images stays a light import.
"""
from __future__ import annotations

import importlib

from .atomic import atomic_write
from .discovery import IMAGE_EXTENSIONS, find_images
from .errors import ImageReadError, OutputWriteError, PathLike
from .paths import MASKS_SUFFIX, OutputLayout, image_stem, output_path
from .peek import peek_shape
from .read import FORMATS, imread, imread_bytes

#: Names imported from their module on first use: ``name -> module``.
_LAZY = {
    "save_masks": "masks", "save_masks_ome_tif": "ome_tiff", "save_seg_npy": "seg_npy",
    "save_outlines_txt": "imagej", "save_rois_zip": "imagej", "save_geojson": "geojson",
    "rois_zip_bytes": "imagej", "geojson_bytes": "geojson", "masks_tiff_bytes": "masks",
    "save_flows": "flows", "save_restored": "restored", "flow_to_rgb": "flows", "cellprob_to_uint8": "flows",
    "masks_to_outlines": "outlines", "outlines_list": "outlines",
    "save_outlines_png": "pictures", "save_summary_png": "pictures", "save_large_masks": "large_masks",
}

__all__ = ["ImageReadError", "OutputWriteError", "PathLike", "imread", "imread_bytes", "peek_shape", "FORMATS",
           "find_images", "atomic_write",
           "image_stem", "output_path", "OutputLayout", "IMAGE_EXTENSIONS", "MASKS_SUFFIX", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
