"""cellflow-rt against Cellpose 3.1.1.1 on the same images, weights and settings, stage by stage.

Usage (from the repository root, in the project's venv)::

    python bench/bench.py --reference-python /tmp/cpref/bin/python            # every case, 3 repeats
    python bench/bench.py --quick                                             # 512^2 only, ~1 minute
    python bench/bench.py --sizes 1024,2048 --models nuclei --repeats 5 --json out.json
    python bench/bench.py --cases vol_do3D,vol_stitch --no-reference

Each side of each case runs in its own fresh subprocess (this interpreter for cellflow-rt,
``--reference-python`` running ``bench/reference_worker.py`` for Cellpose), so that its peak RSS
is its own. A worker loads the model, runs the case once (the *first call*: numba cache loading,
ORT/torch warm-up) and then ``--repeats`` more times; the table shows the medians of the repeats.
Masks of the last run are compared (AP at IoU 0.5/0.75/0.9, and bit-for-bit).

Numba compilation is measured separately: a fresh process with an empty temporary
``NUMBA_CACHE_DIR`` (compiles and writes the cache), then another fresh process on that cache
(loads it). See bench/README.md for the columns.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (CASES, DATA_DIR, SHARED, STAGES, Case, StageClock, case_from_dict,  # noqa: E402
                     case_to_dict, image_path, peak_rss_mib, thread_env, write_json)

HERE = Path(__file__).resolve().parent
DEFAULT_REFERENCE_PYTHON = "/tmp/cpref/bin/python"
QUICK_CASES = ["nuclei_512", "cyto_512"]
#: derived row: what issue 6's "dynamics + flow QC" target compares
DYN_QC = ("dyn_qc", "Euler + clustering + flow QC")


# ---------------------------------------------------------------------------------------------
# the cellflow-rt worker (this file run with --worker SPEC.json)
def cellflow_worker(spec_path: str) -> None:
    """cellflow-rt side of one case; the mirror of reference_worker.py."""
    spec = json.loads(Path(spec_path).read_text())
    case = case_from_dict(spec["case"])
    tic = time.perf_counter()
    from cellflow_rt import dynamics, io, network, pipeline
    from cellflow_rt.batch import OutputOptions, write_outputs
    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.pipeline import segment
    from cellflow_rt.settings import EvalSettings
    import_seconds = time.perf_counter() - tic

    clock = StageClock()
    # segment() = finish(predict()), predict = prepare_image + network: wrapping the three gives
    # wall and CPU time per stage; Segmentation.timings (wall only) is the fallback.
    split = all(hasattr(pipeline, f) for f in ("prepare_image", "predict", "finish"))
    if split:
        clock.wrap(pipeline, "prepare_image", "preprocess")
        clock.wrap(pipeline, "predict", "_predict")
        clock.wrap(pipeline, "finish", "masks")
    clock.wrap(network.Network, "run", "forward")
    if spec.get("precision") == "bf16":
        from cellflow_rt import network_openvino
        clock.wrap(network_openvino.OpenVINONetwork, "run", "forward")
    clock.wrap(dynamics, "_follow_flows", "euler")
    clock.wrap(dynamics, "_get_masks", "clustering")
    clock.wrap(dynamics, "_remove_bad_flow_masks", "flow_qc")
    clock.wrap(dynamics, "fill_holes_and_remove_small_masks", "fill")
    clock.wrap(dynamics, "stitch3D", "stitch")

    threads = int(spec.get("threads") or 0)
    tic = time.perf_counter()
    model = LoadedModel.load(spec["model"], providers="cpu", num_threads=threads or None,
                             precision=spec.get("precision", "fp32"))
    load_seconds = time.perf_counter() - tic

    settings = EvalSettings(**case.eval)
    outdir = Path(spec["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    out_name = outdir / Path(spec["image"]).name
    options = OutputOptions(savedir=outdir, save_npy=True, save_tif=True)
    runs, masks = [], None
    for _ in range(1 + int(spec["repeats"])):
        clock.reset()
        with clock.time("total"):
            with clock.time("read"):
                img = io.imread(spec["image"])
            seg = segment(img, model, settings)
            with clock.time("outputs"):
                write_outputs(out_name, seg, settings, options)
        record = clock.record()
        if split:
            for prefix in ("", "cpu:"):
                record[f"{prefix}network"] = record.pop(f"{prefix}_predict") - record.get(f"{prefix}preprocess", 0.0)
        else:
            for ours, key in (("preprocess", "preprocess"), ("network", "network"), ("dynamics", "masks")):
                record[key] = seg.timings.get(ours, 0.0)
        runs.append(record)
        masks = seg.masks
    np.save(spec["masks_out"], np.asarray(masks))
    compiled, loaded = numba_cache_stats()
    import numba
    import onnxruntime
    import cellflow_rt
    write_json(spec["result"], {
        "side": "cellflow",
        "versions": {"cellflow_rt": cellflow_rt.__version__, "onnxruntime": onnxruntime.__version__,
                     "numba": numba.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "threads": threads or os.cpu_count(),
        "precision": model.net.precision,
        "network_backend": model.net.providers[0],
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR"),
        "numba_compiled": compiled,
        "numba_loaded": loaded,
        "import_s": import_seconds,
        "load_s": load_seconds,
        "runs": runs,
        "n_masks": int(len(np.unique(masks)) - 1),
        "peak_rss_mib": peak_rss_mib(),
    })


def numba_cache_stats():
    """(kernels compiled in this process, kernels loaded from the on-disk cache), by name.

    A kernel compiled although a warm cache was expected means its source changed (numba keys the
    cache on the file's timestamp) or the cache is not where numba looks.
    """
    from numba.core.dispatcher import Dispatcher

    compiled, loaded = [], []
    for name, module in list(sys.modules.items()):
        if not name.startswith("cellflow_rt"):
            continue
        for attr, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and obj.__module__ == name:
                stats = obj.stats
                if sum(stats.cache_misses.values()):
                    compiled.append(f"{name}.{attr}")
                if sum(stats.cache_hits.values()):
                    loaded.append(f"{name}.{attr}")
    return sorted(compiled), sorted(loaded)


# ---------------------------------------------------------------------------------------------
# orchestration
class WorkerFailed(RuntimeError):
    pass


def run_worker(side: str, case: Case, image: Path, workdir: Path, args, repeats: int,
               numba_cache: Optional[str] = None, tag: str = "") -> dict:
    """One side of one case in a fresh process; returns the worker's result dict (plus ``masks``)."""
    name = f"{case.name}_{side}{tag}"
    spec = {
        "case": case_to_dict(case), "image": str(image), "model": case.model,
        "weights": str(Path(args.weights) / case.weights), "repeats": repeats, "threads": args.threads,
        "precision": getattr(args, "precision", "fp32"),
        "outdir": str(workdir / f"{name}_out"), "masks_out": str(workdir / f"{name}_masks.npy"),
        "result": str(workdir / f"{name}.json"),
    }
    spec_path = workdir / f"{name}_spec.json"
    write_json(spec_path, spec)
    env = thread_env(args.threads)
    if numba_cache:
        env["NUMBA_CACHE_DIR"] = numba_cache
    if side == "cellflow":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    else:
        cmd = [args.reference_python, str(HERE / "reference_worker.py"), str(spec_path)]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        raise WorkerFailed(f"{side} worker for {case.name} failed (exit {proc.returncode}):\n"
                           + "\n".join(proc.stdout.splitlines()[-30:]))
    result = json.loads(Path(spec["result"]).read_text())
    result["wall_s"] = time.perf_counter() - tic
    result["masks"] = np.load(spec["masks_out"])
    shutil.rmtree(spec["outdir"], ignore_errors=True)
    return result


def summarise(result: dict) -> dict:
    """Median of each stage over the repeats (runs[1:]), and the first call's numbers."""
    runs = result["runs"]
    repeats = runs[1:] or runs
    keys = {k for r in runs for k in r}
    med = {k: statistics.median([r.get(k, 0.0) for r in repeats]) for k in keys}
    first = {k: runs[0].get(k, 0.0) for k in keys}
    for d, source in ((med, repeats), (first, [runs[0]])):
        for prefix in ("", "cpu:"):
            d[prefix + DYN_QC[0]] = statistics.median(
                [sum(r.get(prefix + k, 0.0) for k in ("euler", "clustering", "flow_qc")) for r in source])
    return {"median_s": med, "first_s": first, "n_repeats": len(repeats),
            **{k: result[k] for k in ("import_s", "load_s", "peak_rss_mib", "n_masks", "threads", "versions",
                                      "wall_s", "numba_compiled") if k in result}}


def compare_masks(reference: np.ndarray, ours: np.ndarray) -> dict:
    from cellflow_rt.metrics import matching_summary

    if reference.shape != ours.shape:
        return {"error": f"shapes differ: reference {reference.shape}, cellflow {ours.shape}"}
    s = matching_summary(reference, ours, thresholds=(0.5, 0.75, 0.9))
    return {"ap_0.5": s["ap_0.5"], "ap_0.75": s["ap_0.75"], "ap_0.9": s["ap_0.9"], "n_reference": s["n_true"],
            "n_cellflow": s["n_pred"], "identical": bool(np.array_equal(reference, ours))}


def repeats_for(case: Case, args) -> int:
    """``--repeats``, or ``--repeats-large`` for 2048^2 images and 3D stacks (minutes per run)."""
    large = case.kind == "volume" or case.pixels >= 2048 * 2048
    return args.repeats_large if large and args.repeats_large is not None else args.repeats


def bench_case(case: Case, args, workdir: Path) -> dict:
    image = image_path(case, args.data_dir)
    entry = {"case": case.name, "model": case.model, "shape": case.size_label, "pixels": case.pixels,
             "eval": case.eval, "loadavg_before": os.getloadavg()}
    log(f"{case.name}: cellflow-rt ...")
    repeats = repeats_for(case, args)
    ours = run_worker("cellflow", case, image, workdir, args, repeats)
    entry["cellflow"] = summarise(ours)
    entry["precision"] = ours.get("precision", "fp32")
    if args.reference_python:
        log(f"{case.name}: reference ...")
        ref = run_worker("reference", case, image, workdir, args, repeats)
        entry["reference"] = summarise(ref)
        entry["accuracy"] = compare_masks(ref["masks"], ours["masks"])
    entry["loadavg_after"] = os.getloadavg()
    return entry


def numba_probe(case: Case, args, workdir: Path) -> dict:
    """First call with an empty numba cache (compile + write), then a fresh process on that cache."""
    if case.kind == "volume":  # compilation does not depend on the size; keep the 3D runs short
        case = replace(case, name=f"{case.name}_probe", shape=(8, 128, 128))
    image = image_path(case, args.data_dir)
    cache = tempfile.mkdtemp(prefix="cellflow-bench-numba-")
    try:
        log(f"numba: {case.name} with an empty cache ({cache}) ...")
        cold = run_worker("cellflow", case, image, workdir, args, 1, numba_cache=cache, tag="_numba_cold")
        log(f"numba: {case.name} with that cache, fresh process ...")
        warm = run_worker("cellflow", case, image, workdir, args, 1, numba_cache=cache, tag="_numba_warm")
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    def pick(result):
        first, second = result["runs"]
        return {"import_s": result["import_s"], "compiled": len(result["numba_compiled"]),
                "loaded": len(result["numba_loaded"]),
                **{f"first_{k}_s": first.get(k, 0.0) for k in ("masks", "outputs", "total")},
                **{f"second_{k}_s": second.get(k, 0.0) for k in ("masks", "outputs", "total")},
                "first_call_overhead_s": first["total"] - second["total"]}

    return {"case": case.name, "empty_cache": pick(cold), "warm_cache": pick(warm)}


def prime_numba_cache(cases: List[Case], args, workdir: Path) -> None:
    """One untimed run on a small image per kind of case, so that first calls find a warm cache.

    The kernels' signatures depend on dtypes and dimensionality, not sizes, so a small image of
    each kind (2D nuclei, 2D cyto, do_3D, stitched stack) compiles everything a case needs.
    """
    primes = {}
    for case in cases:
        small = (8, 128, 128) if case.kind == "volume" else case.shape[:-2] + (256, 256)
        key = (case.kind, bool(case.eval.get("do_3D")), bool(case.eval.get("stitch_threshold")))
        primes.setdefault(key, replace(case, name=f"{case.name}_prime", shape=small))
    for case in primes.values():
        log(f"numba: warming the cache ({case.name}, {case.size_label}) ...")
        run_worker("cellflow", case, image_path(case, args.data_dir), workdir, args, 0)


# ---------------------------------------------------------------------------------------------
# report
def _fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}"


