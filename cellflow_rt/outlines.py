"""Mask outlines under their first home; they live in :mod:`cellflow_rt.io.outlines` (kept for existing imports)."""
from .io.outlines import masks_to_outlines, outlines_list, outlines_with_labels

__all__ = ["masks_to_outlines", "outlines_list", "outlines_with_labels"]
