"""The napari panel's latency: Run to Labels layer, and a threshold change, against ``eval``.

Usage (needs the napari extra; under ``xvfb-run`` when there is no display, which the script does
itself when ``xvfb-run`` is installed)::

    python bench/bench_napari.py                    # nuclei_1024 (bench case), 3 repeats, 2 threads
    python bench/bench_napari.py --case cyto_1024 --repeats 5 --no-reference

One process holds a napari viewer with the panel docked and the image loaded, and, alternately,
times:

- **Run -> Labels**: from clicking Run to the Labels layer holding the masks (the worker has
  returned and the layer is updated). The panel's stored network output is cleared before each
  click, so every Run runs the network; the model stays open, as it does between a user's runs.
- **eval**: ``cellflow_rt.models.CellposeModel.eval`` on the same image and settings, same model
  object kept open (the panel's target: Run -> Labels within 10% of this).
- **threshold change**: from setting a new flow threshold (then a new cell probability threshold)
  to the Labels layer updated: the dynamics only, from the stored network output (target < 0.5 s).

With the reference interpreter (``/tmp/cpref/bin/python``, see bench/README.md), Cellpose 3.1.1.1's
``CellposeModel.eval`` on the same image is timed too, in its own process (``reference_worker.py``:
its end-to-end time minus reading and writing). The masks of the panel, of ``eval`` and of Cellpose
are compared. Every figure is the median of the repeats after one warm-up run of each, in wall
seconds and in CPU seconds of this process (all threads): on a shared machine the CPU figures are the
steadier ones. A threshold change also reports the dynamics' own time (``finish``), the rest being the
panel's (image digest, worker start, layer update).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import CASES, DATA_DIR, SHARED, image_path, thread_env  # noqa: E402

DEFAULT_REFERENCE_PYTHON = "/tmp/cpref/bin/python"
FLOW_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.3, 0.45)
CELLPROB_THRESHOLDS = (-0.5, 0.5, -1.0, 1.0, 0.25, -0.25)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="nuclei_1024", choices=[c for c in CASES if not c.startswith("vol")])
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default 3)")
    p.add_argument("--threads", type=int, default=2, help="network/numba threads, both sides (default 2)")
    p.add_argument("--reference-python", default=DEFAULT_REFERENCE_PYTHON)
    p.add_argument("--no-reference", action="store_true", help="skip Cellpose 3.1.1.1")
    return p.parse_args(argv)


def _wait(widget, app, timeout=900.0):
    deadline = time.perf_counter() + timeout
    while widget.busy:
        if time.perf_counter() > deadline:
            raise TimeoutError("the panel did not finish")
        app.processEvents()
        time.sleep(0.001)


def bench_panel(args, case, image):
    """Panel and eval timings in this process (alternating), and the masks of both."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from cellflow_rt.models import CellposeModel
    from cellflow_rt.napari._widget import SegmentationWidget

    kw = dict(case.eval)
    viewer = napari.Viewer(show=False)
    layer = viewer.add_image(image, name=case.name)
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_image_layer(layer)
    widget.set_model(case.model)
    if kw.get("channel_axis") is not None:
        widget.channel_axis_combo.setCurrentIndex(widget.channel_axis_combo.findData(kw["channel_axis"]))
    widget.chan_spin.setValue(kw["channels"][0])
    widget.chan2_spin.setValue(kw["channels"][1])
    widget.diameter_spin.setValue(kw["diameter"])
    app = QApplication.instance()
    model = CellposeModel(pretrained_model=case.model)

    times = {"run": [], "eval": [], "cpu:run": [], "cpu:eval": []}

    def timed(key, action):
        tic, cpu = time.perf_counter(), time.process_time()
        result = action()
        times[key].append(time.perf_counter() - tic)
        times[f"cpu:{key}"].append(time.process_time() - cpu)
        return result

    for i in range(args.repeats + 1):
        widget.session.clear()  # every Run runs the network
        timed("run", lambda: (widget.run_button.click(), _wait(widget, app)))
        masks, _, _ = timed("eval", lambda: model.eval(image, **kw))
        print(f"  repeat {i}: Run -> Labels {times['run'][-1]:.2f} s, eval {times['eval'][-1]:.2f} s "
              f"(CPU {times['cpu:run'][-1]:.2f} / {times['cpu:eval'][-1]:.2f} s)", file=sys.stderr, flush=True)
    labels = widget.labels_layer
    same = bool(np.array_equal(labels.data, masks))

    for spin, values, key in ((widget.flow_spin, FLOW_THRESHOLDS, "flow_threshold"),
                              (widget.cellprob_spin, CELLPROB_THRESHOLDS, "cellprob_threshold")):
        times.update({key: [], f"cpu:{key}": [], f"dynamics:{key}": []})
        for value in values[: args.repeats + 1]:
            timed(key, lambda: (spin.setValue(value), _wait(widget, app)))
            info = labels.metadata["cellflow_rt"]
            assert not info["network_ran"]
            times[f"dynamics:{key}"].append(info["timings"]["dynamics"])
    viewer.close()
    # the first of each is the warm-up
    return {**{k: v[1:] for k, v in times.items()}, "panel_equals_eval": same, "masks": masks}