def _ratio(ref: Optional[float], ours: Optional[float]) -> str:
    if ref is None or ours is None or ref <= 0 or ours <= 0:
        return "-"
    r = ref / ours
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def case_table(entry: dict) -> str:
    ours, ref = entry["cellflow"], entry.get("reference")
    head = (f"== {entry['case']}: {entry['model']}, {entry['shape']}, "
            f"{', '.join(f'{k}={v}' for k, v in entry['eval'].items())}; "
            f"cellflow-rt network {entry.get('precision', 'fp32')}; median of {ours['n_repeats']} repeat(s); load average {entry['loadavg_before'][0]:.1f} -> "
            f"{entry['loadavg_after'][0]:.1f}")
    lines = [head, f"{'':52s} {'---------- wall time ----------':>34s}  {'---- CPU time (all threads) ----':>34s}",
             f"{'stage':52s} {'cellflow [s]':>12s} {'reference [s]':>13s} {'ref/cf':>7s}  "
             f"{'cellflow [s]':>12s} {'reference [s]':>13s} {'ref/cf':>7s}"]
    rows = list(STAGES[:-2]) + [("dyn_qc", "  " + DYN_QC[1]), STAGES[-2], STAGES[-1]]
    present = set(ours["median_s"]) | set(ref["median_s"] if ref else {})

    def cells(key, which="median_s"):
        out = []
        for prefix in ("", "cpu:"):
            a = ours[which].get(prefix + key)
            b = ref[which].get(prefix + key) if ref else None
            out.append(f"{_fmt_s(a):>12s} {_fmt_s(b):>13s} {_ratio(b, a):>7s}")
        return "  ".join(out)

    for key, label in rows:
        if key in present:
            lines.append(f"{label:52s} {cells(key)}")
    lines.append(f"{'first call, end to end':52s} {cells('total', 'first_s')}")
    if ours.get("numba_compiled"):
        lines.append(f"  (cellflow-rt's first call compiled {len(ours['numba_compiled'])} numba kernel(s): stale cache, "
                     "their source changed since the warm-up run)")
    for key, label in (("import_s", "import (once per process)"), ("load_s", "model load (once per process)")):
        a, b = ours[key], ref[key] if ref else None
        lines.append(f"{label:52s} {_fmt_s(a):>12s} {_fmt_s(b):>13s} {_ratio(b, a):>7s}")
    a, b = ours["peak_rss_mib"], ref["peak_rss_mib"] if ref else None
    lines.append(f"{'peak RSS [MiB]':52s} {a:12.0f} {(f'{b:.0f}' if b else '-'):>13s} {_ratio(b, a):>7s}")
    acc = entry.get("accuracy")
    if acc and "error" not in acc:
        lines.append(f"masks vs reference: AP@0.5 {acc['ap_0.5']:.4f}  AP@0.75 {acc['ap_0.75']:.4f}  "
                     f"AP@0.9 {acc['ap_0.9']:.4f}  ({acc['n_cellflow']} vs {acc['n_reference']} masks, "
                     f"{'identical' if acc['identical'] else 'not identical'})")
    elif acc:
        lines.append(f"masks vs reference: {acc['error']}")
    return "\n".join(lines)


