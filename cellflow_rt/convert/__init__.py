"""Converting Cellpose checkpoints to cellflow-rt models without torch.

The torch-free counterpart of :mod:`cellflow_rt.export`: the same checkpoints in, the same ONNX
graphs and manifests out, using only numpy and ``onnx``. Nothing here imports torch.

Modules, in the order of a conversion: ``torch_checkpoint`` (the safe reader of ``torch.save``
files), ``specs`` (recognise a CPnet or CPSAM), ``cpnet_graph`` / ``cpsam_graph`` (the networks as
ONNX graphs), ``onnx_writer`` (graphs streamed to disk), ``self_check`` (the gate), ``converter``
(:func:`convert_checkpoint`), ``errors``.
"""
from .converter import convert_checkpoint
from .errors import CheckpointError, CheckpointFormatError, ConversionCheckError, SizeModelError, UnsafeCheckpointError

__all__ = ["convert_checkpoint", "CheckpointError", "CheckpointFormatError", "ConversionCheckError",
           "SizeModelError", "UnsafeCheckpointError"]
