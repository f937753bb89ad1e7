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

from . import provider_options
from .provider_options import GPU_PROVIDERS

#: Preference order when the caller does not choose.
DEFAULT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


#: Network precisions: fp32 = the exported float32 model as is (Cellpose's numbers); fp16 = TensorRT
#: builds float16 engines; bf16 = OpenVINO on the CPU in bfloat16; tf32 = the CUDA provider's
#: convolutions in TensorFloat-32 (see :mod:`.provider_options`); int8 = OpenVINO on the CPU with the
#: linear layers in int8, from the network ``cellflow-rt quantize`` made (:mod:`.int8_model`).
PRECISIONS = ("fp32", "fp16", "bf16", "tf32", "int8")


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
        Exported CPnet (input ``image`` [B, C, H, W]; outputs ``flows`` [B, nout, H, W], ``style`` [B, 256]):
        nout is 3 for segmentation (dY, dX, cellprob) and 1 for restoration (the restored image).
    providers : str or sequence of str, optional
        Execution providers by preference (see :func:`choose_providers`).
    strict_provider : bool
        Fail instead of falling back when a requested provider is missing.
    num_threads : int, optional
        CPU intra-op threads (default: ``$CELLFLOW_RT_THREADS`` or onnxruntime's choice).
    cache_dir : path, optional
        Where TensorRT keeps its engine and timing caches (default ``~/.cache/cellflow-rt/trt``).
    precision : {"fp32", "fp16", "tf32"}
        fp16 lets TensorRT build float16 engines (inputs and outputs stay float32); tf32 lets the
        CUDA provider's convolutions use TensorFloat-32. Each has no effect on the other providers,
        which run the model's own float32 (a warning says so).
    batch_size : int
        Most tiles per run: the TensorRT profile's largest batch (larger requests are split).
    nchan : int
        Input channels, for the TensorRT profile (every Cellpose CPnet has 2).
    tile_sides : (int, int, int), optional
        The model family's smallest, usual and largest tile side, for the TensorRT profile
        (:attr:`cellflow_rt.family.ModelFamily.tile_profile`); None: CPnet's.

    Provider options are built by :mod:`.provider_options`.
    """

    def __init__(self, onnx_path: Union[str, Path], providers=None, strict_provider: bool = False,
                 num_threads: Optional[int] = None, cache_dir: Optional[Union[str, Path]] = None,
                 precision: str = "fp32", batch_size: int = 8, nchan: int = 2, tile_sides: Optional[tuple] = None):
        import onnxruntime as ort

        if precision not in ("fp32", "fp16", "tf32"):
            raise ValueError(f"precision {precision!r}: ONNX Runtime runs fp32, tf32 (CUDA) or fp16 (TensorRT); "
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
        if chosen[0] in GPU_PROVIDERS and hasattr(ort, "preload_dlls"):
            # CUDA and cuDNN from the nvidia-* pip packages, when that is where they are
            ort.preload_dlls()
        options_per_provider = [self._provider_options(p, cache_dir, precision, batch_size, nchan, tile_sides)
                                for p in chosen]
        #: The options each requested provider was given (:mod:`.provider_options`).
        self.session_provider_options = dict(zip(chosen, options_per_provider))
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options,
                                                providers=chosen, provider_options=options_per_provider)
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
        nout = self.session.get_outputs()[0].shape[1]
        #: Output channels per pixel: 3 (dY, dX, cellprob) or 1 (a restoration net's image).
        self.nout = nout if isinstance(nout, int) else 3
        self.providers = self.session.get_providers()
        applies = {"fp16": (provider_options.TENSORRT, "TensorRT"), "tf32": (provider_options.CUDA, "CUDA")}
        if precision in applies and self.providers[0] != applies[precision][0]:
            warnings.warn(f"precision {precision} applies to the {applies[precision][1]} provider only; "
                          f"{self.providers[0]} runs the model in float32")
            precision = "fp32"
        #: The precision the network runs in.
        self.precision = precision
        #: The network runs on a CUDA device (CUDA or TensorRT provider): :meth:`run_on_device` works.
        self.on_gpu = self.providers[0] in GPU_PROVIDERS
        #: Most tiles per run (the TensorRT profile's batch range); None = any number.
        self.max_batch = max(1, int(batch_size)) if self.providers[0] == provider_options.TENSORRT else None
        #: Tiles per ``session.run`` on the CPU provider, whatever the batch size: MLAS is as fast on
        #: one 224^2 tile as on eight (measured: 25 tiles in 3.7-4.0 s either way on 2 cores) and
        #: the activations of one tile need a fraction of the memory (peak RSS 190 vs 820 MiB).
        #: The outputs are bit-identical (the network has no cross-batch operation).
        self.cpu_tiles_per_run = 1 if self.providers[0] == "CPUExecutionProvider" else None

    def reload_args(self) -> dict:
        """``providers`` and ``precision`` for :func:`open_network` that open this network again (workers)."""
        return {"providers": tuple(self.providers), "precision": self.precision}

    def _provider_options(self, provider: str, cache_dir, precision: str, batch_size: int, nchan: int,
                          tile_sides: Optional[tuple] = None) -> dict:
        if provider == provider_options.CUDA:
            return provider_options.cuda_options(precision)
        if provider == provider_options.TENSORRT:
            from .checksum import sha256_file
            return provider_options.tensorrt_options(sha256_file(self.onnx_path), nchan, precision=precision,
                                                     batch_size=batch_size, cache_dir=cache_dir,
                                                     tile_sides=tile_sides)
        return {}

    def run(self, tiles: np.ndarray, batch_size: int = 8) -> Tuple[np.ndarray, np.ndarray]:
        """Run tiles (N, C, ly, lx) in chunks of ``batch_size``; return flows (N, nout, ly, lx) and styles (N, 256).

        On the CPU provider the chunks are :attr:`cpu_tiles_per_run` tiles, whatever ``batch_size``.
        Inputs and outputs go through an IO binding: ONNX Runtime writes each chunk's outputs
        straight into the returned arrays, and on CUDA/TensorRT the chunk is copied to the device
        once, explicitly, before the run.
        """
        n = tiles.shape[0]
        batch_size = self.cpu_tiles_per_run or min(batch_size, self.max_batch or batch_size)
        flows = np.empty((n, self.nout) + tiles.shape[2:], np.float32)
        styles = np.empty((n, 256), np.float32)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch = np.ascontiguousarray(tiles[start:stop], dtype=np.float32)
            self._run_bound(batch, flows[start:stop], styles[start:stop])
        return flows, styles

    def _run_bound(self, batch: np.ndarray, flows_out: np.ndarray, styles_out: np.ndarray) -> None:
        """One ``run_with_iobinding``: ``batch`` in, outputs written into the C-contiguous ``*_out`` views."""
        binding = self.session.io_binding()
        if self.on_gpu:
            import onnxruntime as ort
            # device 0: the providers' default device_id (we do not set another)
            binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        else:
            binding.bind_cpu_input("image", batch)
        for name, out in (("flows", flows_out), ("style", styles_out)):
            binding.bind_output(name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(binding)

    def run_on_device(self, tiles, flows_out, styles_out) -> None:
        """One run on device memory: ``tiles`` (n, C, ly, lx) in, outputs written into ``flows_out``
        (n, 3, ly, lx) and ``styles_out`` (n, 256); no copy, no host round trip.

        The three are C-contiguous float32 CUDA arrays on device 0 exposing
        ``__cuda_array_interface__`` (numba, CuPy, PyTorch); ``n`` must not exceed :attr:`max_batch`.
        ONNX Runtime reads and writes them by pointer through an IO binding. It does not wait for
        work queued on other CUDA streams before it starts, so the caller synchronises whatever
        wrote ``tiles``; the run itself returns when its outputs are complete (ORT synchronises
        its stream at the end of a run).
        """
        if not self.on_gpu:
            raise RuntimeError("run_on_device needs the CUDA or TensorRT provider; this session runs on "
                               f"{self.providers[0]}")
        binding = self.session.io_binding()
        for name, array, bind in (("image", tiles, binding.bind_input), ("flows", flows_out, binding.bind_output),
                                  ("style", styles_out, binding.bind_output)):
            pointer, shape = _device_buffer(array, name)
            # device 0: the providers' device_id (provider_options sets "0")
            bind(name, "cuda", 0, np.float32, shape, pointer)
        self.session.run_with_iobinding(binding)


def _device_buffer(array, name: str) -> Tuple[int, list]:
    """Pointer and shape of a C-contiguous float32 device array, from its ``__cuda_array_interface__``."""
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        raise TypeError(f"{name}: expected a CUDA device array (with __cuda_array_interface__), "
                        f"got {type(array).__name__}")
    shape = [int(d) for d in interface["shape"]]
    if interface["typestr"] != "<f4":
        raise TypeError(f"{name}: expected float32, got {interface['typestr']}")
    strides = interface.get("strides")
    if strides is not None and tuple(strides) != tuple(4 * int(np.prod(shape[i + 1:])) for i in range(len(shape))):
        raise ValueError(f"{name}: the device array must be C-contiguous")
    return int(interface["data"][0]), shape


def open_network(onnx_path: Union[str, Path], providers=None, strict_provider: bool = False,
                 num_threads: Optional[int] = None, precision: str = "fp32",
                 cache_dir: Optional[Union[str, Path]] = None, batch_size: int = 8, nchan: int = 2,
                 tile_sides: Optional[tuple] = None):
    """The network for a precision: :class:`Network` (ONNX Runtime) or an OpenVINO network (bf16, int8).

    Parameters
    ----------
    onnx_path, providers, strict_provider, num_threads, cache_dir, batch_size, nchan, tile_sides
        As in :class:`Network`; ``providers`` must be the CPU (or None) for bf16.
    precision : {"fp32", "fp16", "bf16", "tf32", "int8"}
        See :data:`PRECISIONS`.

    Raises
    ------
    ValueError
        Unknown precision, bf16 or int8 with a GPU provider, bf16 or int8 without OpenVINO installed,
        int8 without the model's int8 network (:class:`~cellflow_rt.int8_model.Int8ModelError`).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision not in ("bf16", "int8"):
        return Network(onnx_path, providers=providers, strict_provider=strict_provider, num_threads=num_threads,
                       cache_dir=cache_dir, precision=precision, batch_size=batch_size, nchan=nchan,
                       tile_sides=tile_sides)
    wanted = [] if providers is None else [providers] if isinstance(providers, str) else list(providers)
    if any(_canonical(p) != "CPUExecutionProvider" for p in wanted):
        raise ValueError(f"precision {precision} runs on the CPU (OpenVINO); it cannot run on {wanted}: "
                         "use fp16 (TensorRT) or fp32 on a GPU")
    from .network_openvino import OpenVINONetwork
    if precision == "int8":
        from .int8_model import find_int8_model
        from .registry import cached_sha256

        ir_path, _ = find_int8_model(onnx_path, cached_sha256(Path(onnx_path)))
        return OpenVINONetwork(ir_path, num_threads=num_threads, precision="int8")
    return OpenVINONetwork(onnx_path, num_threads=num_threads, precision="bf16")