def summary_table(entries: List[dict]) -> str:
    lines = ["== summary (medians; ratio = reference / cellflow-rt)",
             f"{'case':16s} {'shape':>12s} {'cf e2e [s]':>10s} {'ref e2e [s]':>11s} {'e2e':>6s} "
             f"{'net':>6s} {'dyn+QC':>6s} {'e2e CPU':>7s} {'RSS cf/ref [MiB]':>17s} {'AP@0.5':>7s} {'AP@0.9':>7s} {'same':>5s}"]
    for e in entries:
        o, r, acc = e["cellflow"], e.get("reference"), e.get("accuracy") or {}
        om, rm = o["median_s"], (r["median_s"] if r else {})
        rss = f"{o['peak_rss_mib']:.0f}/{r['peak_rss_mib']:.0f}" if r else f"{o['peak_rss_mib']:.0f}/-"
        lines.append(
            f"{e['case']:16s} {e['shape']:>12s} {_fmt_s(om['total']):>10s} {_fmt_s(rm.get('total')):>11s} "
            f"{_ratio(rm.get('total'), om['total']):>6s} {_ratio(rm.get('network'), om['network']):>6s} "
            f"{_ratio(rm.get('dyn_qc'), om['dyn_qc']):>6s} {_ratio(rm.get('cpu:total'), om.get('cpu:total')):>7s} "
            f"{rss:>17s} "
            f"{acc.get('ap_0.5', float('nan')):7.4f} {acc.get('ap_0.9', float('nan')):7.4f} "
            f"{('yes' if acc.get('identical') else 'no') if acc else '-':>5s}")
    return "\n".join(lines)


