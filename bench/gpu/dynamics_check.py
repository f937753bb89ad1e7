"""GPU check, step 1: the GPU dynamics against the CPU dynamics, masks and time (no network).

Needs an NVIDIA GPU, numba-cuda and this repository; not onnxruntime-gpu. From the repository root::

    # once, where ../shared exists: copy the recorded flows this check reads (about 6 MB)
    python bench/gpu/dynamics_check.py --prepare ../shared/reference --data bench/gpu/data
    # on the GPU machine
    python bench/gpu/dynamics_check.py --data bench/gpu/data [--repeats 10] [--size 2048]

Inputs (``--data DIR``): ``<case>/dynamics_0.npz`` (``dP``, ``cellprob``, and for whole images
the reference ``masks``) and ``<case>/dynamics_0.json`` (the call's keyword arguments) as in
``../shared/reference/{2d,3d}/<case>/``, either directly under ``DIR`` or under ``DIR/2d`` and
``DIR/3d`` (a copy of ``../shared/reference``); ``--prepare`` writes the small set :data:`PREPARED`
(about 6 MB; the 3D stack cropped to 24 x 64 x 64). A synthetic ``--size`` x ``--size`` case is made here: random disks,
their heat-diffusion flows (x 5, plus noise) and a +/-4 cell probability.

For every case the CPU path (``cellflow_rt.dynamics``) and the GPU path (``cellflow_rt.gpu``) get
the same call. Reported: masks identical, mask counts, AP@0.5 / AP@0.9 of GPU against CPU
(``cellflow_rt.metrics``); times in ms, each call synchronised (the functions return host masks),
warm medians over ``--repeats`` (the CPU path over fewer calls when one takes long; kernels
compiled beforehand on tiny inputs, that time reported apart):

- ``cpu``: the CPU path, host arrays in and out;
- ``gpu_host``: GPU path, host arrays in (upload included), masks out;
- ``gpu_dev``: GPU path, flows already on the device (as the network leaves them on the GPU path),
  masks out: the "dynamics + flow check" figure of the issue's 2048^2 <= 30 ms target (hole
  filling on the device, the default);
- ``gpu_dev_hostfill``: as ``gpu_dev`` with hole filling on the host (``fill_holes="host"``);
- ``gpu_noqc``: as ``gpu_dev`` with ``flow_threshold=0`` (so flow check = gpu_dev - gpu_noqc).

Prints one table; writes the raw numbers and the machine (GPU, driver, CUDA runtime, numba,
numba-cuda, Python) to ``--out`` (default ``bench/gpu/results/``) as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

#: Recorded calls copied by --prepare (2D whole images; 3D cropped): kind/case -> crop or None.
PREPARED = {
    "2d/nuclei_256": None,
    "2d/nuclei_200_small_diam8": None,
    "2d/cyto_300_2ch": None,
    "2d/nuclei_389x517_estimate": None,
    "3d/nuclei_vol_do3D": (slice(None), slice(32, 96), slice(32, 96)),
}
TARGET_MS = 30.0


def prepare(reference: Path, data: Path, cases) -> None:
    """Copy the recorded calls of ``cases`` from ``reference`` (../shared/reference) into ``data``."""
    for key in cases:
        kind, case = key.split("/")
        src = reference / kind / case
        crop = PREPARED.get(key)
        arrays = dict(np.load(src / "dynamics_0.npz"))
        if crop is not None:  # a crop's masks are not the reference's: drop them
            arrays = {"dP": arrays["dP"][(slice(None), *crop)], "cellprob": arrays["cellprob"][crop]}
        out = data / case
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "dynamics_0.npz", **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        shutil.copyfile(src / "dynamics_0.json", out / "dynamics_0.json")
        print(f"{key}: {(out / 'dynamics_0.npz').stat().st_size / 1e6:.2f} MB -> {out}")


def synthetic_case(size: int, seed: int = 0):
    """Disks of radius 6-11 px covering about a third of a size^2 image, their flows and cellprob."""
    from cellflow_rt import dynamics
    rng = np.random.default_rng(seed)
    masks = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[-11:12, -11:12]
    n = int(size * size * 0.33 / (np.pi * 8.5**2))
    for label, (cy, cx, r) in enumerate(zip(rng.integers(11, size - 11, n), rng.integers(11, size - 11, n),
                                            rng.uniform(6, 11, n)), start=1):
        disk = yy**2 + xx**2 <= r * r
        masks[cy - 11:cy + 12, cx - 11:cx + 12][disk] = label
    flows = dynamics.masks_to_flows(masks)
    dP = (5 * flows + rng.normal(0, 0.3, flows.shape)).astype(np.float32)
    cellprob = np.where(masks > 0, 4.0, -4.0).astype(np.float32)
    kwargs = dict(niter=200, cellprob_threshold=0.0, flow_threshold=0.4, interp=True, resize=None, min_size=15,
                  max_size_fraction=0.4)
    return dP, cellprob, kwargs, None


def load_case(data: Path, case: str, crop: int):
    arrays = np.load(data / case / "dynamics_0.npz")
    kwargs = json.loads((data / case / "dynamics_0.json").read_text())
    dP, cellprob = arrays["dP"], arrays["cellprob"]
    ref = arrays["masks"] if "masks" in arrays.files else None
    if crop:  # small runs (the simulator): a corner, no reference masks
        window = ((slice(0, min(crop, 8)),) if cellprob.ndim == 3 else ()) + (slice(0, crop), slice(0, crop))
        dP, cellprob, ref = dP[(slice(None), *window)], cellprob[window], None
        kwargs["resize"] = None
    return np.ascontiguousarray(dP), np.ascontiguousarray(cellprob), kwargs, ref


def find_cases(data: Path):
    """Case folders (holding dynamics_0.npz) under ``data`` or ``data/{2d,3d}``, as relative names."""
    if not data.is_dir():
        return []
    found = [p for p in data.iterdir() if (p / "dynamics_0.npz").is_file()]
    found += [p for sub in ("2d", "3d") if (data / sub).is_dir() for p in (data / sub).iterdir()
              if (p / "dynamics_0.npz").is_file()]
    return sorted(str(p.relative_to(data)) for p in found)


def timed(fn, repeats: int, budget_s: float = float("inf")):
    """(result, [ms per call]) of up to ``repeats`` calls of ``fn`` (each returns host data, so each
    is synchronised), stopping early once ``budget_s`` seconds are spent (at least one call)."""
    times = []
    out = None
    start = time.perf_counter()
    for _ in range(repeats):
        if times and time.perf_counter() - start > budget_s:
            break
        tic = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - tic) * 1e3)
    return out, times


def warm_up() -> float:
    """Seconds to compile every kernel (2D and 3D, both hole-filling paths) on tiny inputs."""
    from cellflow_rt.gpu import dynamics as gpu_dynamics
    tic = time.perf_counter()
    dP, cellprob, kwargs, _ = synthetic_case(32)
    for fill in ("host", "device"):
        gpu_dynamics.resize_and_compute_masks(dP, cellprob, fill_holes=fill, **kwargs)
    for interp in (True, False):
        gpu_dynamics.resize_and_compute_masks(np.zeros((3, 4, 8, 8), np.float32), np.ones((4, 8, 8), np.float32),
                                              niter=2, cellprob_threshold=0.0, flow_threshold=0.4, interp=interp,
                                              do_3D=True, fill_holes="device")
    return time.perf_counter() - tic


def check_case(name, dP, cellprob, kwargs, ref, repeats: int) -> dict:
    from numba import cuda

    from cellflow_rt import dynamics, metrics
    from cellflow_rt.gpu import dynamics as gpu_dynamics

    kwargs = dict(kwargs)
    kwargs.setdefault("do_3D", cellprob.ndim == 3)
    cpu_masks, cpu_ms = timed(lambda: dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), repeats,
                              budget_s=3.0)
    gpu_masks, gpu_host_ms = timed(lambda: gpu_dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), repeats)
    dP_dev, cellprob_dev = cuda.to_device(dP), cuda.to_device(cellprob)
    cuda.synchronize()
    dev_masks, gpu_dev_ms = timed(lambda: gpu_dynamics.resize_and_compute_masks(dP_dev, cellprob_dev, **kwargs),
                                  repeats)
    fill_masks, gpu_fill_ms = timed(lambda: gpu_dynamics.resize_and_compute_masks(
        dP_dev, cellprob_dev, fill_holes="host", **kwargs), repeats)
    noqc = dict(kwargs, flow_threshold=0.0)
    _, gpu_noqc_ms = timed(lambda: gpu_dynamics.resize_and_compute_masks(dP_dev, cellprob_dev, **noqc), repeats)
    ap, _, _, _ = metrics.average_precision(cpu_masks, gpu_masks, threshold=[0.5, 0.9])
    identical = all(m.dtype == cpu_masks.dtype and np.array_equal(m, cpu_masks)
                    for m in (gpu_masks, dev_masks, fill_masks))
    return {
        "case": name, "shape": list(cellprob.shape), "kwargs": {k: v for k, v in kwargs.items()},
        "masks_cpu": int(len(np.unique(cpu_masks)) - 1), "masks_gpu": int(len(np.unique(gpu_masks)) - 1),
        "identical": bool(identical), "ap50": float(ap[0]), "ap90": float(ap[1]),
        "cpu_equals_reference": None if ref is None else bool(np.array_equal(cpu_masks, ref)),
        "ms": {"cpu": cpu_ms, "gpu_host": gpu_host_ms, "gpu_dev": gpu_dev_ms, "gpu_dev_hostfill": gpu_fill_ms,
               "gpu_noqc": gpu_noqc_ms},
    }


def table(rows) -> str:
    cols = ["cpu", "gpu_host", "gpu_dev", "gpu_dev_hostfill", "gpu_noqc"]
    head = (f"{'case':36s} {'shape':>14s} {'masks cpu/gpu':>13s} {'same':>5s} {'AP50':>6s} {'AP90':>6s} "
            + " ".join(f"{c:>16s}" for c in cols) + f" {'speed-up':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        med = {c: statistics.median(r["ms"][c]) for c in cols}
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['case']:36s} {shape:>14s} {r['masks_cpu']:>6d}/{r['masks_gpu']:<6d} "
                     f"{'yes' if r['identical'] else 'NO':>5s} {r['ap50']:6.4f} {r['ap90']:6.4f} "
                     + " ".join(f"{med[c]:16.2f}" for c in cols) + f" {med['cpu'] / med['gpu_dev']:7.1f}x")
    lines.append("times: ms, median of warm calls; speed-up = cpu / gpu_dev")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "gpu" / "data",
                        help="folder of recorded calls (see --prepare)")
    parser.add_argument("--prepare", type=Path, default=None, metavar="REFERENCE",
                        help="copy the recorded calls from REFERENCE (../shared/reference) into --data and exit")
    parser.add_argument("--cases", default=None, help="comma-separated cases in --data (default: all)")
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic case (0: none)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--crop", type=int, default=0, help="crop recorded cases to this side (simulator runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "gpu" / "results")
    args = parser.parse_args(argv)

    if args.prepare is not None:
        cases = [k for k in PREPARED if args.cases is None or k.split("/")[1] in args.cases.split(",")]
        prepare(args.prepare, args.data, cases)
        return 0

    from cellflow_rt.gpu import cuda_status
    from cellflow_rt.gpu._device import describe
    reason = cuda_status()
    if reason:
        print(f"no CUDA device: {reason}", file=sys.stderr)
        return 1
    names = find_cases(args.data)
    if args.cases:
        names = [n for n in names if Path(n).name in args.cases.split(",")]
    from cellflow_rt.gpu._device import SIMULATOR
    compile_s = None if SIMULATOR else warm_up()  # nothing is compiled in the simulator
    if compile_s is not None:
        print(f"kernels compiled in {compile_s:.1f} s", file=sys.stderr)
    rows = []
    for name in names:
        rows.append(check_case(name, *load_case(args.data, name, args.crop), repeats=args.repeats))
        print(f"{name}: done", file=sys.stderr)
    if args.size:
        rows.append(check_case(f"synthetic_{args.size}", *synthetic_case(args.size), repeats=args.repeats))
    print(table(rows))
    device = describe()
    big = [r for r in rows if r["case"] == f"synthetic_{args.size}"]
    if big and args.size == 2048:
        ms = statistics.median(big[0]["ms"]["gpu_dev"])
        print(f"target: GPU dynamics + flow check at 2048^2 <= {TARGET_MS:.0f} ms: {ms:.1f} ms "
              f"({'met' if ms <= TARGET_MS else 'NOT met'}) on {device.get('device')}")
    report = {"script": "bench/gpu/dynamics_check.py", "date": datetime.now(timezone.utc).isoformat(),
              "device": device, "python": platform.python_version(), "numpy": np.__version__,
              "repeats": args.repeats, "compile_s": compile_s, "cases": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "".join(ch if ch.isalnum() else "-" for ch in str(device.get("device", "gpu")))
    path = args.out / f"dynamics_check_{tag}_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"raw results: {path}")
    return 0 if all(r["identical"] for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
