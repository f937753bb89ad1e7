"""Time cellflow_rt's dynamics against Cellpose 3.1.1.1's CPU implementation, stage by stage.

Usage (from the repository root)::

    python bench/bench_dynamics.py [--reference-python /tmp/cpref/bin/python] [--repeats 5] [case ...]

Inputs are recorded ``resize_and_compute_masks`` calls (``../shared/reference/<case>/dynamics_0.npz``),
by default those of the 1024 x 1024 reference cases; 3D cases work too (``3d/nuclei_vol_do3D``). Our stages run in this interpreter; the
reference's run in a subprocess of ``--reference-python`` (an environment with cellpose==3.1.1.1 and
torch, the one ``shared/tools/make_reference.py`` describes). Stages:

- ``euler``: foreground selection and Euler integration (reference ``follow_flows``);
- ``clusters``: seeds, growth, labels, big masks, renumbering (``get_masks_torch``);
- ``flow_qc``: heat-diffusion flows and flow errors (``remove_bad_flow_masks``; none in 3D);
- ``fill``: resize back and ``fill_holes_and_remove_small_masks``.

``total_call`` is one whole ``resize_and_compute_masks`` call. Each is timed ``--repeats`` times
after a warm-up call (numba compilation, torch init) and the minima are reported, wall clock and
process CPU time (all threads); CPU time is the steadier number on a loaded machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
DEFAULT_CASES = ["2d/nuclei_1024_diam25", "2d/dsb_01_real_1024_invert"]
STAGES = ["euler", "clusters", "flow_qc", "fill"]

# Runs in the reference environment: same stages with Cellpose's own functions. Prints JSON.
_REFERENCE_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from cellpose import dynamics, utils, transforms
import cv2
path, kwargs, repeats, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads > 0:
    torch.set_num_threads(threads)
    import numba
    numba.set_num_threads(threads)
z = np.load(path)
dP, cellprob = z["dP"], z["cellprob"]
dev = torch.device("cpu")

class Clock:
    def __init__(self): self.t = {}; self.start()
    def start(self): self.w, self.c = time.perf_counter(), time.process_time()
    def lap(self, name):
        self.t[name] = (time.perf_counter() - self.w, time.process_time() - self.c); self.start()

def stages():
    clock = Clock()
    fg = cellprob > kwargs["cellprob_threshold"]
    inds = np.nonzero(fg)
    p = dynamics.follow_flows(dP * fg / 5.0, inds=inds, niter=kwargs["niter"], interp=kwargs["interp"], device=dev)
    clock.lap("euler")
    p = p.int() if torch.is_tensor(p) else torch.from_numpy(p).to(dev, dtype=torch.int)  # 3D: a tensor
    masks = dynamics.get_masks_torch(p, inds, dP.shape[1:], max_size_fraction=kwargs["max_size_fraction"])
    clock.lap("clusters")
    thr = kwargs["flow_threshold"]
    if masks.max() > 0 and thr is not None and thr > 0 and not kwargs.get("do_3D"):
        masks = dynamics.remove_bad_flow_masks(masks, dP, threshold=thr, device=dev)
    if masks.max() < 2**16:
        masks = masks.astype("uint16")
    clock.lap("flow_qc")
    assert kwargs["resize"] is None or len(kwargs["resize"]) == 2, "3D resize not timed"
    if kwargs["resize"] is not None:
        masks = transforms.resize_image(masks, kwargs["resize"][0], kwargs["resize"][1], no_channels=True,
                                        interpolation=cv2.INTER_NEAREST)
    masks = utils.fill_holes_and_remove_small_masks(masks, min_size=kwargs["min_size"])
    clock.lap("fill")
    ref_masks = dynamics.resize_and_compute_masks(dP, cellprob, device=dev, **kwargs)
    clock.lap("total_call")
    return clock.t, masks, ref_masks

stages()
best = None
for _ in range(repeats):
    t, masks, ref_masks = stages()
    best = t if best is None else {k: [min(a, b) for a, b in zip(best[k], t[k])] for k in t}
assert np.array_equal(masks, z["masks"]) and np.array_equal(ref_masks, z["masks"])
best["threads"] = torch.get_num_threads()
print(json.dumps(best))
"""


class _Clock:
    """Wall-clock and process CPU time (all threads) of consecutive laps."""

    def __init__(self):
        self.laps = {}
        self._start()

    def _start(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name):
        self.laps[name] = (time.perf_counter() - self.wall, time.process_time() - self.cpu)
        self._start()