def targets_table(entries: List[dict]) -> str:
    """Issue 6's CPU targets, case by case (wall-time ratios; CPU-time ratios in brackets)."""
    lines = ["== issue 6 CPU targets: end to end >= 3x at 1024^2 and 2048^2 with AP@0.5 >= 0.99; "
             "Euler + clustering + flow QC >= 5x"]
    for e in entries:
        o, r, acc = e["cellflow"]["median_s"], (e.get("reference") or {}).get("median_s"), e.get("accuracy") or {}
        if not r:
            continue
        e2e, cpu = r["total"] / o["total"], r.get("cpu:total", 0) / max(o.get("cpu:total", 0), 1e-12)
        dyn = r["dyn_qc"] / o["dyn_qc"] if o["dyn_qc"] > 0 else float("inf")
        checks = [f"dyn+QC {dyn:.1f}x {'ok' if dyn >= 5 else 'MISSED'}",
                  f"AP@0.5 {acc.get('ap_0.5', float('nan')):.4f} {'ok' if acc.get('ap_0.5', 0) >= 0.99 else 'MISSED'}"]
        if e["shape"] in ("1024x1024", "2048x2048"):
            checks.insert(0, f"e2e {e2e:.2f}x ({cpu:.2f}x) {'ok' if e2e >= 3 else 'MISSED'}")
        lines.append(f"{e['case']:16s} " + "; ".join(checks))
    return "\n".join(lines)


