"""Where a full-size Cellpose-SAM tile's time goes: OpenVINO's and ONNX Runtime's per-node profilers.

Runs one 256 x 256 tile ``--repeats`` times (after a first call) with the runtime's profiler on, sums
each node's time over the repeats and groups the nodes by what they compute (classes below, from the
node names both graph producers give: ``blocks.N/attn/qkv``, ``.../mlp/lin1``, ``neck`` ...). Prints
one table per runtime: milliseconds per tile and the share of the profiled time.

Examples::

    python bench/profile_cpsam.py                        # OpenVINO bf16 and ONNX Runtime fp32
    python bench/profile_cpsam.py --runtimes ov-bf16 --batch 2
    python bench/profile_cpsam.py --runtimes ov-bf16 --no-fuse   # the graph as exported
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: (class, pattern on the node name, exec/op types that put a node in the class whatever its name)
CLASSES = (
    ("layout (Transpose, Reshape, Concat, Gather)", None, {"Transpose", "Reshape", "Concat", "Gather", "Broadcast",
                                                           "Squeeze", "Unsqueeze", "Split", "VariadicSplit"}),
    ("attention: qkv + proj linear", re.compile(r"attn/(qkv|proj)"), set()),
    ("attention: QK^T, rel-pos, softmax, AV", re.compile(r"attn|sdpa"), set()),
    ("MLP: lin1 + GELU + lin2", re.compile(r"mlp"), set()),
    ("LayerNorm + residual adds", re.compile(r"norm\d|blocks\.\d+/Add"), set()),
    ("neck (1x1, 3x3 conv, channel LayerNorm)", re.compile(r"neck"), set()),
    ("readout (1x1 conv, ConvTranspose W2)", re.compile(r"^/?out/|ConvTranspose|flows"), set()),
    ("patch embedding + position", re.compile(r"patch_embed|^/?proj/|^/Add$|pos_embed"), set()),
)


def classify(name: str, kind: str) -> str:
    for label, pattern, kinds in CLASSES:
        if kind in kinds or (pattern is not None and pattern.search(name)):
            return label
    return "other"


def profile_openvino(onnx_path, precision, batch, repeats, threads, fuse, streams=None):
    import openvino as ov

    from cellflow_rt.openvino_graph import prepare_model

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    if fuse:
        prepare_model(model)
    config = {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[precision], "PERF_COUNT": True,
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(model, "CPU", config)
    del model
    request = compiled.create_infer_request()
    tile = _tiles(batch)
    request.infer({"image": tile})
    totals = defaultdict(float)
    for _ in range(repeats):
        request.infer({"image": tile})
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                totals[(info.node_name, info.node_type)] += info.real_time.total_seconds()
    return {k: v / repeats / batch for k, v in totals.items()}


def profile_onnxruntime(onnx_path, batch, repeats, threads):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        tile = _tiles(batch)
        session.run(None, {"image": tile})
        for _ in range(repeats):
            session.run(None, {"image": tile})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals = defaultdict(float)
    runs = 0
    for event in events:
        if event.get("cat") == "Session" and event["name"] == "model_run":
            runs += 1
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[(event["name"][:-len("_kernel_time")], event["args"]["op_name"])] += event["dur"] * 1e-6
    return {k: v / runs / batch for k, v in totals.items()}


def _tiles(batch: int) -> np.ndarray:
    from cellflow_rt.export.parity import cpsam_parity_images
    return np.ascontiguousarray(np.repeat(cpsam_parity_images(2)[1:], batch, axis=0), np.float32)


def table(title: str, per_node: dict) -> dict:
    by_class = defaultdict(float)
    for (name, kind), seconds in per_node.items():
        by_class[classify(name, kind)] += seconds
    total = sum(by_class.values())
    print(f"\n{title}: {total * 1e3:.0f} ms per tile in profiled nodes")
    print("| operator class | ms per tile | % |")
    print("|---|---|---|")
    for label, seconds in sorted(by_class.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds * 1e3:.0f} | {100 * seconds / total:.1f} |")
    return dict(by_class)


def main():
    from bench_cpsam import full_size_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtimes", default="ov-bf16,ort-fp32", help="ov-bf16, ov-fp32, ort-fp32 (comma-separated)")
    parser.add_argument("--batch", type=int, default=1, help="tiles per inference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-fuse", action="store_true", help="OpenVINO: the graph as exported (no attention fusion)")
    parser.add_argument("--top", type=int, default=0, help="also list the N slowest node types")
    args = parser.parse_args()
    onnx_path = full_size_model()
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads, batch {args.batch}")
    for runtime in args.runtimes.split(","):
        if runtime.startswith("ov-"):
            nodes = profile_openvino(onnx_path, runtime[3:], args.batch, args.repeats, args.threads, not args.no_fuse)
        else:
            nodes = profile_onnxruntime(onnx_path, args.batch, args.repeats, args.threads)
        table(f"{runtime}{' (as exported)' if args.no_fuse and runtime.startswith('ov-') else ''}", nodes)
        if args.top:
            kinds = defaultdict(float)
            for (_, kind), seconds in nodes.items():
                kinds[kind] += seconds
            for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"  {kind}: {seconds * 1e3:.1f} ms")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
