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
    #: do_3D: the network of the ZY and ZX views (Cellpose's ``pretrained_model_ortho``); None: ``net``.
    net_ortho: Optional[Network] = None

    @classmethod
    def load(cls, name_or_path, providers=None, strict_provider: bool = False,
             num_threads: Optional[int] = None, precision: str = "fp32", batch_size: int = 8,
             ortho=None) -> "LoadedModel":
        """Resolve a model name or path and open its network (see :func:`~cellflow_rt.network.open_network`).

        ``batch_size`` is the most tiles per network run (it sizes TensorRT's optimisation profile).
        ``precision="auto"`` chooses by model and CPU (:func:`automatic_precision`).
        ``ortho`` names a second model for do_3D's ZY and ZX views; it must take the same input
        channels. Its diameters are not used: the first model's set the scale, as in Cellpose.
        """
        info = resolve_model(name_or_path)
        if precision == "auto":
            precision = automatic_precision(info.family, providers)

        def network(path):
            return open_network(path, providers=providers, strict_provider=strict_provider, num_threads=num_threads,
                                precision=precision, batch_size=batch_size, nchan=int(info.nchan),
                                tile_sides=info.family.tile_profile)

        net_ortho = None
        if ortho is not None:
            ortho_info = resolve_model(ortho)
            if ortho_info.nchan != info.nchan or ortho_info.nout != info.nout:
                raise ValueError(f"ortho model {ortho_info.name} takes {ortho_info.nchan} channels and returns "
                                 f"{ortho_info.nout}; {info.name} takes {info.nchan} and returns {info.nout}")
            net_ortho = network(ortho_info.onnx_path)
        return cls(info, network(info.onnx_path), net_ortho)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def nchan(self) -> int:
        return int(self.info.nchan)

    @property
    def family(self):
        """The model family (:class:`cellflow_rt.family.ModelFamily`): what the stages ask."""
        return self.info.family

    @property
    def generation(self) -> int:
        """The manifest's ``cellpose_generation`` (information; stages ask :attr:`family`)."""
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

    @property
    def restore_type(self):
        """``denoise``, ``deblur``, ``upsample`` or ``oneclick`` for a restoration model, else None."""
        return self.info.restore_type

    def require_kind(self, kind: str, option: str) -> "LoadedModel":
        """Return self when this is a ``kind`` ("segmentation" or "restoration") model; otherwise raise
        ValueError naming ``option``, the argument or flag the model was given as."""
        if self.info.kind == kind:
            return self
        if kind == "segmentation":
            raise ValueError(f"{option}: {self.name!r} is an image restoration model ({self.restore_type}), not a "
                             "segmentation model; give it as restore_type (CLI: --restore_type)")
        raise ValueError(f"{option}: {self.name!r} is a segmentation model, not an image restoration model; export "
                         "a Cellpose 3 restoration net with `cellflow-rt export CHECKPOINT --restore-type TYPE`")


def automatic_precision(family, providers=None) -> str:
    """``precision="auto"``: bf16 for a family that prefers it (Cellpose-SAM) on the CPU where OpenVINO
    runs bfloat16 natively (AMX or AVX512_BF16), else fp32
    (:meth:`~cellflow_rt.family.ModelFamily.automatic_precision`).

    Cellpose 4 itself runs bfloat16 by default; on such CPUs our bf16 Cellpose-SAM is several times
    faster than fp32 with masks as close to Cellpose's bfloat16 masks as Cellpose's own float32 ones
    (docs/precision.md). CPnets (Cellpose 3) stay fp32: their bf16 gain is smaller, and
    fp32 gives Cellpose's masks exactly. Without bfloat16 instructions OpenVINO would run float32,
    no faster than ONNX Runtime: fp32.
    """
    return family.automatic_precision(providers)
