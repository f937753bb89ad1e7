"""Cellpose-SAM (Cellpose 4) without torch against Cellpose 4.2.1.1: speed, memory, and masks by precision.

Four measurements, each side in its own process (peak RSS = that side's alone):

``--tile``
    One 256 x 256 tile through a full-size Cellpose-SAM (ViT-L, 305 M parameters, random weights
    from a seed: published weights cannot be downloaded here): ONNX Runtime fp32, OpenVINO bf16 and
    int8 against Cellpose 4's torch network in float32 and in its bfloat16 default. Median of
    ``--repeats`` after a first call.
``--image``
    A 1024 x 1024 synthetic nuclei image end to end (``CellposeModel.eval``, default arguments) with
    the same full-size network, ``--image-precisions`` (Cellpose runs the fp32 and bf16 ones; it has
    no int8), ``--repeats`` runs (median).
``--startup``
    From process start to the first masks of a 512 x 512 image with the full-size network (import,
    model load, ``eval``, masks saved), measured by the parent around the whole child process: ours
    in fp32, bf16 and int8, bf16 and int8 twice (an empty OpenVINO cache, then the cache the first
    process filled), and Cellpose 4 in float32 and bfloat16.
``--precision-table``
    The reference cases (``shared/reference/cpsam``) with the tiny demo network: our fp32, bf16 and
    int8 masks against Cellpose 4's fp32 masks (stored) and its bfloat16 default (computed here), AP
    at IoU 0.5 / 0.75 / 0.9.

The int8 networks are made by ``cellflow-rt quantize`` calibrated on the DSB2018 sample images
(``shared/data/dsb2018_sample``: real nuclei, none of them a reference case), 32 tiles for the
full-size network and 64 for the demo.
The full-size checkpoint is written once to ``bench/out/cpsam_random_vitl.pth`` and exported to
``bench/out/models/`` (1.2 GB each; ``bench/out`` is not in git). Cellpose 4.2.1.1 runs in its own
environment (``--reference-python``, default ``/work/ref/cp4/bin/python``; see
``cpsam_reference_worker.py``).

Examples::

    python bench/bench_cpsam.py --tile --repeats 3
    python bench/bench_cpsam.py --image --repeats 1 --json bench/out/cpsam_image.json
    python bench/bench_cpsam.py --startup
    python bench/bench_cpsam.py --precision-table

Our bf16 workers run on a warm OpenVINO cache (rewritten graph and compiled model: see
``cellflow_rt.network_openvino``; one untimed process fills it first), except ``--startup``'s cold row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED, thread_env, write_json  # noqa: E402

OUT = HERE / "out"
CHECKPOINT = OUT / "cpsam_random_vitl.pth"
MODELS = OUT / "models"
REFERENCE = SHARED / "reference" / "cpsam"
TINY = SHARED / "weights" / "cellflow_cpsam_tiny_demo"
VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, neck_dim=256, nout=3,
             rel_pos_lengths=tuple(127 if i in (5, 11, 17, 23) else 27 for i in range(24)))


def peak_rss_mib() -> float:
    """This process's peak RSS since it started (VmHWM: unlike ru_maxrss, not inherited from a big parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def full_size_model() -> Path:
    """The random ViT-L checkpoint and its export (made once); returns the ONNX path."""
    onnx_path = MODELS / "cpsam_random_vitl.onnx"
    if onnx_path.is_file():
        return onnx_path
    import torch

    from cellflow_rt.export import export_checkpoint
    from cellflow_rt.export.cpsam import CPSAMSpec, random_cpsam_state

    OUT.mkdir(parents=True, exist_ok=True)
    if not CHECKPOINT.is_file():
        torch.save(random_cpsam_state(CPSAMSpec(**VIT_L), seed=0), CHECKPOINT)
    # in a child process, so that this one stays small (its workers would inherit its peak RSS)
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from cellflow_rt.export import export_checkpoint; "
                    "export_checkpoint(sys.argv[1], name='cpsam_random_vitl', out_dir=sys.argv[2], parity_tiles=1)",
                    str(CHECKPOINT), str(MODELS)], check=True)
    print(f"exported in {time.perf_counter() - tic:.0f} s", file=sys.stderr)
    return onnx_path


