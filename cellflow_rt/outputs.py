"""The output writers under their first home; they live in :mod:`cellflow_rt.io` (one module per format).

Kept so that ``from cellflow_rt import outputs`` / ``outputs.save_masks(...)`` keep working.
"""
from .io.flows import cellprob_to_uint8, flow_to_rgb, save_flows
from .io.geojson import save_geojson
from .io.imagej import save_outlines_txt, save_rois_zip
from .io.masks import save_masks
from .io.ome_tiff import save_masks_ome_tif
from .io.paths import MASKS_SUFFIX, output_path
from .io.restored import save_restored
from .io.seg_npy import save_seg_npy

__all__ = ["output_path", "save_masks", "save_masks_ome_tif", "save_seg_npy", "save_outlines_txt",
           "save_rois_zip", "save_geojson", "save_flows", "save_restored", "flow_to_rgb", "cellprob_to_uint8", "MASKS_SUFFIX"]
