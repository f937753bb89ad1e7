"""A model ready to run: its registry entry (metadata) and its network (ONNX Runtime or OpenVINO)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .network import Network, open_network
from .registry import ModelInfo, resolve_model

#: Cellpose's diam_mean for its built-in models, used by name instead of the checkpoint's value.
_BUILTIN_DIAM_MEAN = {"nuclei": 17.0}


@dataclass
class LoadedModel:
    """Registry metadata plus a network session.

    ``diam_mean`` follows the reference's types: a Python float for Cellpose's built-in models
    (30, or 17 for nuclei) and the checkpoint's float32 otherwise, so that ``rescale``, the resized
    sizes and ``niter`` come out in the same precision as Cellpose's (CELLPOSE_NOTES errata A4).
    """

    info: ModelInfo
    net: Network  # or network_openvino.OpenVINONetwork (bf16), same interface

    @classmethod
    def load(cls, name_or_path, providers=None, strict_provider: bool = False,
             num_threads: Optional[int] = None, precision: str = "fp32") -> "LoadedModel":
        """Resolve a model name or path and open its network (see :func:`~cellflow_rt.network.open_network`)."""
        info = resolve_model(name_or_path)
        return cls(info, open_network(info.onnx_path, providers=providers, strict_provider=strict_provider,
                                      num_threads=num_threads, precision=precision))

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def nchan(self) -> int:
        return int(self.info.nchan)

    @property
    def generation(self) -> int:
        """3: a CPnet run as Cellpose 3.1.1.1 does; 4: a Cellpose-SAM run as Cellpose 4.2.1.1 does."""
        return self.info.generation

    @property
    def diam_mean(self):
        if self.info.builtin_name:
            return _BUILTIN_DIAM_MEAN.get(self.info.builtin_name, 30.0)
        return np.float32(self.info.diam_mean)

    @property
    def diam_labels(self):
        return np.float32(self.info.diam_labels)

    @property
    def size_model(self):
        return self.info.size_model
