"""The exporter (installed as ``cellflow_rt.export``): Cellpose CPnet checkpoints to ONNX.

The only part of cellflow-rt that uses PyTorch; nothing here imports torch at import time.
``export_checkpoint`` is the Python entry point; ``command.export_command`` the click command.
The modules follow the export: ``sources`` (find the files), ``checkpoint`` (load and recognise
a CPnet), ``cpnet`` (the network in torch), ``onnx_export`` (the graph, fp16 variant),
``parity`` (the gate), ``size_model`` (the pickled size model as numbers), ``manifest``.
"""
from .exporter import export_checkpoint

__all__ = ["export_checkpoint"]
