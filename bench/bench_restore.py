"""Image restoration + segmentation against Cellpose 3.1.1.1's CellposeDenoiseModel, on the CPU.

Usage (from the repository root, in the project's venv, which has the export extra)::

    python bench/bench_restore.py                       # 1024^2 noisy nuclei, 2 repeats
    python bench/bench_restore.py --size 512 --repeats 3 --threads 2

One synthetic noisy nuclei image (``shared/tools/synth.py`` nuclei, diameter 17, at a low photon
count as in ``shared/tools/make_reference_restore_norm.py``) is restored with the demo restoration net
(``shared/weights/cellflow_denoise_nuclei_demo``, exported once into the bench cache) and segmented
with the nuclei demo at diameter 17 (``channels=[0, 0]``), by both sides, each in its own fresh
process: cellflow-rt's ``models.CellposeDenoiseModel`` and Cellpose's ``CellposeDenoiseModel``
(assembled as the reference script does: 3.1.1.1 loads only built-in restoration names). Each
worker runs the case once (first call) and then ``--repeats`` times; the table shows the medians
of the repeats, wall and CPU seconds (CPU time: all threads of the process, steadier than wall time
on a shared machine), for the restoration alone and end to end (restore + segment, no file
output). The restored images and masks of the two sides are compared.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, SHARED, Case, generate_image, thread_env, write_json  # noqa: E402

DEFAULT_REFERENCE_PYTHON = "/tmp/cpref/bin/python"
RESTORE_CHECKPOINT = SHARED / "weights" / "cellflow_denoise_nuclei_demo"
SEG_CHECKPOINT = SHARED / "weights" / "cellflow_nuclei_demo"
EVAL = dict(channels=[0, 0], diameter=17.0)


def noisy_image(size: int, python: str, data_dir: Path = DATA_DIR, seed: int = 6) -> Path:
    """A cached size x size noisy nuclei image (uint16): synth nuclei, Poisson + read noise. Made by
    ``python`` (the reference environment has synth.py's scikit-image)."""
    path = Path(data_dir) / f"noisy_nuclei_{size}_s{seed}.tif"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([python, __file__, "--make-image", str(path), "--size", str(size), "--seed", str(seed)],
                       check=True)
    return path


def make_noisy_image(path: Path, size: int, seed: int) -> None:
    import tifffile

    clean = generate_image(Case(f"nuclei_{size}", "nuclei", (size, size), "nuclei_demo", "cellflow_nuclei_demo", 17.0),
                           seed).astype(np.float64)
    rng = np.random.default_rng(seed)
    clean /= np.percentile(clean, 99)
    noisy = rng.poisson(np.clip(clean, 0, None) * 200) + rng.normal(100, 20, clean.shape)
    tifffile.imwrite(path, np.clip(noisy, 0, 65535).astype(np.uint16))


def exported_restoration(data_dir: Path = DATA_DIR) -> Path:
    """The demo restoration net exported to ONNX (once, into the bench cache)."""
    folder = Path(data_dir) / "models"
    onnx_path = folder / "denoise_nuclei_demo.onnx"
    if not onnx_path.is_file():
        from cellflow_rt.export import export_checkpoint
        export_checkpoint(RESTORE_CHECKPOINT, name="denoise_nuclei_demo", out_dir=folder, restore_type="denoise",
                          echo=None)
    return onnx_path


# ---------------------------------------------------------------------------------------------
# workers: one process per side; each writes the restored image, the masks and its timings
def _peak_rss_mib() -> float:
    """This process's peak RSS since it started (VmHWM: unlike getrusage's ru_maxrss it does not carry
    the parent's peak across fork + exec, and the driver may have loaded torch to export)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _timed(fn):
    tic, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - tic, time.process_time() - cpu


def ours_worker(spec: dict) -> dict:
    from cellflow_rt import models

    model = models.CellposeDenoiseModel(pretrained_model="nuclei_demo", restore_type=spec["restore_model"],
                                        num_threads=spec["threads"] or None)
    return _run(spec, lambda img: model.eval(img, **EVAL), lambda img: model.dn.eval(img, **EVAL))


def reference_worker(spec: dict) -> dict:
    import torch
    from cellpose import denoise, models

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = object.__new__(denoise.CellposeDenoiseModel)
    model.dn = denoise.DenoiseModel(gpu=False, pretrained_model=str(RESTORE_CHECKPOINT), nchan=1, diam_mean=17.0)
    model.cp = models.CellposeModel(gpu=False, pretrained_model=str(SEG_CHECKPOINT))
    return _run(spec, lambda img: model.eval(img, **EVAL), lambda img: model.dn.eval(img, **EVAL))


def _run(spec: dict, restore_and_segment, restore_only) -> dict:
    import tifffile

    img = tifffile.imread(spec["image"])
    runs = []
    for _ in range(1 + spec["repeats"]):
        _, restore_wall, restore_cpu = _timed(lambda: restore_only(img))
        (masks, _, _, restored), total_wall, total_cpu = _timed(lambda: restore_and_segment(img))
        runs.append(dict(restore=restore_wall, cpu_restore=restore_cpu, total=total_wall, cpu_total=total_cpu))
    np.save(spec["masks_out"], np.asarray(masks))
    np.save(spec["restored_out"], np.asarray(restored, np.float32))
    return {"runs": runs, "n_masks": int(masks.max()), "peak_rss_mib": _peak_rss_mib()}


# ---------------------------------------------------------------------------------------------
def _spawn(python: str, side: str, spec: dict, tmp: Path, threads: int) -> dict:
    spec_path = tmp / f"{side}.json"
    spec = dict(spec, side=side, result=str(tmp / f"{side}_result.json"), masks_out=str(tmp / f"{side}_masks.npy"),
                restored_out=str(tmp / f"{side}_restored.npy"))
    spec_path.write_text(json.dumps(spec))
    subprocess.run([python, __file__, "--worker", str(spec_path)], check=True, env=thread_env(threads))
    result = json.loads(Path(spec["result"]).read_text())
    result["masks"] = np.load(spec["masks_out"])
    result["restored"] = np.load(spec["restored_out"])
    return result


def _median(result: dict, key: str) -> float:
    return statistics.median(run[key] for run in result["runs"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="threads per side (0 = all cores)")
    parser.add_argument("--reference-python", default=DEFAULT_REFERENCE_PYTHON)
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--seed", type=int, default=6, help="of the synthetic image")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--make-image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_image:
        make_noisy_image(Path(args.make_image), args.size, args.seed)
        return
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        worker = ours_worker if spec["side"] == "cellflow-rt" else reference_worker
        write_json(spec["result"], worker(spec))
        return

    from cellflow_rt.metrics import matching_summary

    image = noisy_image(args.size, args.reference_python, seed=args.seed)
    spec = dict(image=str(image), restore_model=str(exported_restoration()), repeats=args.repeats,
                threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _spawn(sys.executable, "cellflow-rt", spec, Path(tmp), args.threads)
        ref = _spawn(args.reference_python, "cellpose", spec, Path(tmp), args.threads)
    span = float(np.ptp(ref["restored"]))
    restore_error = float(np.abs(ours["restored"] - ref["restored"]).max()) / span
    s = matching_summary(ref["masks"], ours["masks"])
    load = os.getloadavg()
    print(f"\nrestore (denoise demo) + segment (nuclei demo), {args.size}^2 noisy nuclei, diameter 17, "
          f"{args.threads or os.cpu_count()} threads per side, median of {args.repeats} (after a first call); "
          f"load average {load[0]:.1f}")
    print(f"{'stage':28s} {'Cellpose [s]':>13s} {'cellflow-rt [s]':>16s} {'speed-up':>9s}")
    rows = {}
    for key, label in (("restore", "restoration, wall"), ("cpu_restore", "restoration, CPU"),
                       ("total", "restore + segment, wall"), ("cpu_total", "restore + segment, CPU")):
        theirs, mine = _median(ref, key), _median(ours, key)
        rows[key] = dict(cellpose=theirs, cellflow_rt=mine, speedup=theirs / mine)
        print(f"{label:28s} {theirs:13.2f} {mine:16.2f} {theirs / mine:8.1f}x")
    print(f"peak RSS [MiB]: Cellpose {ref['peak_rss_mib']:.0f}, cellflow-rt {ours['peak_rss_mib']:.0f}")
    print(f"restored image: max abs difference {restore_error:.2g} of its range; masks "
          f"{s['n_true']} / {s['n_pred']}, AP@0.5/0.75/0.9 {s['ap_0.5']:.4f} / {s['ap_0.75']:.4f} / {s['ap_0.9']:.4f}, "
          f"identical: {bool(np.array_equal(ref['masks'], ours['masks']))}")
    if args.json:
        write_json(args.json, dict(size=args.size, repeats=args.repeats, threads=args.threads, load_average=load,
                                   stages=rows, restore_error=restore_error, ap=[s["ap_0.5"], s["ap_0.75"], s["ap_0.9"]],
                                   peak_rss_mib=dict(cellpose=ref["peak_rss_mib"], cellflow_rt=ours["peak_rss_mib"])))


if __name__ == "__main__":
    main()
