"""The network: one ONNX Runtime session per model, providers by preference, batched tiles.

Providers are tried in the order TensorRT > CUDA > CPU among those this onnxruntime build offers;
a requested provider that is unavailable (not in the build, or a GPU provider on a machine without a
CUDA device) falls back with a warning, or raises with ``strict``.
:func:`open_network` picks the backend for a precision: ONNX Runtime for fp32 (and fp16 on TensorRT),
OpenVINO for bf16 on the CPU (:mod:`.network_openvino`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

#: Preference order when the caller does not choose.
DEFAULT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


#: Providers that need a CUDA device.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

#: Network precisions: fp32 = the exported float32 model as is (Cellpose's numbers); fp16 = TensorRT
#: builds float16 engines; bf16 = OpenVINO on the CPU in bfloat16.
PRECISIONS = ("fp32", "fp16", "bf16")


class ProviderUnavailableError(RuntimeError):
    """A strictly requested execution provider is not in this onnxruntime build, or has no device."""


def available_providers() -> Sequence[str]:
    """Execution providers this onnxruntime build offers."""
    import onnxruntime as ort
    return ort.get_available_providers()


def _canonical(name: str) -> str:
    return _ALIASES.get(name.lower(), name)


def choose_providers(requested: Optional[Union[str, Sequence[str]]] = None, strict: bool = False) -> list:
    """Ordered provider list for a session.

    Parameters
    ----------
    requested : str or sequence of str, optional
        Provider names or aliases (``cpu``, ``cuda``, ``tensorrt``); None = best available.
    strict : bool
        Raise :class:`ProviderUnavailableError` instead of falling back when a requested provider
        is missing.
    """
    built = list(available_providers())
    available, no_device = _without_gpu_if_no_device(built)
    if requested is None:
        return [p for p in DEFAULT_PROVIDER_ORDER if p in available] or available
    wanted = [_canonical(r) for r in ([requested] if isinstance(requested, str) else requested)]
    missing = [p for p in wanted if p not in available]
    if missing:
        if no_device and all(p in built for p in missing):
            message = f"execution provider(s) {missing} cannot run here: {no_device}"
        else:
            message = (f"execution provider(s) {missing} not available in this onnxruntime build "
                       f"(available: {built})")
        if strict:
            raise ProviderUnavailableError(message)
        warnings.warn(message + "; falling back to CPUExecutionProvider")
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _without_gpu_if_no_device(providers: list) -> Tuple[list, str]:
    """``providers`` less the GPU ones when the machine has no CUDA device, and the reason ("" if any)."""
    if not any(p in GPU_PROVIDERS for p in providers):
        return providers, ""
    from .cuda_device import cuda_devices

    count, reason = cuda_devices()
    return (providers, "") if count else ([p for p in providers if p not in GPU_PROVIDERS], reason)


class Network:
    """An ONNX Runtime session running CPnet on batches of tiles.

    Parameters
    ----------
    onnx_path : path
        Exported CPnet (input ``image`` [B, C, H, W]; outputs ``flows`` [B, 3, H, W], ``style`` [B, 256]).
    providers : str or sequence of str, optional
        Execution providers by preference (see :func:`choose_providers`).
    strict_provider : bool
        Fail instead of falling back when a requested provider is missing.
    num_threads : int, optional
        CPU intra-op threads (default: ``$CELLFLOW_RT_THREADS`` or onnxruntime's choice).
    cache_dir : path, optional
        Where TensorRT keeps its engine and timing caches.
    precision : {"fp32", "fp16"}
        fp16 lets TensorRT build float16 engines (inputs and outputs stay float32); it has no effect
        on the CUDA and CPU providers, which run the model's own float32 (a warning says so).
    """

    def __init__(self, onnx_path: Union[str, Path], providers=None, strict_provider: bool = False,
                 num_threads: Optional[int] = None, cache_dir: Optional[Union[str, Path]] = None,
                 precision: str = "fp32"):
        import onnxruntime as ort

        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision {precision!r}: ONNX Runtime runs fp32 or fp16 (TensorRT); "
                             "use open_network() for bf16")

        self.onnx_path = Path(onnx_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = num_threads or int(os.environ.get("CELLFLOW_RT_THREADS", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Tiles come in chunks of varying batch size, so ORT's per-shape memory plans only add to the
        # peak; and idle ORT threads must not spin on the cores numba's dynamics share in batch runs.
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = choose_providers(providers, strict=strict_provider)
        provider_options = [self._provider_options(p, cache_dir, precision) for p in chosen]
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options,
                                                providers=chosen, provider_options=provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.onnx_path}: not a loadable ONNX model ({exc})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != "image" or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.onnx_path}: expected one input 'image' [B, C, H, W], "
                             f"got {[(i.name, i.shape) for i in inputs]}")
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[:2] != ["flows", "style"]:
            raise ValueError(f"{self.onnx_path}: expected outputs ['flows', 'style'], got {outputs}")
        self.nchan = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else 2
        self.providers = self.session.get_providers()
        fp16 = precision == "fp16" and self.providers[0] == "TensorrtExecutionProvider"
        if precision == "fp16" and not fp16:
            warnings.warn(f"precision fp16 applies to the TensorRT provider only; {self.providers[0]} "
                          "runs the model in float32")
        #: The precision the network runs in.
        self.precision = "fp16" if fp16 else "fp32"
        #: Tiles per ``session.run`` on the CPU provider, whatever the batch size: MLAS is as fast on
        #: one 224^2 tile as on eight (measured: 25 tiles in 3.7-4.0 s either way on 2 cores) and
        #: the activations of one tile need a fraction of the memory (peak RSS 190 vs 820 MiB).
        #: The outputs are bit-identical (the network has no cross-batch operation).
        self.cpu_tiles_per_run = 1 if self.providers[0] == "CPUExecutionProvider" else None
        self._input_on_gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    def reload_args(self) -> dict:
        """``providers`` and ``precision`` for :func:`open_network` that open this network again (workers)."""
        return {"providers": tuple(self.providers), "precision": self.precision}

    @staticmethod
    def _provider_options(provider: str, cache_dir, precision: str = "fp32") -> dict:
        if provider != "TensorrtExecutionProvider":
            return {}
        cache = Path(cache_dir or Path.home() / ".cache" / "cellflow-rt" / "trt")
        cache.mkdir(parents=True, exist_ok=True)
        # Engines are cached per precision by TensorRT itself (the flag is part of the cache key).
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                "trt_fp16_enable": "True" if precision == "fp16" else "False"}

    def run(self, tiles: np.ndarray, batch_size: int = 8) -> Tuple[np.ndarray, np.ndarray]:
        """Run tiles (N, C, ly, lx) in chunks of ``batch_size``; return flows (N, 3, ly, lx) and styles (N, 256).

        On the CPU provider the chunks are :attr:`cpu_tiles_per_run` tiles, whatever ``batch_size``.
        Inputs and outputs go through an IO binding: ONNX Runtime writes each chunk's outputs
        straight into the returned arrays, and on CUDA/TensorRT the chunk is copied to the device
        once, explicitly, before the run.
        """
        n = tiles.shape[0]
        batch_size = self.cpu_tiles_per_run or batch_size
        flows = np.empty((n, 3) + tiles.shape[2:], np.float32)
        styles = np.empty((n, 256), np.float32)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch = np.ascontiguousarray(tiles[start:stop], dtype=np.float32)
            self._run_bound(batch, flows[start:stop], styles[start:stop])
        return flows, styles

    def _run_bound(self, batch: np.ndarray, flows_out: np.ndarray, styles_out: np.ndarray) -> None:
        """One ``run_with_iobinding``: ``batch`` in, outputs written into the C-contiguous ``*_out`` views."""
        binding = self.session.io_binding()
        if self._input_on_gpu:
            import onnxruntime as ort
            # device 0: the providers' default device_id (we do not set another)
            binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        else:
            binding.bind_cpu_input("image", batch)
        for name, out in (("flows", flows_out), ("style", styles_out)):
            binding.bind_output(name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(binding)


def open_network(onnx_path: Union[str, Path], providers=None, strict_provider: bool = False,
                 num_threads: Optional[int] = None, precision: str = "fp32",
                 cache_dir: Optional[Union[str, Path]] = None):
    """The network for a precision: :class:`Network` (ONNX Runtime) or an OpenVINO network (bf16).

    Parameters
    ----------
    onnx_path, providers, strict_provider, num_threads, cache_dir
        As in :class:`Network`; ``providers`` must be the CPU (or None) for bf16.
    precision : {"fp32", "fp16", "bf16"}
        See :data:`PRECISIONS`.

    Raises
    ------
    ValueError
        Unknown precision, bf16 with a GPU provider, or bf16 without OpenVINO installed.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "bf16":
        return Network(onnx_path, providers=providers, strict_provider=strict_provider, num_threads=num_threads,
                       cache_dir=cache_dir, precision=precision)
    wanted = [] if providers is None else [providers] if isinstance(providers, str) else list(providers)
    if any(_canonical(p) != "CPUExecutionProvider" for p in wanted):
        raise ValueError(f"precision bf16 runs on the CPU (OpenVINO); it cannot run on {wanted}: "
                         "use fp16 (TensorRT) or fp32 on a GPU")
    from .network_openvino import OpenVINONetwork
    return OpenVINONetwork(onnx_path, num_threads=num_threads, precision="bf16")
