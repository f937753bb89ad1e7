"""The exporter (installed as ``cellflow_rt.export``): Cellpose CPnet checkpoints to ONNX.

The only part of cellflow-rt that uses PyTorch; nothing here imports torch at import time.
"""
