"""Flow pictures under their first home; they live in :mod:`cellflow_rt.io.flows` (kept for existing imports)."""
from .io.flows import cellprob_to_uint8, flow_to_rgb, normalize99

__all__ = ["flow_to_rgb", "cellprob_to_uint8", "normalize99"]
