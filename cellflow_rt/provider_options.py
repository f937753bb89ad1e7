"""ONNX Runtime's CUDA and TensorRT provider options, chosen and explained in one place.

CUDA (ORT's defaults unless said otherwise):

- ``cudnn_conv_algo_search`` ``EXHAUSTIVE`` (the default): cuDNN times every convolution
  algorithm once per input shape, at the first run of that shape, and keeps the fastest. The first
  image of a size pays a few hundred milliseconds; ``cellflow-rt warmup`` pays it ahead of a run.
- ``cudnn_conv_use_max_workspace`` ``1`` (the default): lets that search pick algorithms that need
  a large workspace.
- ``use_tf32``: ``0`` for ``precision="fp32"`` (ORT's default is 1): float32 convolutions in
  float32, the closest a GPU gets to the CPU's numbers (and to Cellpose's masks).
  ``precision="tf32"`` sets 1: the convolutions' products use TensorFloat-32 (10-bit mantissas) on
  Ampere and later GPUs, faster, flows off by about 1e-3, as Cellpose's own GPU path computes them
  (PyTorch allows TF32 in cuDNN convolutions by default).
- ``arena_extend_strategy`` ``kSameAsRequested`` (ORT's default is ``kNextPowerOfTwo``): the memory
  arena grows by what a run asks for instead of doubling. The tile shapes are few and fixed, so a
  warm session asks for nothing new and this only lowers the memory ORT holds.
- ``do_copy_in_default_stream`` ``1`` (the default): ORT's own host/device copies run on the CUDA
  default stream, where numba's kernels run too, so they stay ordered with ours. The device path
  (:meth:`~cellflow_rt.network.Network.run_on_device`) binds device buffers and copies nothing.

TensorRT:

- One explicit optimisation profile for the input ``image``: batch 1 .. ``batch_size`` and tile
  sides :data:`MIN_TILE` .. 224, built for ``batch_size`` x 224 x 224 (the tiles of every image
  larger than a tile). Smaller sides are the tiles of small images and the thin slices of do_3D
  stacks (a padded side is a multiple of 16, at least 32). One profile, because ONNX Runtime's
  TensorRT provider runs every input through its first profile (multiple-profile selection is an
  open pull request, microsoft/onnxruntime#31624).
- Engines are cached under ``<cache>/engines/<model sha256[:16]>/<precision>-b<batch>-<gpu>``
  (``trt_engine_cache_path``): a different model file, precision, batch profile or GPU gets its
  own engine, and a cache shared between machines never hands an engine to the wrong GPU. The
  timing cache (per-layer kernel timings, valid for any model on one GPU and TensorRT version) is
  kept per GPU under ``<cache>/timing/<gpu>`` so a second model builds faster.
- ``trt_fp16_enable`` for ``precision="fp16"``. In fp32 TensorRT keeps its default, which allows
  TF32 tactics (ORT exposes no switch to forbid them).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

#: Smallest tile side the TensorRT profile accepts: a padded plane side is a multiple of 16 plus 16.
MIN_TILE = 32
#: Tile side of every plane larger than a tile (Cellpose's bsize).
TILE = 224

#: CUDA provider options that do not depend on the precision (see the module docstring).
CUDA_BASE_OPTIONS = {
    "device_id": "0",
    "cudnn_conv_algo_search": "EXHAUSTIVE",
    "cudnn_conv_use_max_workspace": "1",
    "arena_extend_strategy": "kSameAsRequested",
    "do_copy_in_default_stream": "1",
}


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU engines are built for: its name and compute capability."""

    name: str
    compute_capability: Tuple[int, int]

    @property
    def key(self) -> str:
        """File-name-safe key, e.g. ``NVIDIA-H200-sm90``."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-") or "gpu"
        return f"{slug}-sm{self.compute_capability[0]}{self.compute_capability[1]}"


def current_gpu() -> GpuIdentity:
    """Name and compute capability of CUDA device 0 (numba's view; ``unknown`` without one)."""
    try:
        from numba import cuda
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        return GpuIdentity(name, tuple(device.compute_capability))
    except Exception:  # no driver, no device, or numba's simulator
        return GpuIdentity("unknown", (0, 0))


def default_cache_dir() -> Path:
    """``$CELLFLOW_RT_TRT_CACHE`` or ``~/.cache/cellflow-rt/trt``."""
    env = os.environ.get("CELLFLOW_RT_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cellflow-rt" / "trt"


def cuda_options(precision: str = "fp32") -> dict:
    """CUDA provider options for a precision (``fp32``: TF32 off; ``tf32``: on; see the module docstring)."""
    return {**CUDA_BASE_OPTIONS, "use_tf32": "1" if precision == "tf32" else "0"}


def trt_profile_shapes(nchan: int, batch_size: int,
                       tile_sides: Optional[Tuple[int, int, int]] = None) -> Tuple[str, str, str]:
    """``trt_profile_min_shapes``, ``..._opt_shapes``, ``..._max_shapes`` for the input ``image``.

    ``tile_sides``: the model family's (smallest, usual, largest) tile side
    (:attr:`cellflow_rt.family.ModelFamily.tile_profile`: Cellpose-SAM 256 only, CPDINO 256 to 512);
    None: CPnet's (MIN_TILE, TILE, TILE).
    """
    batch_size = max(1, int(batch_size))
    low, usual, high = tile_sides or (MIN_TILE, TILE, TILE)
    return (f"image:1x{nchan}x{low}x{low}", f"image:{batch_size}x{nchan}x{usual}x{usual}",
            f"image:{batch_size}x{nchan}x{high}x{high}")


def trt_cache_dirs(model_sha256: str, precision: str, batch_size: int, gpu: GpuIdentity,
                   cache_dir: Optional[Union[str, Path]] = None) -> Tuple[Path, Path]:
    """(engine cache folder, timing cache folder) for a model, precision, batch profile and GPU."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    engines = root / "engines" / model_sha256[:16] / f"{precision}-b{int(batch_size)}-{gpu.key}"
    return engines, root / "timing" / gpu.key


def tensorrt_options(model_sha256: str, nchan: int, precision: str = "fp32", batch_size: int = 8,
                     gpu: Optional[GpuIdentity] = None, cache_dir: Optional[Union[str, Path]] = None,
                     create: bool = True, tile_sides: Optional[Tuple[int, int, int]] = None) -> dict:
    """TensorRT provider options: the explicit profile, keyed caches, fp16 (see the module docstring).

    Parameters
    ----------
    model_sha256 : str
        Checksum of the ONNX file (keys the engine cache).
    nchan : int
        Input channels of the network.
    precision : {"fp32", "tf32", "fp16"}
        fp16 builds float16 engines; fp32 and tf32 build the same (TensorRT's default tactics).
    batch_size : int
        Largest batch of tiles a run gets.
    gpu : GpuIdentity, optional
        Default: :func:`current_gpu`.
    cache_dir : path, optional
        Default: :func:`default_cache_dir`.
    create : bool
        Create the cache folders (TensorRT does not).
    tile_sides : (int, int, int), optional
        The model family's smallest, usual and largest tile side (:func:`trt_profile_shapes`).
    """
    gpu = gpu or current_gpu()
    engines, timing = trt_cache_dirs(model_sha256, "fp16" if precision == "fp16" else "fp32", batch_size, gpu,
                                     cache_dir)
    if create:
        engines.mkdir(parents=True, exist_ok=True)
        timing.mkdir(parents=True, exist_ok=True)
    min_shapes, opt_shapes, max_shapes = trt_profile_shapes(nchan, batch_size, tile_sides)
    return {
        "device_id": "0",
        "trt_fp16_enable": "True" if precision == "fp16" else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(timing),
        "trt_profile_min_shapes": min_shapes,
        "trt_profile_opt_shapes": opt_shapes,
        "trt_profile_max_shapes": max_shapes,
    }
