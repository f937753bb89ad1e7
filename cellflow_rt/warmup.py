"""Prepare the GPU path before a run: build and cache the engines, compile the kernels (``cellflow-rt warmup``).

A TensorRT engine takes minutes to build and cuDNN times its convolution algorithms at the first
run of each tile shape; no user should meet either in the middle of a batch. ``warmup`` opens the
model on the GPU provider (TensorRT builds its engine for the explicit profile of
:mod:`.provider_options` and writes it to the keyed cache), runs each corner of that profile once,
then segments a small synthetic image so that the numba kernels of the path a run will take are
compiled into numba's cache. A CUDA Docker image can run it at first start.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Tuple

import numpy as np

from . import provider_options
from .network import available_providers


class NoGpuError(RuntimeError):
    """No GPU execution provider or no CUDA device: nothing to warm up."""


def warmup_shapes(nchan: int, batch_size: int,
                  tile_sides: Optional[Tuple[int, int, int]] = None) -> List[Tuple[int, int, int, int]]:
    """Tile batches run once each: the TensorRT profile's corners (the usual shape first).

    ``tile_sides``: the model family's (smallest, usual, largest) tile side; None: CPnet's.
    """
    small, usual, large = tile_sides or (provider_options.MIN_TILE, provider_options.TILE, provider_options.TILE)
    shapes = [(batch_size, nchan, usual, usual), (1, nchan, usual, usual)]
    shapes += [(1, nchan, side, side) for side in dict.fromkeys((large, small)) if side != usual]
    return shapes


def _gpu_providers(provider: Optional[str]) -> List[str]:
    available = list(available_providers())
    offered = [p for p in provider_options.GPU_PROVIDERS if p in available]
    if not offered:
        raise NoGpuError(f"no GPU: this onnxruntime offers {', '.join(available)} only; install onnxruntime-gpu "
                         "(pip install 'cellflow-rt[gpu]', then pip uninstall -y onnxruntime) on a machine with an "
                         "NVIDIA GPU")
    if provider is None:
        return offered
    from .network import _canonical
    wanted = _canonical(provider)
    if wanted not in offered:
        raise NoGpuError(f"--provider {provider}: not offered by this onnxruntime (GPU providers offered: "
                         f"{', '.join(offered)})")
    return [wanted]


def warmup(model_name, precision: str = "fp32", batch_size: int = 8, provider: Optional[str] = None,
           progress: Callable[[str], None] = print) -> dict:
    """Build and cache a model's GPU engines and compile the kernels of the GPU path.

    Parameters
    ----------
    model_name : str or path
        A model name or ONNX path (see :func:`~cellflow_rt.registry.resolve_model`).
    precision : {"fp32", "tf32", "fp16"}
        The precision the runs will use (fp16: TensorRT float16 engines).
    batch_size : int
        The runs' ``batch_size`` (the TensorRT profile's largest batch).
    provider : {"tensorrt", "cuda"}, optional
        Default: TensorRT if this onnxruntime offers it, else CUDA.
    progress : callable
        Receives one line per step.

    Returns
    -------
    dict
        ``provider``, ``gpu``, ``engine_cache`` (TensorRT), seconds for ``session`` (engine build or
        load), each warm-up ``shape`` and the ``kernels``.

    Raises
    ------
    NoGpuError
        No GPU provider in this onnxruntime, or it could not start on a CUDA device.
    """
    from .loaded_model import LoadedModel
    from .pipeline import segment
    from .settings import EvalSettings

    providers = _gpu_providers(provider)
    gpu = provider_options.current_gpu()
    report = {"provider": providers[0], "gpu": f"{gpu.name} (sm{gpu.compute_capability[0]}{gpu.compute_capability[1]})",
              "precision": precision, "batch_size": batch_size, "seconds": {}}
    what = "building the TensorRT engine (minutes the first time; loaded from the cache afterwards)" \
        if providers[0] == provider_options.TENSORRT else "starting the CUDA provider"
    progress(f"warmup {model_name}: {precision}, batch 1..{batch_size} on {report['gpu']}: {what}")
    tic = time.perf_counter()
    model = LoadedModel.load(model_name, providers=providers, strict_provider=True, precision=precision,
                             batch_size=batch_size)
    if not model.net.on_gpu:
        raise NoGpuError(f"onnxruntime could not run {providers[0]} on a CUDA device (it fell back to "
                         f"{model.net.providers[0]}): is there an NVIDIA GPU and driver?")
    report["provider"] = model.net.providers[0]
    report["seconds"]["session"] = time.perf_counter() - tic
    if report["provider"] == provider_options.TENSORRT:
        report["engine_cache"] = model.net.session_provider_options[provider_options.TENSORRT]["trt_engine_cache_path"]
    progress(f"  session ready in {report['seconds']['session']:.1f} s"
             + (f", engines in {report['engine_cache']}" if "engine_cache" in report else ""))

    rng = np.random.default_rng(0)
    for shape in warmup_shapes(model.nchan, batch_size, model.family.tile_profile):
        tic = time.perf_counter()
        model.net.run(rng.random(shape, dtype=np.float32), batch_size=batch_size)
        key = "x".join(map(str, shape))
        report["seconds"][key] = time.perf_counter() - tic
        progress(f"  tiles {key}: {report['seconds'][key]:.2f} s")

    tic = time.perf_counter()
    image = (rng.random((256, 256)) * 255).astype(np.uint8)
    segment(image, model, EvalSettings(channels=(0, 0), diameter=float(model.diam_mean), batch_size=batch_size))
    report["seconds"]["kernels"] = time.perf_counter() - tic
    progress(f"  kernels compiled ({report['seconds']['kernels']:.1f} s): ready")
    return report
