"""Step 2 of the GPU check: the whole chain on a GPU, against the CPU path and against Cellpose 3.1.1.1.

Runs on the GPU machine, from ``device.sh last`` (see README.md), with the payload unpacked by
``payload.py``. It measures every figure of issue 12's targets; each step is guarded (a failure is
recorded and the next step runs) and skipped when ``--budget`` seconds would be overrun. Every
number goes to ``OUT/chain_check.json`` as soon as its step ends; one table is printed last.

Steps, most important first:

- ``env``: GPU, driver, CUDA, package versions; whether the GPU dynamics (part A) are present.
- ``iobinding``: :meth:`~cellflow_rt.network.Network.run_on_device` on the CUDA provider with real
  numba device arrays (the tests reach it only through fakes, ``tests/gpu/test_gpu_flows.py``): its
  outputs against :meth:`~cellflow_rt.network.Network.run` (host arrays) on the same tiles, and that
  the device-resident chain calls it (counted during one segmentation).
- ``e2e``: 2048^2 nuclei and cyto images, one per model, CUDA provider in fp32 (TF32 off) and tf32:
  normalised image in, masks out, warm, median of ``--repeats``; the network and dynamics split;
  the same from the raw image in memory (what Cellpose is timed on).
- ``ap``: the shared 2D reference cases on the GPU chain, AP@0.5/0.75/0.9 against the CPU fp32
  path's masks. Those are the reference masks carried in the payload: the CPU fp32 path gives them
  exactly (``tests/parity/test_parity_2d.py``), so they stand in for running the CPU path here.
- ``cellpose``: Cellpose 3.1.1.1 on this GPU (torch CUDA, same checkpoints, same settings) on the
  same 2048^2 images, warm, median; ratio against ours (raw image in on both sides); AP of its
  masks against ours.
- ``stream``: a folder of 2048^2 TIFFs through ``run_batch`` (read and write threads, masks written
  as TIFF), megapixels per second including read and write.
- ``tensorrt``: if this onnxruntime can run TensorRT: engine build time (warmup), AP@0.5 of fp16
  engines against the CPU fp32 masks, 2048^2 time.
- ``options``: the CUDA provider options on the network half alone (TF32, cuDNN algorithm search,
  NHWC, arena growth, batch 32), first-call and warm times, device memory.

usage::

    python3 bench/gpu/chain_check.py --payload DIR --out DIR [--budget 420] [--repeats 5] [--steps e2e,ap]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: The two 2048^2 cases of bench/_common.py (same images, settings as bench.py's).
E2E = {"nuclei": dict(eval=dict(channels=[0, 0], diameter=20.0), model="nuclei_demo", weights="cellflow_nuclei_demo"),
       "cyto": dict(eval=dict(channels=[1, 2], channel_axis=0, diameter=30.0), model="cyto_demo",
                    weights="cellflow_cyto_demo")}
SIDE = 2048
STEPS = ("env", "iobinding", "e2e", "ap", "cellpose", "stream", "tensorrt", "options")
#: Seconds a step needs at least to be started (skipped otherwise, with the reason recorded).
RESERVE = {"env": 5, "iobinding": 20, "e2e": 60, "ap": 40, "cellpose": 60, "stream": 40, "tensorrt": 120, "options": 60}


# ------------------------------------------------------------------------------------------------
# the chain under test
def has_gpu_dynamics() -> bool:
    from cellflow_rt.settings import EvalSettings
    return "dynamics" in EvalSettings.names()


def gpu_settings(settings):
    """The settings with the dynamics on the GPU (part A's option), when the option exists."""
    return settings.with_(dynamics="gpu") if has_gpu_dynamics() else settings


def masks_from_normalised(x, model, settings):
    """Normalised planes in, Segmentation out, on the GPU path (device-resident network half)."""
    from cellflow_rt import pipeline
    from cellflow_rt.gpu.predict import predict_on_device, prediction_to_host

    if has_gpu_dynamics():
        return pipeline.finish(pipeline.predict_prepared(x, model, gpu_settings(settings)))
    rescale = pipeline.rescale_for(model, settings)
    prediction = predict_on_device(x, model, settings, rescale, float(model.diam_mean / rescale))
    return pipeline.finish(prediction_to_host(prediction))  # CPU dynamics: part A's are missing


def segment_gpu(image, model, settings):
    from cellflow_rt import pipeline
    x = pipeline.prepare_image(image, settings, model.nchan)
    return masks_from_normalised(x, model, settings)


def open_model(path, precision="fp32", provider="cuda", batch_size=8):
    """A model on a GPU provider; CUDA libraries from torch's packages if ORT could not find them."""
    from cellflow_rt.loaded_model import LoadedModel
    model = LoadedModel.load(str(path), providers=[provider], strict_provider=True, precision=precision,
                             batch_size=batch_size)
    wants_gpu = provider != "cpu"  # cpu: a smoke test of this script
    if wants_gpu and not model.net.on_gpu and "torch" not in sys.modules:
        import torch  # noqa: F401  (loads the CUDA and cuDNN libraries ORT links against)
        model = LoadedModel.load(str(path), providers=[provider], strict_provider=True, precision=precision,
                                 batch_size=batch_size)
    if wants_gpu and not model.net.on_gpu:
        raise RuntimeError(f"{provider} did not start: the session runs on {model.net.providers}")
    return model


def synthetic_image(kind: str, side: int = SIDE) -> np.ndarray:
    """A ``side``^2 image: bench/_common.py's 512^2 synthetic image, tiled in four mirrorings (or cropped)."""
    import _common
    base = _common.generate_image(_common.CASES[f"{kind}_512"])
    flips = [base, base[..., ::-1], base[..., ::-1, :], base[..., ::-1, ::-1]]
    n = -(-side // 512)
    rows = [np.concatenate([flips[(i + j) % 4] for j in range(n)], axis=-1) for i in range(n)]
    return np.ascontiguousarray(np.concatenate(rows, axis=-2)[..., :side, :side])


def settings_for(kind: str):
    from cellflow_rt.models import _settings_from_eval_kwargs
    return _settings_from_eval_kwargs(dict(E2E[kind]["eval"]))


def ap(truth, masks) -> dict:
    from cellflow_rt.metrics import matching_summary
    s = matching_summary(truth, masks)
    return {"n_true": int(s["n_true"]), "n_pred": int(s["n_pred"]),
            **{k: round(float(s[k]), 5) for k in ("ap_0.5", "ap_0.75", "ap_0.9")}}


def median_ms(values) -> float:
    return round(1000 * statistics.median(values), 2)


def free_device_memory():
    """Free bytes on the CUDA device (None where numba cannot tell, e.g. its simulator)."""
    try:
        from numba import cuda
        return int(cuda.current_context().get_memory_info()[0])
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------
# steps
class Check:
    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.results = {"budget_s": args.budget}
        self.payload = Path(args.payload)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.images = {}
        self.models = {}

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def save(self):
        (self.out / "chain_check.json").write_text(json.dumps(self.results, indent=1, default=str))

    def run(self, name, fn):
        if name not in self.args.steps:
            return
        if self.left() < RESERVE[name]:
            self.results[name] = {"skipped": f"{self.left():.0f} s of the budget left, {RESERVE[name]} s needed"}
        else:
            tic = time.perf_counter()
            print(f"== {name} ({self.left():.0f} s of the budget left)", flush=True)
            try:
                self.results[name] = fn()
            except Exception as exc:
                self.results[name] = {"error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:]}
                print(self.results[name]["traceback"], flush=True)
            self.results[name]["seconds"] = round(time.perf_counter() - tic, 1)
        self.save()

    def model(self, kind, precision="fp32", provider="cuda", batch_size=8):
        key = (kind, precision, provider, batch_size)
        if key not in self.models:
            path = self.payload / "models" / f"{E2E[kind]['model']}.onnx"
            self.models[key] = open_model(path, precision, self.args.provider if provider == "cuda" else provider,
                                          batch_size)
        return self.models[key]

    def image(self, kind):
        if kind not in self.images:
            self.images[kind] = synthetic_image(kind, self.args.side)
        return self.images[kind]

    # -- env
    def env(self):
        import numba
        import onnxruntime as ort
        from numba import cuda

        from cellflow_rt import __version__
        from cellflow_rt.provider_options import current_gpu

        info = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
                "cellflow_rt": __version__, "gpu_dynamics": has_gpu_dynamics(), "host": platform.node(),
                "cpus": os.cpu_count()}
        with contextlib.suppress(Exception):
            import numba_cuda
            info["numba_cuda"] = numba_cuda.__version__
        gpu = current_gpu()
        info["gpu"] = gpu.name
        info["compute_capability"] = list(gpu.compute_capability)
        with contextlib.suppress(Exception):
            info["cuda_driver_version"] = cuda.cudadrv.driver.driver.get_version()
            info["cuda_runtime_version"] = cuda.runtime.get_version()
        with contextlib.suppress(Exception):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        with contextlib.suppress(Exception):
            info["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                                text=True, timeout=10).stdout.strip()
        return info

    # -- iobinding
    def iobinding(self):
        """The IO binding on device memory, for real: ``run_on_device`` against ``run`` on the same tiles."""
        from numba import cuda

        from cellflow_rt import pipeline
        from cellflow_rt.network import Network

        model = self.model("nuclei")
        rng = np.random.default_rng(0)
        tiles = rng.standard_normal((4, model.nchan, 224, 224)).astype(np.float32)
        flows_host, styles_host = model.net.run(tiles)
        flows_dev = cuda.device_array((4, 3, 224, 224), np.float32)
        styles_dev = cuda.device_array((4, 256), np.float32)
        cuda.synchronize()
        model.net.run_on_device(cuda.to_device(tiles), flows_dev, styles_dev)
        flows, styles = flows_dev.copy_to_host(), styles_dev.copy_to_host()
        calls = []
        original = Network.run_on_device

        def counting(net, *args):
            calls.append(args[0].shape[0])
            return original(net, *args)

        Network.run_on_device = counting
        try:
            settings = gpu_settings(settings_for("nuclei"))
            masks_from_normalised(pipeline.prepare_image(self.image("nuclei")[:512, :512], settings, model.nchan),
                                  model, settings)
        finally:
            Network.run_on_device = original
        out = {"providers": list(model.net.providers), "flows_max_abs_diff": float(np.abs(flows - flows_host).max()),
               "styles_max_abs_diff": float(np.abs(styles - styles_host).max()),
               "identical": bool(np.array_equal(flows, flows_host) and np.array_equal(styles, styles_host)),
               "chain_run_on_device_calls": len(calls), "chain_tiles_bound": int(sum(calls))}
        print("iobinding", out, flush=True)
        return out

    # -- e2e
    def e2e(self):
        from cellflow_rt import pipeline
        out = {}
        for kind in E2E:
            image = self.image(kind)
            settings = settings_for(kind)
            for precision in ("fp32", "tf32"):
                model = self.model(kind, precision)
                x = pipeline.prepare_image(image, settings, model.nchan)
                tic = time.perf_counter()
                first = masks_from_normalised(x, model, settings)
                first_s = time.perf_counter() - tic
                masks_from_normalised(x, model, settings)
                normalised, network, dynamics, raw = [], [], [], []
                for _ in range(self.args.repeats):
                    tic = time.perf_counter()
                    seg = masks_from_normalised(x, model, settings)
                    normalised.append(time.perf_counter() - tic)
                    network.append(seg.timings.get("network", float("nan")))
                    dynamics.append(seg.timings.get("dynamics", float("nan")))
                for _ in range(self.args.repeats):
                    tic = time.perf_counter()
                    segment_gpu(image, model, settings)
                    raw.append(time.perf_counter() - tic)
                masks = seg.masks
                np.save(self.scratch / f"ours_{kind}_{precision}.npy", masks)
                out[f"{kind}_{precision}"] = {
                    "shape": list(image.shape), "n_masks": int(masks.max()), "first_call_s": round(first_s, 2),
                    "normalised_in_ms": median_ms(normalised), "network_ms": median_ms(network),
                    "dynamics_ms": median_ms(dynamics), "raw_in_ms": median_ms(raw),
                    "all_normalised_in_ms": [round(1000 * v, 1) for v in normalised],
                    "same_masks_first_and_last": bool(np.array_equal(first.masks, masks))}
                print(kind, precision, out[f"{kind}_{precision}"], flush=True)
        return out

    # -- ap
    def ap(self, precisions=("fp32", "tf32"), provider="cuda"):
        import tifffile

        from cellflow_rt.models import _settings_from_eval_kwargs
        kinds = {"cellflow_nuclei_demo": "nuclei", "cellflow_cyto_demo": "cyto"}
        out = {}
        for precision in precisions:
            rows = {}
            for case in sorted((self.payload / "ref2d").iterdir()):
                params = json.loads((case / "params.json").read_text())
                settings = _settings_from_eval_kwargs(dict(params["eval"], diameter=params["diameter_used"]))
                model = self.model(kinds[params["model"]], precision, provider)
                seg = segment_gpu(tifffile.imread(case / "image.tif"), model, settings)
                rows[case.name] = ap(np.load(case / "masks.npy"), seg.masks)
            out[precision] = {"cases": rows, "min_ap_0.5": min(r["ap_0.5"] for r in rows.values()),
                              "mean_ap_0.5": round(float(np.mean([r["ap_0.5"] for r in rows.values()])), 5),
                              "min_ap_0.9": min(r["ap_0.9"] for r in rows.values())}
            print(precision, {k: v for k, v in out[precision].items() if k != "cases"}, flush=True)
        return out

    # -- cellpose
    def cellpose(self):
        spec = {"repeats": max(1, self.args.repeats - 2), "cases": {}}
        for kind in E2E:
            image_path = self.scratch / f"image_{kind}.npy"
            np.save(image_path, self.image(kind))
            weights = self.payload / "weights" / E2E[kind]["weights"]
            spec["cases"][kind] = {"image": str(image_path), "weights": str(weights),
                                   "eval": E2E[kind]["eval"], "masks_out": str(self.scratch / f"cellpose_{kind}.npy")}
        spec_path = self.scratch / "cellpose_spec.json"
        spec_path.write_text(json.dumps(spec))
        result_path = self.scratch / "cellpose_result.json"
        proc = subprocess.run([self.args.cellpose_python, __file__, "--cellpose-worker", str(spec_path),
                               "--out", str(result_path)],
                              capture_output=True, text=True, timeout=max(30, self.left() - 10))
        if not result_path.is_file():
            raise RuntimeError(f"the Cellpose worker failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        result = json.loads(result_path.read_text())
        ours = self.results.get("e2e", {})
        for kind in E2E:
            theirs = result["cases"][kind]
            for precision in ("fp32", "tf32"):
                mine = ours.get(f"{kind}_{precision}", {})
                if "raw_in_ms" in mine:
                    theirs[f"speedup_raw_in_{precision}"] = round(theirs["median_ms"] / mine["raw_in_ms"], 2)
                    theirs[f"speedup_normalised_in_{precision}"] = round(
                        theirs["median_ms"] / mine["normalised_in_ms"], 2)
                ours_masks = self.scratch / f"ours_{kind}_{precision}.npy"
                if ours_masks.is_file():
                    theirs[f"ap_vs_ours_{precision}"] = ap(np.load(spec["cases"][kind]["masks_out"]),
                                                         np.load(ours_masks))
        return result

    # -- stream
    def stream(self):
        import tifffile

        from cellflow_rt.batch import OutputOptions, run_batch
        from cellflow_rt.pipeline import device_resident
        folder, outdir = self.scratch / "stream_in", self.scratch / "stream_out"
        folder.mkdir(exist_ok=True)
        outdir.mkdir(exist_ok=True)
        image = self.image("nuclei")
        paths = []
        for i in range(self.args.stream_files):
            path = folder / f"nuclei_{i:02d}.tif"
            tifffile.imwrite(path, np.roll(image, 97 * i, axis=1))
            paths.append(path)
        settings = gpu_settings(settings_for("nuclei"))
        out = {}
        for precision in ("fp32", "tf32"):
            model = self.model("nuclei", precision)
            options = OutputOptions(savedir=outdir, save_npy=False, save_tif=True)
            run_batch(paths[:2], model, settings, options)  # warm
            tic = time.perf_counter()
            results = run_batch(paths, model, settings, options)
            wall = time.perf_counter() - tic
            megapixels = len(paths) * image.size / 1e6
            out[precision] = {"files": len(paths), "ok": sum(r.ok for r in results), "wall_s": round(wall, 2),
                              "mpx_per_s": round(megapixels / wall, 2), "streaming": device_resident(model, settings),
                              "outputs": "masks as TIFF (no _seg.npy)"}
            print(precision, out[precision], flush=True)
        return out

    # -- tensorrt
    def tensorrt(self):
        import onnxruntime as ort

        from cellflow_rt import pipeline
        from cellflow_rt.warmup import warmup
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            return {"available": False, "reason": "this onnxruntime offers no TensorRT provider"}
        out = {"available": True}
        for kind in E2E:
            path = self.payload / "models" / f"{E2E[kind]['model']}.onnx"
            try:
                out[f"warmup_{kind}_fp16"] = warmup(str(path), precision="fp16", provider="tensorrt",
                                                    progress=lambda line: print(line, flush=True))
            except Exception as exc:
                out["available"] = False
                out["reason"] = f"{type(exc).__name__}: {exc}"
                return out
        out["ap_fp16"] = self.ap(precisions=("fp16",), provider="tensorrt")["fp16"]
        for kind in E2E:
            model = self.model(kind, "fp16", "tensorrt")
            x = pipeline.prepare_image(self.image(kind), settings_for(kind), model.nchan)
            masks_from_normalised(x, model, settings_for(kind))
            times = []
            for _ in range(self.args.repeats):
                tic = time.perf_counter()
                masks_from_normalised(x, model, settings_for(kind))
                times.append(time.perf_counter() - tic)
            out[f"{kind}_fp16_normalised_in_ms"] = median_ms(times)
        return out

    # -- options
    def options(self):
        from cellflow_rt import pipeline, provider_options
        from cellflow_rt.gpu.predict import predict_on_device
        kind = "nuclei"
        settings = settings_for(kind)
        variants = [("fp32", {}, 8), ("fp32", {"cudnn_conv_algo_search": "HEURISTIC"}, 8), ("tf32", {}, 8),
                    ("tf32", {"cudnn_conv_algo_search": "HEURISTIC"}, 8), ("tf32", {"prefer_nhwc": "1"}, 8),
                    ("fp32", {"arena_extend_strategy": "kNextPowerOfTwo"}, 8), ("fp32", {}, 32), ("tf32", {}, 32)]
        out = []
        path = self.payload / "models" / f"{E2E[kind]['model']}.onnx"
        for precision, changes, batch in variants:
            if self.left() < 20:
                out.append({"skipped": "budget"})
                break
            saved = dict(provider_options.CUDA_BASE_OPTIONS)
            provider_options.CUDA_BASE_OPTIONS.update(changes)
            try:
                free_before = free_device_memory()
                model = open_model(path, precision, self.args.provider, batch)
            finally:
                provider_options.CUDA_BASE_OPTIONS.clear()
                provider_options.CUDA_BASE_OPTIONS.update(saved)
            s = settings.with_(batch_size=batch)
            x = pipeline.prepare_image(self.image(kind), s, model.nchan)
            rescale = pipeline.rescale_for(model, s)
            tic = time.perf_counter()
            predict_on_device(x, model, s, rescale, 1.0)
            first = time.perf_counter() - tic
            times = []
            for _ in range(3):
                tic = time.perf_counter()
                predict_on_device(x, model, s, rescale, 1.0)
                times.append(time.perf_counter() - tic)
            free_after = free_device_memory()
            row = {"precision": precision, "changes": changes, "batch_size": batch, "first_call_s": round(first, 2),
                   "network_half_ms": median_ms(times)}
            if free_before is not None and free_after is not None:
                row["device_mib_taken"] = round((free_before - free_after) / 2**20)
            print(row, flush=True)
            out.append(row)
            del model
        return {"variants": out, "note": "network half only (device path: resize, tiles, network, blend, resize "
                                         "back) on the 2048^2 nuclei image; device memory taken by the session"}

    # -- table
    def table(self) -> str:
        r = self.results
        env = r.get("env", {})
        lines = [f"GPU check (chain) on {env.get('gpu', '?')} sm{''.join(map(str, env.get('compute_capability', [])))}"
                 f" | {env.get('nvidia_smi', '')} | onnxruntime {env.get('onnxruntime', '?')}"
                 f" | numba {env.get('numba', '?')} / numba-cuda {env.get('numba_cuda', '?')}"
                 f" | GPU dynamics (part A): {'yes' if env.get('gpu_dynamics') else 'NO: CPU dynamics'}", "",
                 f"{'figure':58s} {'measured':>28s}  target"]

        def row(name, value, target=""):
            lines.append(f"{name:58s} {value:>28s}  {target}")

        e2e = r.get("e2e", {})
        for key, v in e2e.items():
            if isinstance(v, dict) and "normalised_in_ms" in v:
                side = "x".join(map(str, v["shape"][-2:]))
                row(f"{key} {side}: normalised in -> masks out (net + dyn)",
                    f"{v['normalised_in_ms']:.0f} ms ({v['network_ms']:.0f} + {v['dynamics_ms']:.0f})", "<= 150 ms")
                row(f"{key} {side}: raw image in -> masks out", f"{v['raw_in_ms']:.0f} ms")
        for kind, v in r.get("cellpose", {}).get("cases", {}).items():
            row(f"Cellpose 3.1.1.1 {kind} on this GPU (raw in)", f"{v['median_ms']:.0f} ms")
            for precision in ("fp32", "tf32"):
                if f"speedup_raw_in_{precision}" in v:
                    apv = v.get(f"ap_vs_ours_{precision}", {}).get("ap_0.5", float("nan"))
                    row(f"  speed-up, ours {precision} (raw in / normalised in)",
                        f"{v[f'speedup_raw_in_{precision}']:.1f}x / {v[f'speedup_normalised_in_{precision}']:.1f}x",
                        f">= 5x  (AP@0.5 vs ours {apv:.4f})")
        for precision, v in r.get("stream", {}).items():
            if isinstance(v, dict) and "mpx_per_s" in v:
                row(f"stream {v['files']} nuclei images {precision} (read + write, streaming {v['streaming']})",
                    f"{v['mpx_per_s']:.1f} Mpx/s", ">= 50 Mpx/s")
        for precision, v in r.get("ap", {}).items():
            if isinstance(v, dict) and "min_ap_0.5" in v:
                row(f"AP@0.5 vs CPU fp32, {len(v['cases'])} 2D cases, {precision} (min / mean)",
                    f"{v['min_ap_0.5']:.4f} / {v['mean_ap_0.5']:.4f}", ">= 0.999")
        trt = r.get("tensorrt", {})
        if trt.get("available"):
            row("TensorRT fp16 AP@0.5 vs CPU fp32 (min)", f"{trt['ap_fp16']['min_ap_0.5']:.4f}")
        elif trt:
            row("TensorRT", "not run", trt.get("reason", trt.get("skipped", trt.get("error", ""))))
        for v in r.get("options", {}).get("variants", []):
            if "network_half_ms" in v:
                row(f"option {v['precision']} b{v['batch_size']} {v['changes'] or 'defaults'}",
                    f"{v['network_half_ms']:.0f} ms (first {v['first_call_s']:.1f} s)")
        for name in STEPS:
            v = r.get(name, {})
            if "error" in v or "skipped" in v:
                row(f"step {name}", "ERROR" if "error" in v else "skipped", v.get("error", v.get("skipped")))
        return "\n".join(lines)


def cellpose_worker(spec_path: str, result_path: str) -> None:
    """Cellpose 3.1.1.1 on the GPU (torch CUDA), warm, same images and settings: run in its own process."""
    import torch
    import cellpose
    from cellpose import models

    spec = json.loads(Path(spec_path).read_text())
    result = {"torch": torch.__version__, "cellpose": getattr(cellpose, "version", "?"),
              "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cases": {}}
    for kind, case in spec["cases"].items():
        image = np.load(case["image"])
        model = models.CellposeModel(gpu=True, pretrained_model=case["weights"])
        tic = time.perf_counter()
        masks = model.eval(image, **case["eval"])[0]
        first = time.perf_counter() - tic
        times = []
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        for _ in range(spec["repeats"]):
            sync()
            tic = time.perf_counter()
            masks = model.eval(image, **case["eval"])[0]
            sync()
            times.append(time.perf_counter() - tic)
        np.save(case["masks_out"], masks)
        result["cases"][kind] = {"first_call_s": round(first, 2), "median_ms": median_ms(times),
                                 "all_ms": [round(1000 * t, 1) for t in times], "n_masks": int(masks.max()),
                                 "gpu_in_use": bool(model.gpu)}
    Path(result_path).write_text(json.dumps(result, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=Path, help="the unpacked payload (models, weights, ref2d)")
    parser.add_argument("--out", type=Path, required=True, help="folder for chain_check.json")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stream-files", type=int, default=16)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--side", type=int, default=SIDE, help="image side of the e2e/stream images")
    parser.add_argument("--provider", default="cuda", help="cuda; cpu for a smoke test of this script")
    parser.add_argument("--cellpose-python", default=sys.executable, help="python with cellpose 3.1.1.1")
    parser.add_argument("--cellpose-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cellpose_worker:
        cellpose_worker(args.cellpose_worker, str(args.out))
        return 0
    args.steps = [s for s in args.steps.split(",") if s]
    check = Check(args)
    with tempfile.TemporaryDirectory(prefix="chain_check_") as scratch:
        check.scratch = Path(scratch)
        for name in STEPS:
            check.run(name, getattr(check, name))
    check.results["elapsed_s"] = round(time.perf_counter() - check.started, 1)
    check.save()
    table = check.table()
    (check.out / "chain_check_table.txt").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