#: Calibration images for the int8 networks: real nuclei, none of them a reference case.
CALIBRATION = sorted((SHARED / "data" / "dsb2018_sample").glob("*_image.tif"))


def int8_network(onnx_path: Path, tiles: int = 32) -> None:
    """Quantise ``onnx_path`` (``cellflow-rt quantize``) unless its int8 network is there and current."""
    from cellflow_rt.int8_model import Int8ModelError, find_int8_model
    from cellflow_rt.registry import cached_sha256

    try:
        find_int8_model(onnx_path, cached_sha256(onnx_path))
        return
    except Int8ModelError:
        pass
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cellflow_rt.cli", "quantize", str(onnx_path), "--images",
                    str(CALIBRATION[0].parent), "--img_filter", "_image", "--tiles", str(tiles)], check=True)
    print(f"quantised in {time.perf_counter() - tic:.0f} s", file=sys.stderr)


def bench_tile() -> np.ndarray:
    from cellflow_rt.export.parity import cpsam_parity_images
    return cpsam_parity_images(2)[1:]  # the blob tile


# --------------------------------------------------------------------------------------------- workers
def our_worker(spec: dict) -> dict:
    """Our side of a measurement (run in a fresh process by ``--worker``)."""
    if spec["mode"] == "startup":
        return our_startup(spec)
    from cellflow_rt.loaded_model import LoadedModel

    tic = time.perf_counter()
    model = LoadedModel.load(spec["onnx"], precision=spec["precision"], num_threads=spec["threads"])
    result = {"load_s": time.perf_counter() - tic, "precision": model.net.precision}
    if spec["mode"] == "tile":
        tile = np.load(spec["tile"])
        seconds = []
        for _ in range(1 + spec["repeats"]):
            tic = time.perf_counter()
            flows = model.net.run(tile)[0]
            seconds.append(time.perf_counter() - tic)
        np.save(spec["out"], flows)
        result.update(first_s=seconds[0], seconds=seconds[1:])
    else:
        import tifffile

        from cellflow_rt.pipeline import segment
        from cellflow_rt.settings import EvalSettings

        image = tifffile.imread(spec["image"])
        seconds = []
        for _ in range(spec["repeats"]):
            tic = time.perf_counter()
            seg = segment(image, model, EvalSettings())
            seconds.append(time.perf_counter() - tic)
        np.save(spec["out"], seg.masks)
        result.update(seconds=seconds, n_masks=int(seg.masks.max()), timings=seg.timings)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def our_startup(spec: dict) -> dict:
    """Import, load, read the image, segment, save the masks: what a user waits for in a new process."""
    tic = time.perf_counter()
    import tifffile

    from cellflow_rt.models import CellposeModel
    imported = time.perf_counter()
    model = CellposeModel(pretrained_model=spec["onnx"], precision=spec["precision"], num_threads=spec["threads"])
    loaded = time.perf_counter()
    masks = model.eval(tifffile.imread(spec["image"]))[0]
    np.save(spec["out"], masks)
    done = time.perf_counter()
    return {"import_s": imported - tic, "load_s": loaded - imported, "eval_s": done - loaded,
            "precision": model.model.net.precision, "n_masks": int(masks.max()), "peak_rss_mib": peak_rss_mib()}


def run_ours(spec: dict, threads: int, env: dict = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        tic = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--worker", str(path)], check=True,
                       env=thread_env(threads, env))
        wall = time.perf_counter() - tic
        return dict(json.loads(path.with_suffix(".out.json").read_text()), process_s=wall)


