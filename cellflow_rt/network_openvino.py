"""The network on OpenVINO's CPU plugin in bfloat16: the fast, approximate CPU path (``precision="bf16"``).

ONNX Runtime's CPU kernels have no bfloat16 convolutions, and in float32 they already run CPnet's
convolutions near the cores' peak (about 185 GFLOP/s on 2 Zen 4 cores), so float32 cannot go much
faster. CPUs with bfloat16 dot products (AVX512_BF16, AMX) run the same convolutions about twice as
fast in OpenVINO, at bfloat16's 8-bit mantissa: masks differ slightly from Cellpose's (see docs/precision.md's
precision table for the AP against Cellpose). On a CPU without those instructions OpenVINO runs
float32 and :attr:`OpenVINONetwork.precision` says so.

Cellpose-SAM graphs are rewritten at load time so that the CPU plugin fuses their attention
(:mod:`.openvino_graph`); the rewritten graph is kept as OpenVINO IR in a cache folder
(:func:`default_cache_dir`), and OpenVINO's compiled-model cache beside it lets a later process
import the compiled bfloat16 network instead of reading the ONNX file, rewriting and compiling again
(seconds and half the peak memory of a full-size model's first load).

OpenVINO is an optional dependency (``pip install 'cellflow-rt[openvino]'``), imported only here.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

#: What ``providers`` reports for this backend (there is no ONNX Runtime session).
PROVIDER_NAME = "OpenVINO-CPU"


class OpenVINOUnavailableError(ValueError):
    """``precision="bf16"`` was asked for but the ``openvino`` package is not installed."""


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise OpenVINOUnavailableError(
            "precisions bf16 and int8 run on OpenVINO, which is not installed: pip install 'cellflow-rt[openvino]' "
            f"({exc})") from None
    return openvino


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bfloat16 on this CPU (False without OpenVINO)."""
    try:
        ov = _import_openvino()
    except OpenVINOUnavailableError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def bf16_status() -> str:
    """One line for ``cellflow-rt info``: whether ``--precision bf16`` can run here, and how."""
    try:
        ov = _import_openvino()
    except OpenVINOUnavailableError:
        return "unavailable (pip install 'cellflow-rt[openvino]')"
    native = "this CPU has bf16 instructions" if cpu_supports_bf16() else "no bf16 instructions: runs fp32"
    return f"OpenVINO {ov.__version__}, {native}"


def int8_status() -> str:
    """One line for ``cellflow-rt info``: how ``--precision int8`` runs here."""
    try:
        ov = _import_openvino()
    except OpenVINOUnavailableError:
        return "unavailable (pip install 'cellflow-rt[openvino]')"
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    if "amx_int8" in flags:
        kind = "AMX int8 tiles"
    elif flags & {"avx512_vnni", "avx_vnni"}:
        kind = "VNNI int8 dot products"
    else:
        kind = "no int8 dot-product instructions found"
    return f"OpenVINO {ov.__version__}, {kind}; needs the model's int8 network (cellflow-rt quantize)"


#: Bump when :mod:`.openvino_graph` changes what it writes: cached graphs of older versions are not reused.
GRAPH_VERSION = 2


def default_cache_dir() -> Path:
    """``$CELLFLOW_RT_OPENVINO_CACHE``, else ``openvino`` in the platform's cache folder (``~/.cache/cellflow-rt``)."""
    env = os.environ.get("CELLFLOW_RT_OPENVINO_CACHE")
    if env:
        return Path(env).expanduser()
    from .published.cache import platform_cache_dir

    return platform_cache_dir() / "openvino"


