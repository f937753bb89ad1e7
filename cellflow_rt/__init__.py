"""cellflow-rt: Cellpose 3.x (CPnet) segmentation without PyTorch.

The network runs in ONNX Runtime; dynamics, thresholds, resampling and stitching are numba kernels.
``from cellflow_rt import models`` gives Cellpose-compatible ``CellposeModel`` and ``Cellpose``.
"""
from . import _numba  # noqa: F401  (numba's cache directory, before any kernel is compiled)

__version__ = "0.1.0"
