"""cellflow-rt: Cellpose 3.x (CPnet) segmentation without PyTorch.

The network runs in ONNX Runtime; dynamics, thresholds, resampling and stitching are numba kernels.
``from cellflow_rt import models`` gives Cellpose-compatible ``CellposeModel`` and ``Cellpose``.
"""
__version__ = "0.1.0"