def warm_openvino_cache(onnx_path: Path, threads: int) -> None:
    """Fill OpenVINO's cache for the bf16 network in an untimed process (later workers import it)."""
    subprocess.run([sys.executable, "-c", "import sys; from cellflow_rt.network_openvino import OpenVINONetwork; "
                    "OpenVINONetwork(sys.argv[1], num_threads=int(sys.argv[2]))", str(onnx_path), str(threads)],
                   check=True, env=thread_env(threads))


def run_reference(spec: dict, python: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(spec, result=str(Path(tmp) / "result.json"))
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        tic = time.perf_counter()
        subprocess.run([python, str(HERE / "cpsam_reference_worker.py"), str(path)], check=True,
                       env=thread_env(threads))
        wall = time.perf_counter() - tic
        return dict(json.loads(Path(spec["result"]).read_text()), process_s=wall)


# --------------------------------------------------------------------------------------------- modes
def measure_tile(args) -> dict:
    onnx_path = full_size_model()
    OUT.mkdir(parents=True, exist_ok=True)
    tile_path = OUT / "tile.npy"
    np.save(tile_path, bench_tile())
    warm_openvino_cache(onnx_path, args.threads)
    int8_network(onnx_path)
    rows = {}
    # rounds interleave the five runtimes, so that a change of load on a shared machine hits all alike
    for _ in range(args.rounds):
        for name, precision in (("cellflow fp32", "fp32"), ("cellflow bf16", "bf16"), ("cellflow int8", "int8")):
            _merge(rows, name, run_ours(dict(mode="tile", onnx=str(onnx_path), precision=precision,
                                             threads=args.threads, repeats=args.repeats, tile=str(tile_path),
                                             out=str(OUT / f"tile_{precision}.npy")), args.threads))
        for name, bf16 in (("cellpose fp32", False), ("cellpose bf16", True)):
            _merge(rows, name, run_reference(dict(mode="tile", weights=str(CHECKPOINT), bfloat16=bf16,
                                                  threads=args.threads, repeats=args.repeats, tile=str(tile_path),
                                                  masks_out=str(OUT / f"tile_cellpose_{'bf16' if bf16 else 'fp32'}.npy")),
                                             args.reference_python, args.threads))
    reference = np.load(OUT / "tile_cellpose_fp32.npy")
    for name in rows:
        key = {"cellflow fp32": "fp32", "cellflow bf16": "bf16", "cellflow int8": "int8", "cellpose fp32": "cellpose_fp32",
               "cellpose bf16": "cellpose_bf16"}[name]
        rows[name]["max_abs_error_vs_cellpose_fp32"] = float(np.abs(np.load(OUT / f"tile_{key}.npy") - reference).max())
    print(f"\nfull-size Cellpose-SAM, one 256^2 tile, {args.threads} threads per side, median of {args.rounds} "
          f"round(s) x {args.repeats}")
    print("| runtime | s per tile | speed-up vs cellpose fp32 | vs cellpose bf16 | first call [s] | peak RSS [MiB] | "
          "max abs error vs cellpose fp32 |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(rows["cellpose fp32"]["seconds"])
    base_bf16 = statistics.median(rows["cellpose bf16"]["seconds"])
    for name, r in rows.items():
        s = statistics.median(r["seconds"])
        print(f"| {name} | {s:.2f} | {base / s:.2f}x | {base_bf16 / s:.2f}x | {r['first_s']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['max_abs_error_vs_cellpose_fp32']:.2g} |")
    return rows


def _merge(rows: dict, name: str, result: dict) -> None:
    """Accumulate one worker's result: timings appended, peak RSS and load time the largest."""
    if name not in rows:
        rows[name] = result
        return
    row = rows[name]
    row["seconds"] = row["seconds"] + result["seconds"]
    row["peak_rss_mib"] = max(row["peak_rss_mib"], result["peak_rss_mib"])
    row["load_s"] = max(row["load_s"], result["load_s"])


def measure_image(args) -> dict:
    import tifffile

    from _common import CASES, image_path

    onnx_path = full_size_model()
    image = image_path(CASES["nuclei_1024"])
    warm_openvino_cache(onnx_path, args.threads)
    int8_network(onnx_path)
    rows = {}
    # each precision's pair back to back, so that both sides of a ratio see the same load
    for precision in args.image_precisions.split(","):
        rows[f"cellflow {precision}"] = run_ours(dict(mode="image", onnx=str(onnx_path), precision=precision,
                                                      threads=args.threads, repeats=args.repeats, image=str(image),
                                                      out=str(OUT / f"image_{precision}.npy")), args.threads)
        if precision == "int8":  # Cellpose has no int8: its bf16 default is the row to compare with
            continue
        rows[f"cellpose {precision}"] = run_reference(dict(mode="image", weights=str(CHECKPOINT),
                                                           bfloat16=precision == "bf16", threads=args.threads,
                                                           repeats=args.repeats, image=str(image),
                                                           masks_out=str(OUT / f"image_cellpose_{precision}.npy")),
                                                      args.reference_python, args.threads)
    shape = tifffile.imread(image).shape
    print(f"\nfull-size Cellpose-SAM (random weights), {shape[0]}x{shape[1]} end to end (eval, default arguments), "
          f"{args.threads} threads per side, median of {args.repeats}")
    print("| runtime | s | speed-up vs cellpose bf16 | peak RSS [MiB] | masks |")
    print("|---|---|---|---|---|")
    base = statistics.median(rows["cellpose bf16"]["seconds"])
    for name in ("cellpose fp32", "cellflow fp32", "cellpose bf16", "cellflow bf16", "cellflow int8"):
        if name in rows:
            r = rows[name]
            s = statistics.median(r["seconds"])
            print(f"| {name} | {s:.1f} | {base / s:.2f}x | {r['peak_rss_mib']:.0f} | {r['n_masks']} |")
    return rows


def measure_startup(args) -> dict:
    from _common import CASES, image_path

    onnx_path = full_size_model()
    image = image_path(CASES["nuclei_512"])
    rows = {}
    spec = dict(mode="startup", onnx=str(onnx_path), threads=args.threads, image=str(image))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, CELLFLOW_RT_OPENVINO_CACHE=cache)
        rows["cellflow bf16, empty OpenVINO cache"] = run_ours(dict(spec, precision="bf16",
                                                                    out=str(OUT / "startup_bf16.npy")), args.threads, env)
        rows["cellflow bf16, cached"] = run_ours(dict(spec, precision="bf16", out=str(OUT / "startup_bf16.npy")),
                                                 args.threads, env)
        int8_network(onnx_path)
        rows["cellflow int8, empty OpenVINO cache"] = run_ours(dict(spec, precision="int8",
                                                                    out=str(OUT / "startup_int8.npy")), args.threads, env)
        rows["cellflow int8, cached"] = run_ours(dict(spec, precision="int8", out=str(OUT / "startup_int8.npy")),
                                                 args.threads, env)
    rows["cellflow fp32"] = run_ours(dict(spec, precision="fp32", out=str(OUT / "startup_fp32.npy")), args.threads)
    for precision in ("fp32", "bf16"):
        rows[f"cellpose {precision}"] = run_reference(dict(mode="startup", weights=str(CHECKPOINT),
                                                           bfloat16=precision == "bf16", threads=args.threads,
                                                           image=str(image),
                                                           masks_out=str(OUT / f"startup_cellpose_{precision}.npy")),
                                                      args.reference_python, args.threads)
    print(f"\nfull-size Cellpose-SAM (random weights), 512x512: process start to masks saved, {args.threads} threads "
          f"per side, one process each (the checkpoint/ONNX file in the page cache)")
    print("| runtime | process start to masks [s] | import [s] | model load [s] | eval [s] | peak RSS [MiB] |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['process_s']:.1f} | {r['import_s']:.1f} | {r['load_s']:.1f} | {r['eval_s']:.1f} | "
              f"{r['peak_rss_mib']:.0f} |")
    return rows


def precision_table(args) -> dict:
    from cellflow_rt.export import export_checkpoint
    from cellflow_rt.metrics import matching_summary
    from cellflow_rt.models import CellposeModel
    import tifffile

    cases = sorted(p for p in REFERENCE.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_checkpoint(TINY, name="cpsam_tiny", out_dir=tmp, echo=None)
        int8_network(manifest.with_suffix(".onnx"), tiles=64)
        bf16_dir = Path(tmp) / "cellpose_bf16"
        run_reference(dict(mode="cases", weights=str(TINY), bfloat16=True, threads=args.threads,
                           cases=[str(c) for c in cases], outdir=str(bf16_dir)), args.reference_python, args.threads)
        ours = {p: CellposeModel(pretrained_model=str(manifest.with_suffix(".onnx")), precision=p)
                for p in ("fp32", "bf16", "int8")}
        rows = {}
        for case in cases:
            kwargs = json.loads((case / "params.json").read_text())["eval"]
            image = tifffile.imread(case / "image.tif")
            references = {"fp32": np.load(case / "outputs.npz")["masks"],
                          "bf16": np.load(bf16_dir / f"{case.name}.npy")}
            for precision, model in ours.items():
                masks = model.eval(image, **kwargs)[0]
                for ref_name, ref in references.items():
                    s = matching_summary(ref, masks)
                    rows[(case.name, precision, ref_name)] = (s["n_true"], s["n_pred"], s["ap_0.5"], s["ap_0.75"],
                                                              s["ap_0.9"])
            s = matching_summary(references["fp32"], references["bf16"])
            rows[(case.name, "cellpose bf16", "fp32")] = (s["n_true"], s["n_pred"], s["ap_0.5"], s["ap_0.75"],
                                                          s["ap_0.9"])
    print("\nAP against Cellpose 4.2.1.1 (demo network, reference cases): ours fp32 / bf16 / int8 against Cellpose fp32 "
          "and its bf16 default; last rows: Cellpose bf16 against Cellpose fp32")
    print("| case | ours | against Cellpose | masks (Cellpose / ours) | AP@0.5 | AP@0.75 | AP@0.9 |")
    print("|---|---|---|---|---|---|---|")
    for (case, ours_p, ref_p), (nt, npred, a5, a75, a9) in sorted(rows.items()):
        print(f"| {case} | {ours_p} | {ref_p} | {nt} / {npred} | {a5:.4f} | {a75:.4f} | {a9:.4f} |")
    return {"|".join(k): v for k, v in rows.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tile", action="store_true", help="per-tile network time, full-size network")
    parser.add_argument("--image", action="store_true", help="1024^2 end to end, full-size network")
    parser.add_argument("--startup", action="store_true", help="process start to first masks, 512^2, full-size network")
    parser.add_argument("--precision-table", action="store_true", help="AP by precision on the reference cases")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per worker (after a first call for --tile)")
    parser.add_argument("--rounds", type=int, default=1, help="--tile: times each runtime is started, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-precisions", default="bf16,int8,fp32",
                        help="--image: precisions to run, comma-separated (int8 has no Cellpose row)")
    parser.add_argument("--reference-python", default="/work/ref/cp4/bin/python")
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(args.worker).with_suffix(".out.json").write_text(json.dumps(our_worker(spec)))
        return
    results = {}
    load_at_start = os.getloadavg()
    print(f"load average {load_at_start[0]:.2f} {load_at_start[1]:.2f} {load_at_start[2]:.2f}")
    if args.tile:
        results["tile"] = measure_tile(args)
    if args.image:
        results["image"] = measure_image(args)
    if args.startup:
        results["startup"] = measure_startup(args)
    if args.precision_table:
        results["precision"] = precision_table(args)
    if not results:
        parser.error("choose --tile, --image, --startup and/or --precision-table")
    if args.json:
        write_json(args.json, dict(results, conditions=conditions(load_at_start)))


def conditions(load_at_start) -> dict:
    """The machine, load and versions a table was measured under."""
    import platform

    import onnxruntime
    import openvino
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "load_at_start": load_at_start, "load_at_end": os.getloadavg(), "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    main()
