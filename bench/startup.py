"""Cold-process start-up: ``cellflow-rt run`` against ``python -m cellpose`` on one 512^2 image.

Usage (from the repository root, in the project's venv)::

    python bench/startup.py [--reference-python /tmp/cpref/bin/python] [--repeats 5] [--json out.json]

Both command lines segment the same 512 x 512 synthetic nuclei image (``shared/tools/synth.py``,
diameter 17) with the nuclei demo weights at ``--diameter 17`` and write ``_seg.npy`` and
``_cp_masks.tif``, on the CPU, each in a fresh process::

    cellflow-rt run --image_path IMG --pretrained_model nuclei_demo --diameter 17 --save_tif
    python -m cellpose --image_path IMG --pretrained_model .../cellflow_nuclei_demo --diameter 17 --save_tif

Each is run once untimed first (warms the numba cache, Python's bytecode cache and the OS page
cache for both sides), then ``--repeats`` times, alternating. Wall time and peak RSS come from
``/usr/bin/time -v`` when present, otherwise from a wrapper process reading
``getrusage(RUSAGE_CHILDREN)``. The two mask files are compared at the end (AP@0.5, identical?).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, SHARED, Case, image_path, thread_env, write_json  # noqa: E402

DEFAULT_REFERENCE_PYTHON = "/tmp/cpref/bin/python"
CASE = Case("startup_512", "nuclei", (512, 512), "nuclei_demo", "cellflow_nuclei_demo", 17.0,
            dict(channels=[0, 0], diameter=17.0))
TIME = "/usr/bin/time"

# Fallback measurement: run the command as our child, report its wall time and peak RSS (KiB).
_WRAPPER = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "rc = subprocess.call(sys.argv[1:]); w = time.perf_counter() - t; "
            "print(f'WRAP {rc} {w} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
            "sys.exit(rc)")


def cellflow_command(image: Path) -> list:
    exe = Path(sys.executable).parent / "cellflow-rt"
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "cellflow_rt.cli"]
    return head + ["run", "--image_path", str(image), "--pretrained_model", CASE.model, "--diameter", "17",
                   "--save_tif"]


def reference_command(python: str, image: Path, weights: Path) -> list:
    return [python, "-m", "cellpose", "--image_path", str(image), "--pretrained_model",
            str(weights / CASE.weights), "--diameter", "17", "--save_tif"]


def measure(cmd: list, env: dict) -> dict:
    """Wall time (s) and peak RSS (MiB) of one run of ``cmd`` in a fresh process."""
    tic = time.perf_counter()
    if Path(TIME).is_file():
        proc = subprocess.run([TIME, "-v"] + cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - tic
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss_kib = int(m.group(1)) if m else float("nan")
        how = "/usr/bin/time -v"
    else:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER] + cmd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - tic
        m = re.search(r"WRAP (-?\d+) (\S+) (\d+)", proc.stderr)
        rss_kib = int(m.group(3)) if m else float("nan")
        wall = float(m.group(2)) if m else wall
        how = "getrusage(RUSAGE_CHILDREN)"
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mib": rss_kib / 1024.0, "how": how}


def fresh_copy(src: Path, parent: Path, tag: str) -> Path:
    """The image alone in a new folder (both tools write their outputs next to the image)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=parent))
    dst = folder / "startup_512.tif"
    shutil.copyfile(src, dst)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-python", default=None,
                   help=f"interpreter with cellpose==3.1.1.1 (default {DEFAULT_REFERENCE_PYTHON} if present)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="limit both sides' threads (default: no limit)")
    p.add_argument("--weights", type=Path, default=SHARED / "weights")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    refpy = args.reference_python or (DEFAULT_REFERENCE_PYTHON if Path(DEFAULT_REFERENCE_PYTHON).is_file() else None)

    src = image_path(CASE, args.data_dir)
    env = thread_env(args.threads)
    sides = {"cellflow-rt": lambda img: cellflow_command(img)}
    if refpy:
        sides["cellpose"] = lambda img: reference_command(refpy, img, args.weights)
    scratch = Path(tempfile.mkdtemp(prefix="cellflow-startup-"))
    results = {name: [] for name in sides}
    outputs = {}
    try:
        for name, make in sides.items():  # untimed warm-up
            img = fresh_copy(src, scratch, f"warm-{name}")
            measure(make(img), env)
            outputs[name] = img.parent / "startup_512_cp_masks.tif"
        for i in range(args.repeats):
            for name, make in (sides.items() if i % 2 == 0 else reversed(list(sides.items()))):
                img = fresh_copy(src, scratch, f"{name}-{i}")
                results[name].append(measure(make(img), env))
                print(f"[{i + 1}/{args.repeats}] {name}: {results[name][-1]['wall_s']:.2f} s, "
                      f"{results[name][-1]['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        accuracy = compare(outputs) if len(outputs) == 2 else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = {name: {"wall_s_median": statistics.median(r["wall_s"] for r in runs),
                      "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs),
                      "runs": runs, "command": " ".join(sides[name](Path("IMG")))}
               for name, runs in results.items()}
    print(f"cold-process start-up, one 512x512 nuclei image, median of {args.repeats} run(s) "
          f"({results['cellflow-rt'][0]['how']}); load average {os.getloadavg()[0]:.2f}")
    print(f"{'':14s} {'wall [s]':>9s} {'peak RSS [MiB]':>15s}")
    for name, s in summary.items():
        print(f"{name:14s} {s['wall_s_median']:9.2f} {s['peak_rss_mib_median']:15.0f}")
    if "cellpose" in summary:
        a, b = summary["cellflow-rt"], summary["cellpose"]
        print(f"{'cellflow/ref':14s} {a['wall_s_median'] / b['wall_s_median']:9.2f} "
              f"{a['peak_rss_mib_median'] / b['peak_rss_mib_median']:15.2f}   (target <= 0.33 for both)")
    if accuracy:
        print(f"masks: AP@0.5 {accuracy['ap_0.5']:.4f}, {'identical' if accuracy['identical'] else 'not identical'}")
    if args.json:
        write_json(args.json, {"summary": summary, "accuracy": accuracy, "loadavg_end": os.getloadavg(),
                               "cpu_count": os.cpu_count(), "threads": args.threads})
    return 0


def compare(outputs: dict) -> dict:
    import tifffile
    from cellflow_rt.metrics import matching_summary

    ours, ref = tifffile.imread(outputs["cellflow-rt"]), tifffile.imread(outputs["cellpose"])
    s = matching_summary(ref, ours, thresholds=(0.5,))
    return {"ap_0.5": s["ap_0.5"], "identical": bool(np.array_equal(ref, ours))}


if __name__ == "__main__":
    sys.exit(main())