def numba_table(probes: List[dict]) -> str:
    lines = ["== numba compilation (cellflow-rt; first call of a fresh process vs its second call)",
             f"{'case':20s} {'cache':>7s} {'import [s]':>10s} {'masks 1st/2nd [s]':>18s} "
             f"{'outputs 1st/2nd [s]':>20s} {'e2e 1st/2nd [s]':>16s} {'overhead [s]':>12s} "
             f"{'kernels compiled/loaded':>23s}"]
    for p in probes:
        for which in ("empty_cache", "warm_cache"):
            d = p[which]
            lines.append(
                f"{p['case']:20s} {which.split('_')[0]:>7s} {d['import_s']:10.2f} "
                f"{_fmt_s(d['first_masks_s']) + '/' + _fmt_s(d['second_masks_s']):>18s} "
                f"{_fmt_s(d['first_outputs_s']) + '/' + _fmt_s(d['second_outputs_s']):>20s} "
                f"{_fmt_s(d['first_total_s']) + '/' + _fmt_s(d['second_total_s']):>16s} "
                f"{d['first_call_overhead_s']:12.2f} {str(d['compiled']) + '/' + str(d['loaded']):>23s}")
    return "\n".join(lines)


def conditions(args) -> dict:
    import numba
    import onnxruntime
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "platform": platform.platform(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "loadavg_start": os.getloadavg(), "python": sys.version.split()[0], "onnxruntime": onnxruntime.__version__,
        "numba": numba.__version__, "reference_python": args.reference_python, "repeats": args.repeats,
        "precision": args.precision,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def select_cases(args) -> List[Case]:
    if args.cases:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            raise SystemExit(f"--cases: unknown {unknown}; known: {', '.join(CASES)}")
        return [CASES[n] for n in names]
    if args.quick:
        return [CASES[n] for n in QUICK_CASES]
    sizes = {int(s) for s in args.sizes.split(",")} if args.sizes else {512, 1024, 2048}
    models = set(args.models.split(",")) if args.models else {"nuclei", "cyto"}
    chosen = [c for c in CASES.values() if c.kind in models and c.shape[-1] in sizes]
    if not args.no_3d and not args.sizes and not args.models:
        chosen += [CASES["vol_do3D"], CASES["vol_stitch"]]
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-python", default=None,
                   help=f"interpreter with cellpose==3.1.1.1 (default {DEFAULT_REFERENCE_PYTHON} if present)")
    p.add_argument("--no-reference", action="store_true", help="time cellflow-rt only")
    p.add_argument("--cases", help=f"comma-separated case names ({', '.join(CASES)})")
    p.add_argument("--sizes", help="2D sizes to run, e.g. 512,1024 (default 512,1024,2048; 3D cases only "
                                   "without --sizes/--models)")
    p.add_argument("--models", help="nuclei,cyto (2D cases of these kinds)")
    p.add_argument("--no-3d", action="store_true", help="skip the 32x256x256 stack cases")
    p.add_argument("--quick", action="store_true",
                   help=f"{','.join(QUICK_CASES)}, 1 repeat, no numba probe (about a minute on an idle 2-core machine)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs after the first call (default 3, quick 1)")
    p.add_argument("--repeats-large", type=int, default=None,
                   help="repeats for the 2048^2 and 3D cases (default: --repeats)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for both sides: ORT intra-op / torch, numba, OpenMP (default: all cores)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="cellflow-rt's network precision: fp32 (Cellpose's numbers) or bf16 (OpenVINO, approximate)")
    p.add_argument("--no-numba", action="store_true", help="skip the numba compilation probe")
    p.add_argument("--numba", action="store_true", help="run the numba compilation probe even with --quick")
    p.add_argument("--weights", default=str(SHARED / "weights"), help="folder of the Cellpose checkpoints")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="cache of the generated images")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the workers' scratch folder")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quick and not args.numba:
        args.no_numba = True
    if args.no_reference:
        args.reference_python = None
    elif args.reference_python is None:
        args.reference_python = DEFAULT_REFERENCE_PYTHON if Path(DEFAULT_REFERENCE_PYTHON).is_file() else None
        if args.reference_python is None:
            log(f"no reference interpreter ({DEFAULT_REFERENCE_PYTHON} missing): timing cellflow-rt only")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        cellflow_worker(args.worker)
        return 0
    cases = select_cases(args)
    workdir = Path(tempfile.mkdtemp(prefix="cellflow-bench-"))
    report = {"conditions": conditions(args), "cases": [], "numba": []}
    try:
        for case in cases:  # generate every image first: generation must not overlap the timings
            image_path(case, args.data_dir)
        if not args.no_numba:
            probes = [c for c in cases if c.name == "nuclei_512"] or [c for c in cases if c.kind != "volume"][:1]
            probes += [c for c in cases if c.kind == "volume"][:1]
            for case in probes:
                report["numba"].append(numba_probe(case, args, workdir))
        prime_numba_cache(cases, args, workdir)
        for case in cases:
            entry = bench_case(case, args, workdir)
            report["cases"].append(entry)
            print(case_table(entry) + "\n", flush=True)
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        report["conditions"]["loadavg_end"] = os.getloadavg()
        if args.json:
            write_json(args.json, report)
        if args.keep:
            log(f"scratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    c = report["conditions"]
    print(f"conditions: {c['cpu']} x{c['cpu_count']}, {c['threads']} thread(s) per side, cellflow-rt network "
          f"{c['precision']}, load average "
          f"{c['loadavg_start'][0]:.2f} at start, {c['loadavg_end'][0]:.2f} at end; {c['date']}")
    if report["numba"]:
        print(numba_table(report["numba"]) + "\n")
    if len(report["cases"]) > 1:
        print(summary_table(report["cases"]) + "\n")
    if report["cases"]:
        print(targets_table(report["cases"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
