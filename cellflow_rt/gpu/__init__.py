"""The GPU side of cellflow-rt: flows -> masks on a CUDA device (numba-cuda), and where they run.

- :func:`resize_and_compute_masks` / :func:`compute_masks` (:mod:`.dynamics`): the CPU path's
  :mod:`cellflow_rt.dynamics` functions as numba CUDA kernels, same arguments, same host masks;
  ``dP`` / ``cellprob`` may be device arrays (``__cuda_array_interface__``: numba, CuPy, torch, ONNX
  Runtime's CUDA outputs), read in place.
- the network half with its data kept on the device (:mod:`.predict`, :mod:`.flows`,
  :mod:`.tiles`, :mod:`.resize`): the normalised image goes up once, tiles, network (ONNX Runtime
  IO binding), blending and resizing run on device arrays handed to the dynamics without a copy;
- :func:`choose_dynamics`: the one place that decides whether a run's dynamics use the CPU or
  the GPU (``--dynamics auto|cpu|gpu``, ``EvalSettings.dynamics``).

Importing this package is cheap and needs no numba-cuda: ``numba.cuda`` is imported only when a
GPU is asked about or used. Tests run the kernels on the CPU with numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` before ``numba.cuda`` is first imported).
"""
from __future__ import annotations

import functools
from typing import Sequence

from ..provider_options import GPU_PROVIDERS
from ..settings import DYNAMICS



__all__ = ["DYNAMICS", "DynamicsUnavailableError", "choose_dynamics", "compute_masks", "cuda_status",
           "resize_and_compute_masks"]


class DynamicsUnavailableError(RuntimeError):
    """``dynamics="gpu"`` was asked for but numba sees no CUDA device (or numba-cuda is missing)."""


@functools.lru_cache(maxsize=None)
def cuda_status() -> str:
    """"" when numba can run CUDA kernels here (a GPU, or the simulator), else why not."""
    try:
        from numba import cuda
    except ImportError as exc:  # numba-cuda missing or broken
        return f"numba.cuda cannot be imported ({exc}); install numba-cuda (pip install 'cellflow-rt[gpu]')"
    try:
        if cuda.is_available():
            return ""
    except Exception as exc:  # noqa: BLE001 - a broken driver must not stop a CPU run
        return f"numba.cuda cannot use the CUDA driver ({exc})"
    return "numba sees no CUDA device (no NVIDIA GPU, driver or CUDA libraries for numba-cuda)"


def choose_dynamics(requested: str, providers: Sequence[str] = ()) -> str:
    """``"cpu"`` or ``"gpu"``: where the dynamics of a run go.

    Parameters
    ----------
    requested : {"auto", "cpu", "gpu"}
        ``auto`` uses the GPU when the network runs on a GPU provider (``providers[0]`` is TensorRT
        or CUDA) and numba sees a CUDA device, else the CPU. ``gpu`` requires a CUDA device.
    providers : sequence of str
        The network's execution providers, in order (``Network.providers``).

    Raises
    ------
    DynamicsUnavailableError
        ``gpu`` without a CUDA device that numba can use.
    """
    if requested not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {DYNAMICS}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        on_gpu = bool(providers) and providers[0] in GPU_PROVIDERS
        return "gpu" if on_gpu and not cuda_status() else "cpu"
    reason = cuda_status()
    if reason:
        raise DynamicsUnavailableError(f"dynamics='gpu' (--dynamics gpu): {reason}")
    return "gpu"


def __getattr__(name):  # the kernels' module only when the GPU path is used
    if name in ("compute_masks", "resize_and_compute_masks"):
        from . import dynamics
        return getattr(dynamics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
