"""The device side of the dynamics: simulator or GPU, launch geometry, arrays handed in by callers.

Every element-wise kernel of this package walks its items with a grid-stride loop, so the launch
geometry is a tuning choice made here and nowhere else:

- on a GPU, enough blocks of :data:`THREADS` threads for one item per thread (capped at
  :data:`_BLOCKS_PER_SM` blocks per multiprocessor, after which threads loop);
- under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) every simulated thread is a Python
  thread, so a single block of a few threads walks all items: same code, same results, minutes
  become seconds.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading

import numpy as np
from numba import config, cuda

#: True when numba runs CUDA kernels in its Python simulator.
SIMULATOR = bool(config.ENABLE_CUDASIM)


def _serialise_simulator_shared_arrays() -> None:
    """Make the simulator hand every thread of a block the same ``cuda.shared.array``.

    numba-cuda's simulator (0.30.4) keeps a block's shared arrays in a dict keyed by the calling
    line, filled by an unlocked check-then-set: when two of the block's Python threads reach the
    line together, each can make its own array, and the block no longer shares it. The flow check
    (one block per mask, centres and sums exchanged through shared memory) then gave wrong errors
    in about one run in 20-80 (all masks of that run). A GPU has no such race; this only
    serialises the simulator's allocation.
    """
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "serialised", False):
        return
    unlocked = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or the simulator's error
            return unlocked(self, shape, dtype, alignment)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            allocated = self._allocations.get(caller)
            if allocated is None:
                dtype = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                allocated = self._allocations[caller] = np.empty(shape, dtype)
        return allocated

    array.serialised = True
    shared.array = array


if SIMULATOR:
    _serialise_simulator_shared_arrays()

#: Threads per block of the element-wise kernels.
THREADS = 8 if SIMULATOR else 256
#: Threads per block of the one-block-per-mask kernels (flow check, hole filling): a column of the
#: mask's box per thread; boxes wider than this loop.
MASK_THREADS = 8 if SIMULATOR else 64
_BLOCKS_PER_SM = 32


@functools.lru_cache(maxsize=None)
def _multiprocessors() -> int:
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def grid(n: int, threads: int = THREADS):
    """``(blocks, threads)`` of a grid-stride launch over ``n`` items."""
    if SIMULATOR:
        return 1, threads
    blocks = max(1, min(math.ceil(max(n, 1) / threads), _BLOCKS_PER_SM * _multiprocessors()))
    return blocks, threads


def blocks_per_item(n: int):
    """``(blocks, threads)`` with one block per item (per mask), grid-stride beyond the cap."""
    if SIMULATOR:
        return 1, MASK_THREADS
    return max(1, min(n, 64 * _multiprocessors())), MASK_THREADS


@contextlib.contextmanager
def simulator_pace():
    """In the simulator, a short GIL switch interval while kernels run: its block manager polls
    the Python threads of a block at every ``syncthreads``, and with the default 5 ms interval a
    block-wide barrier costs milliseconds (kernels run 5-10x faster). No effect on a GPU."""
    if not SIMULATOR:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def kernel(fn):
    """``cuda.jit`` with numba's on-disk cache (compiled once per GPU architecture, not per process;
    ``cellflow_rt._numba`` chose the cache directory). Kernels must be module-level functions: the
    cache keys on their qualified name."""
    return cuda.jit(fn) if SIMULATOR else cuda.jit(cache=True)(fn)


def device_function(fn=None, **options):
    """``cuda.jit(device=True, **options)`` on a GPU; the plain Python function in the simulator,
    whose device-function calls cost tens of microseconds each (a module swap per call)."""
    if fn is None:
        return lambda f: device_function(f, **options)
    return fn if SIMULATOR else cuda.jit(device=True, **options)(fn)


def is_device_array(a) -> bool:
    """Whether ``a`` lives on the device (``__cuda_array_interface__``, or a simulator array)."""
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return isinstance(a, FakeCUDAArray)
    return cuda.is_cuda_array(a)


def device_view(a, stream):
    """A numba device array over ``a`` (no copy when it is already on the device), else a copy of
    the host array ``a`` on the device. ``as_cuda_array`` synchronises on the producer's stream
    when its ``__cuda_array_interface__`` names one."""
    if is_device_array(a):
        return a if SIMULATOR else cuda.as_cuda_array(a)
    return cuda.to_device(np.ascontiguousarray(a), stream=stream)


def describe() -> dict:
    """The device numba sees: name, compute capability, multiprocessors, versions (for reports)."""
    info = {"simulator": SIMULATOR}
    try:
        import numba
        info["numba"] = numba.__version__
        from importlib.metadata import version
        info["numba_cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    if SIMULATOR:
        info["device"] = "numba CUDA simulator"
        return info
    dev = cuda.get_current_device()
    name = dev.name
    info.update(device=name.decode() if isinstance(name, bytes) else str(name),
                compute_capability=".".join(map(str, dev.compute_capability)),
                multiprocessors=_multiprocessors())
    try:
        info["driver"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
        info["runtime"] = ".".join(map(str, cuda.runtime.get_version()))
    except Exception:  # noqa: BLE001
        pass
    return info