def _graph_key(onnx_path: Path, ov_version: str, half_weights: bool) -> str:
    """A cache key for the rewritten graph of ``onnx_path``: its path, size and mtime, the versions, the weights."""
    stat = onnx_path.stat()
    text = f"{onnx_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GRAPH_VERSION}|{ov_version}|{half_weights}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _compile(ov, core, onnx_path: Path, config: dict, cache_dir: Optional[Path], half_weights: bool):
    """The compiled model of ``onnx_path``, and whether its graph was rewritten (attention fused).

    A graph that :func:`~cellflow_rt.openvino_graph.prepare_model` rewrites is saved as IR under
    ``cache_dir`` and compiled from there with OpenVINO's model cache on; one it leaves alone (CPnet)
    is compiled as read. A cache that cannot be written costs only the caching. ``half_weights``
    stores the IR's weights in float16 (for a network that runs in bfloat16; see :class:`OpenVINONetwork`).
    """
    from .openvino_graph import prepare_model

    if onnx_path.suffix == ".xml":  # an int8 network (cellflow-rt quantize): rewritten and quantised already
        compiled_dir = None if cache_dir is None else _compiled_folder(cache_dir, onnx_path)
        return core.compile_model(str(onnx_path), "CPU",
                                  config if compiled_dir is None else dict(config, CACHE_DIR=str(compiled_dir))), True
    if cache_dir is not None:
        ir = cache_dir / "graphs" / _graph_key(onnx_path, ov.__version__, half_weights) / "model.xml"
        if ir.is_file():
            return core.compile_model(str(ir), "CPU", dict(config, CACHE_DIR=str(ir.parent / "compiled"))), True
    model = core.read_model(str(onnx_path))
    if not prepare_model(model):
        return core.compile_model(model, "CPU", config), False
    if cache_dir is not None:
        try:
            _save_atomically(ov, model, ir, onnx_path, half_weights)
        except OSError:
            pass  # a read-only or full cache: compile from memory, as without a cache
        else:
            del model  # its float32 weights: the IR file holds them now
            return core.compile_model(str(ir), "CPU", dict(config, CACHE_DIR=str(ir.parent / "compiled"))), True
    return core.compile_model(model, "CPU", config), True


def _compiled_folder(cache_dir: Path, ir_path: Path) -> Optional[Path]:
    """OpenVINO's compiled-model cache for an IR file (one folder per file; earlier versions' removed)."""
    folder = cache_dir / "int8" / _graph_key(ir_path, _import_openvino().__version__, False)
    source = str(ir_path.resolve())
    try:
        _remove_other_versions(folder, source)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.txt").write_text(source)
    except OSError:
        return None  # a read-only or full cache: compile without one
    return folder


def _remove_other_versions(folder: Path, source: str) -> None:
    """Remove the sibling cache folders of ``folder`` made for the same ``source`` file (its earlier versions)."""
    for other in folder.parent.glob("*/source.txt"):
        # (not another process's folder in the making: it is renamed or removed by that process)
        if other.parent != folder and not other.parent.name.endswith(".tmp") and other.read_text() == source:
            shutil.rmtree(other.parent, ignore_errors=True)


