"""Is there a CUDA device to run on? Asked of the NVIDIA driver itself, before onnxruntime is.

An onnxruntime-gpu build offers its CUDA and TensorRT providers whether or not the machine has a
GPU (a CUDA container image run without ``--gpus``): creating a session on them then fails, and
onnxruntime falls back to the CPU with a page of log lines. Asking the driver (``libcuda``) first
gives one clear reason instead.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Tuple

#: The driver library: installed with the NVIDIA driver, mounted into containers by the NVIDIA
#: container toolkit (``docker run --gpus all``).
DRIVER_LIBRARY = "libcuda.so.1"


@lru_cache(maxsize=1)
def cuda_devices() -> Tuple[int, str]:
    """Number of CUDA devices the driver sees, and why there are none when it is 0.

    Returns
    -------
    (int, str)
        The device count and, when it is 0, the reason (no driver library, or the driver's error);
        ``""`` when there are devices.

    Examples
    --------
    >>> count, reason = cuda_devices()
    >>> count > 0 or bool(reason)
    True
    """
    try:
        driver = ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return 0, f"no NVIDIA driver ({DRIVER_LIBRARY} not found; in a container: docker run --gpus all)"
    status = driver.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver found no usable GPU (cuInit: {_error_name(driver, status)})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return 0, f"the NVIDIA driver found no usable GPU (cuDeviceGetCount: {_error_name(driver, status)})"
    return count.value, "" if count.value else "the NVIDIA driver sees no GPU"


def _error_name(driver, status: int) -> str:
    name = ctypes.c_char_p()
    if driver.cuGetErrorName(status, ctypes.byref(name)) == 0 and name.value:
        return name.value.decode()
    return f"CUDA error {status}"