def bench_reference(args, case, image_file: Path):
    """Cellpose 3.1.1.1's eval time (end to end minus read and outputs) via reference_worker.py."""
    import bench as cellflow_bench  # bench/bench.py: run_worker

    ns = argparse.Namespace(weights=str(SHARED / "weights"), threads=args.threads,
                            reference_python=args.reference_python, precision="fp32")
    workdir = Path(tempfile.mkdtemp(prefix="cellflow-bench-napari-"))
    try:
        result = cellflow_bench.run_worker("reference", case, image_file, workdir, ns, args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    runs = result["runs"][1:]
    return {"eval": [r["total"] - r.get("read", 0.0) - r.get("outputs", 0.0) for r in runs],
            "masks": result["masks"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            print("no display and no xvfb-run: install xvfb (Debian) or run with a display", file=sys.stderr)
            return 2
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, __file__, *sys.argv[1:]]
        return subprocess.call(cmd)
    os.environ.update(thread_env(args.threads))
    case = CASES[args.case]
    image_file = image_path(case, DATA_DIR)
    import numpy as np
    import tifffile

    image = tifffile.imread(image_file)
    print(f"{case.name}: {case.size_label}, {case.model}, {case.eval}; {args.repeats} repeats after a warm-up, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    ours = bench_panel(args, case, image)
    med = {k: statistics.median(v) for k, v in ours.items() if isinstance(v, list)}
    rows = [("Run -> Labels (panel)", med["run"], f"CPU {med['cpu:run']:.2f} s"),
            ("CellposeModel.eval (cellflow-rt)", med["eval"],
             f"CPU {med['cpu:eval']:.2f} s; panel / eval = {med['run'] / med['eval']:.3f} wall, "
             f"{med['cpu:run'] / med['cpu:eval']:.3f} CPU")]
    reference_python = None if args.no_reference else args.reference_python
    if reference_python and Path(reference_python).is_file():
        ref = bench_reference(argparse.Namespace(**{**vars(args), "reference_python": reference_python}),
                              case, image_file)
        ref_eval = statistics.median(ref["eval"])
        rows.append(("CellposeModel.eval (Cellpose 3.1.1.1)", ref_eval,
                     f"panel / Cellpose eval = {med['run'] / ref_eval:.3f}; masks identical: "
                     f"{bool(np.array_equal(ref['masks'], ours['masks']))}"))
    for key in ("flow_threshold", "cellprob_threshold"):
        rows.append((f"{key} change -> Labels", med[key],
                     f"max {max(ours[key]):.3f} s; CPU {med['cpu:' + key]:.3f} s; of which dynamics "
                     f"{med['dynamics:' + key]:.3f} s"))
    print("\n| what | median [s] | note |\n|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.3f} | {note} |")
    print(f"\npanel masks == eval masks: {ours['panel_equals_eval']}; runs: "
          + ", ".join(f"{k} {[round(v, 2) for v in ours[k]]}" for k in ("run", "eval", "cpu:run", "cpu:eval"))
          + f"; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