def _our_stages(dP, cellprob, kwargs):
    from cellflow_rt import dynamics
    from cellflow_rt.dynamics import _check_niter

    clock = _Clock()
    dP32 = np.ascontiguousarray(dP, dtype=np.float32)
    fg = cellprob > kwargs["cellprob_threshold"]
    pts = np.flatnonzero(fg)
    with dynamics._threads_for(pts.size):  # as compute_masks: one thread for small problems
        ends = dynamics._follow_flows(dP32, fg, pts, _check_niter(kwargs["niter"]), kwargs["interp"])
        clock.lap("euler")
        masks = dynamics._get_masks(ends, pts, cellprob.shape, kwargs["max_size_fraction"])
        clock.lap("clusters")
        thr = kwargs["flow_threshold"]
        if masks.max() > 0 and thr is not None and thr > 0 and not kwargs.get("do_3D"):
            masks = dynamics._remove_bad_flow_masks(masks, dP32, thr)
        masks = masks.astype(dynamics._label_dtype(int(masks.max())))
        clock.lap("flow_qc")
    if kwargs["resize"] is not None:
        masks = dynamics._resize_labels(masks, kwargs["resize"])
    masks = dynamics.fill_holes_and_remove_small_masks(masks, min_size=kwargs["min_size"])
    clock.lap("fill")
    out = dynamics.resize_and_compute_masks(dP, cellprob, **kwargs)
    clock.lap("total_call")
    return clock.laps, masks, out


def time_ours(path: Path, kwargs: dict, repeats: int) -> dict:
    z = np.load(path)
    dP, cellprob = z["dP"], z["cellprob"]
    _our_stages(dP, cellprob, kwargs)  # compile / load the numba cache
    best = None
    for _ in range(repeats):
        t, masks, out = _our_stages(dP, cellprob, kwargs)
        best = t if best is None else {k: [min(a, b) for a, b in zip(best[k], t[k])] for k in t}
    best["exact"] = bool(np.array_equal(out, z["masks"]) and np.array_equal(masks, z["masks"]))
    import numba
    best["threads"] = numba.get_num_threads()
    return best


def dynamics_min_px() -> int:
    from cellflow_rt import dynamics
    return dynamics._PARALLEL_MIN_PIXELS


def time_reference(python: str, path: Path, kwargs: dict, repeats: int, threads: int) -> dict | None:
    if not Path(python).exists():
        return None
    res = subprocess.run([python, "-c", _REFERENCE_SCRIPT, str(path), json.dumps(kwargs), str(repeats), str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", default=DEFAULT_CASES)
    parser.add_argument("--reference-python", default="/tmp/cpref/bin/python")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (numba and torch); 0 = their defaults (all cores)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import numba
        numba.set_num_threads(args.threads)

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (timings are minima over {args.repeats} runs)")
    for case in args.cases:
        path = REFERENCE / case / "dynamics_0.npz"
        kwargs = json.loads((REFERENCE / case / "dynamics_0.json").read_text())
        z = np.load(path)
        n_fg = int((z["cellprob"] > kwargs["cellprob_threshold"]).sum())
        ours = time_ours(path, kwargs, args.repeats)
        ref = time_reference(args.reference_python, path, kwargs, args.repeats, args.threads)
        print(f"\n{case}: {z['cellprob'].shape}, {n_fg} foreground px, niter {kwargs['niter']:.3f}, "
              f"{int(z['masks'].max())} masks, masks identical to the reference: {ours['exact']}")
        print(f"threads: ours {ours['threads']} (1 below {dynamics_min_px()} foreground px)"
              + (f", reference (torch) {ref['threads']}" if ref else ""))
        print(f"{'':<12}{'wall clock (s)':^36}{'CPU time, all threads (s)':^36}")
        print(f"{'stage':<12}" + f"{'ours':>10}{'reference':>14}{'speed-up':>12}" * 2)
        rows = [(stage, ours[stage], ref[stage] if ref else (np.nan, np.nan)) for stage in STAGES]
        core = ["euler", "clusters", "flow_qc"]
        rows.append(("dyn+QC", [sum(ours[s][i] for s in core) for i in (0, 1)],
                     [sum(ref[s][i] for s in core) if ref else np.nan for i in (0, 1)]))
        rows.append(("total_call", ours["total_call"], ref["total_call"] if ref else (np.nan, np.nan)))
        for name, o, r in rows:
            print(f"{name:<12}" + "".join(f"{o[i]:>10.4f}{r[i]:>14.4f}{r[i] / o[i]:>11.1f}x" for i in (0, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