def _save_atomically(ov, model, xml_path: Path, onnx_path: Path, half_weights: bool) -> None:
    """Save ``model`` as IR to ``xml_path``'s folder, which appears complete or not at all.

    The folder also holds OpenVINO's compiled models of that graph, and names its ONNX file
    (``source.txt``): the folders of an earlier version of the same file (re-exported, or another
    OpenVINO) are removed, so that the cache holds one graph per model file.
    """
    folder = xml_path.parent
    source = str(onnx_path.resolve())
    _remove_other_versions(folder, source)
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(tmp / xml_path.name), compress_to_fp16=half_weights)
        (tmp / "source.txt").write_text(source)
        try:
            tmp.rename(folder)
        except OSError:
            if not xml_path.is_file():  # not a concurrent process's copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OpenVINONetwork:
    """CPnet compiled by OpenVINO for the CPU, with the interface of :class:`~cellflow_rt.network.Network`.

    Parameters
    ----------
    onnx_path : path
        Exported CPnet (input ``image`` [B, C, H, W]; outputs ``flows``, ``style``).
    num_threads : int, optional
        Inference threads (default: OpenVINO's choice, all cores).
    precision : {"bf16", "fp32", "int8"}
        Inference precision hint; bf16 falls back to float32 on CPUs without bf16 instructions.
        "int8": ``onnx_path`` is the int8 IR that ``cellflow-rt quantize`` wrote
        (:func:`~cellflow_rt.int8_model.find_int8_model`); its linear layers run in int8, the rest
        in bfloat16 where the CPU has it.
    cache_dir : path or False, optional
        Where rewritten graphs and compiled models are kept (default :func:`default_cache_dir`);
        False: no cache.
    streams : int, optional
        Tiles in flight at once, each on its own share of the threads (OpenVINO's streams);
        default ``$CELLFLOW_RT_OPENVINO_STREAMS`` or 1 (all threads on one tile at a time).
    """

    def __init__(self, onnx_path: Union[str, Path], num_threads: Optional[int] = None, precision: str = "bf16",
                 cache_dir: Union[str, Path, None, bool] = None, streams: Optional[int] = None):
        ov = _import_openvino()
        self.onnx_path = Path(onnx_path)
        config = {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32", "int8": "bf16"}[precision],
                  "PERFORMANCE_HINT": "LATENCY"}
        #: Tiles in flight at once (OpenVINO streams).
        self.streams = max(1, int(streams or os.environ.get("CELLFLOW_RT_OPENVINO_STREAMS", "1")))
        if self.streams > 1:
            config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=self.streams)
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        core = ov.Core()
        cache = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
        # Float16 weights in the cached IR: the CPU plugin then keeps (and caches) half-size weights
        # beside its packed bfloat16 copies (peak RSS of the full-size Cellpose-SAM: 1.4 instead of 2.0
        # GiB; float32 IR weights, or bfloat16 ones, which it widens to float32, keep both copies).
        # Rounding to float16 first changes nothing that bfloat16 keeps, bar weights below 6e-5,
        # whose contributions are below bfloat16's rounding. Float32 inference keeps float32 weights.
        half_weights = precision == "bf16" and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        try:
            #: Whether the graph was rewritten for the CPU plugin (Cellpose-SAM: fused attention).
            self._compiled, self.rewritten = _compile(ov, core, self.onnx_path, config, cache, half_weights)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{self.onnx_path}: OpenVINO cannot compile this model ({exc})") from exc
        inputs = self._compiled.inputs
        if len(inputs) != 1 or inputs[0].get_any_name() != "image" or inputs[0].get_partial_shape().rank.get_length() != 4:
            raise ValueError(f"{self.onnx_path}: expected one input 'image' [B, C, H, W]")
        names = [o.get_any_name() for o in self._compiled.outputs]
        if names[:2] != ["flows", "style"]:
            raise ValueError(f"{self.onnx_path}: expected outputs ['flows', 'style'], got {names}")
        channels = inputs[0].get_partial_shape()[1]
        self.nchan = channels.get_length() if channels.is_static else 2
        nout = self._compiled.outputs[0].get_partial_shape()[1]
        self.nout = nout.get_length() if nout.is_static else 3
        used = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type
        #: The precision OpenVINO actually runs in: "bf16", or "fp32" on CPUs without bf16.
        self.precision = "int8" if precision == "int8" else "bf16" if used == ov.Type.bf16 else "fp32"
        self.providers = [PROVIDER_NAME]
        self._local = threading.local()  # one infer request per thread: requests are not thread-safe
        #: Tiles per inference. CPnet: 1, as fast as eight and less than half the memory. Cellpose-SAM:
        #: 4 keep AMX fed a little better (about 7% less time per tile, full-size, 2 idle Xeon cores
        #: with AMX, for about 180 MB more activations).
        self.tiles_per_inference = 4 if self.rewritten else 1

    def reload_args(self) -> dict:
        """``providers`` and ``precision`` for :func:`~cellflow_rt.network.open_network` that open this
        network again (workers): bf16 as asked, even where this CPU made OpenVINO fall back to fp32."""
        return {"providers": (), "precision": "int8" if self.precision == "int8" else "bf16"}

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def _queue(self):
        queue = getattr(self._local, "queue", None)
        if queue is None:
            import openvino as ov
            queue = self._local.queue = ov.AsyncInferQueue(self._compiled, self.streams)
        return queue

    def run(self, tiles: np.ndarray, batch_size: int = 8) -> Tuple[np.ndarray, np.ndarray]:
        """Run tiles (N, C, ly, lx), :attr:`tiles_per_inference` at a time; return flows (N, nout, ly, lx)
        and styles (N, 256).

        ``batch_size`` is accepted for the common interface. With :attr:`streams` > 1, that many
        inferences run at once.
        """
        n = tiles.shape[0]
        flows = np.empty((n, self.nout) + tiles.shape[2:], np.float32)
        styles = np.empty((n, 256), np.float32)
        step = self.tiles_per_inference
        chunks = [slice(start, min(n, start + step)) for start in range(0, n, step)]
        if self.streams > 1 and len(chunks) > 1:
            queue = self._queue()

            def collect(request, chunk):
                flows[chunk] = request.get_tensor("flows").data
                styles[chunk] = request.get_tensor("style").data

            queue.set_callback(collect)
            for chunk in chunks:
                queue.start_async({"image": np.ascontiguousarray(tiles[chunk], dtype=np.float32)}, chunk)
            queue.wait_all()
            return flows, styles
        request = self._request()
        for chunk in chunks:
            request.infer({"image": np.ascontiguousarray(tiles[chunk], dtype=np.float32)})
            flows[chunk] = request.get_tensor("flows").data
            styles[chunk] = request.get_tensor("style").data
        return flows, styles
