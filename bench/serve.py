"""``cellflow-rt serve`` against the same work in process, a cold ``cellflow-rt run`` and ``python -m cellpose``.

Usage (from the repository root, in the project's venv with the ``serve`` extra)::

    python bench/serve.py [--repeats 10] [--repeats-large 5] [--cold-repeats 3] [--clients 1,4,16]
                          [--workers 1] [--reference-python /tmp/cpref/bin/python] [--json out.json]

What it measures, on synthetic nuclei images (``shared/tools/synth.py``, diameter 17, uint16 TIFF,
cached like bench.py's) with ``nuclei_demo`` at ``diameter=17``:

1. Latency at 512^2 and 1024^2, p50 and p95: a request over HTTP to a warm server on 127.0.0.1
   (``POST /segment``, the TIFF file's bytes, the TIFF label image back; wall time seen by the
   client) against ``pipeline.segment`` on the decoded array in this process (same model, same
   settings). Runs alternate (one in process, one over HTTP) so both see the same machine load;
   the server's ``Server-Timing`` stages are reported too. The service's overhead is the difference
   of the medians (issue 16's target: <= 10 ms at p50).
2. The same image segmented by a cold process: ``cellflow-rt run`` and ``python -m cellpose``
   (the commands of ``startup.py``), ``--cold-repeats`` runs each.
3. Throughput at 512^2 with 1, 4 and 16 concurrent clients (``--clients``): the clients share
   ``--images`` requests, each sending its share back to back (a 503 is retried after its Retry-After); images/s =
   images answered / wall time. The server runs ``--workers`` workers and a queue as long as the
   number of clients, so no request is turned away.

Timing on a shared machine: the load average is printed with each block; compare ratios from one run.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, SHARED, Case, image_path, write_json  # noqa: E402
from startup import DEFAULT_REFERENCE_PYTHON, cellflow_command, fresh_copy, measure, reference_command  # noqa: E402

SIZES = {512: Case("startup_512", "nuclei", (512, 512), "nuclei_demo", "cellflow_nuclei_demo", 17.0,
                   dict(channels=[0, 0], diameter=17.0)),
         1024: Case("serve_1024", "nuclei", (1024, 1024), "nuclei_demo", "cellflow_nuclei_demo", 17.0,
                    dict(channels=[0, 0], diameter=17.0))}
QUERY = "/segment?model=nuclei_demo&diameter=17"


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


class Server:
    """A ``cellflow-rt serve`` process on 127.0.0.1 (a free port)."""

    def __init__(self, workers: int, max_queue: int, log: Path):
        exe = Path(sys.executable).parent / "cellflow-rt"
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen([str(exe), "serve", "--port", "0", "--model", "nuclei_demo", "--workers",
                                          str(workers), "--max-queue", str(max_queue), "--no-access-log",
                                          "--max-image-mpx", "64"], stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while True:
            match = re.search(r"ready on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def segment(self, body: bytes):
        """(status, client wall seconds, Server-Timing stages in s, Retry-After)"""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        tic = time.perf_counter()
        try:
            conn.request("POST", QUERY, body=body, headers={"Content-Type": "image/tiff"})
            answer = conn.getresponse()
            answer.read()
        finally:
            conn.close()
        wall = time.perf_counter() - tic
        stages = {name: float(ms) / 1000 for name, ms in
                  re.findall(r"(\w+);dur=([\d.]+)", answer.getheader("Server-Timing") or "")}
        return answer.status, wall, stages, answer.getheader("Retry-After")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(120)


def latency(server: Server, repeats: dict) -> dict:
    """p50/p95 over HTTP and in process, alternating, per image size."""
    import tifffile

    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.pipeline import segment
    from cellflow_rt.settings import EvalSettings

    model = LoadedModel.load("nuclei_demo", providers="cpu")
    settings = EvalSettings(channels=(0, 0), diameter=17.0)
    results = {}
    for size, case in SIZES.items():
        path = image_path(case)
        body, image = path.read_bytes(), tifffile.imread(path)
        segment(image, model, settings)  # warm this process (the server warmed itself)
        status, _, _, _ = server.segment(body)
        assert status == 200, status
        http_s, local_s, stages = [], [], []
        for i in range(repeats[size]):
            for side in (("http", "local") if i % 2 == 0 else ("local", "http")):
                if side == "http":
                    status, wall, timing, _ = server.segment(body)
                    assert status == 200, status
                    http_s.append(wall)
                    stages.append(timing)
                else:
                    tic = time.perf_counter()
                    segment(image, model, settings)
                    local_s.append(time.perf_counter() - tic)
            print(f"  {size}^2 run {i + 1}: http {http_s[-1]:.3f} s, in process {local_s[-1]:.3f} s",
                  file=sys.stderr, flush=True)
        results[size] = {
            "http_s": http_s, "in_process_s": local_s, "load_average": os.getloadavg()[0],
            "http_p50": percentile(http_s, 50), "http_p95": percentile(http_s, 95),
            "in_process_p50": percentile(local_s, 50), "in_process_p95": percentile(local_s, 95),
            "server_stages_median": {k: statistics.median(s.get(k, 0.0) for s in stages) for k in stages[0]},
        }
    return results


def cold(refpy, repeats: int, weights: Path) -> dict:
    """Cold-process runs of both command lines on each size (median wall time)."""
    env = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix="cellflow-serve-bench-"))
    results = {}
    try:
        for size, case in SIZES.items():
            src = image_path(case)
            sides = {"cellflow-rt run": cellflow_command}
            if refpy:
                sides["python -m cellpose"] = lambda img: reference_command(refpy, img, weights)
            walls = {name: [] for name in sides}
            for name, make in sides.items():
                measure(make(fresh_copy(src, scratch, "warm")), env)  # untimed: page and numba caches
            for i in range(repeats):
                for name, make in sides.items():
                    walls[name].append(measure(make(fresh_copy(src, scratch, f"{i}")), env)["wall_s"])
                    print(f"  {size}^2 cold {name}: {walls[name][-1]:.2f} s", file=sys.stderr, flush=True)
            results[size] = {name: {"median_s": statistics.median(w), "runs_s": w} for name, w in walls.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def throughput(clients_list, images: int, workers: int, log_dir: Path) -> dict:
    """Images per second at 512^2 with N concurrent clients sharing ``images`` requests (a fresh
    server per level)."""
    body = image_path(SIZES[512]).read_bytes()
    results = {}
    for clients in clients_list:
        per_client = max(1, images // clients)
        server = Server(workers, max_queue=clients, log=log_dir / f"server_{clients}.log")
        try:
            assert server.segment(body)[0] == 200
            done, rejected = [], []

            def client():
                for _ in range(per_client):
                    while True:
                        status, wall, _, retry_after = server.segment(body)
                        if status == 503:
                            rejected.append(1)
                            time.sleep(float(retry_after or 1))
                            continue
                        assert status == 200, status
                        done.append(wall)
                        break

            threads = [threading.Thread(target=client) for _ in range(clients)]
            tic = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - tic
        finally:
            server.stop()
        results[clients] = {"images": len(done), "wall_s": wall, "images_per_s": len(done) / wall,
                            "latency_p50_s": percentile(done, 50), "latency_p95_s": percentile(done, 95),
                            "rejected_503": len(rejected), "load_average": os.getloadavg()[0]}
        print(f"  {clients} client(s): {len(done) / wall:.2f} images/s", file=sys.stderr, flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="latency runs per side at 512^2")
    p.add_argument("--repeats-large", type=int, default=5, help="latency runs per side at 1024^2")
    p.add_argument("--cold-repeats", type=int, default=3)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--images", type=int, default=32, help="images per throughput level, shared by the clients")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reference-python", default=None,
                   help=f"interpreter with cellpose==3.1.1.1 (default {DEFAULT_REFERENCE_PYTHON} if present)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--weights", type=Path, default=SHARED / "weights")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    refpy = None if args.no_reference else (
        args.reference_python or (DEFAULT_REFERENCE_PYTHON if Path(DEFAULT_REFERENCE_PYTHON).is_file() else None))
    clients_list = [int(c) for c in args.clients.split(",")]
    for case in SIZES.values():
        image_path(case, DATA_DIR)

    log_dir = Path(tempfile.mkdtemp(prefix="cellflow-serve-logs-"))
    print(f"load average at start {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPU(s)", file=sys.stderr)
    server = Server(args.workers, max_queue=4, log=log_dir / "server_latency.log")
    try:
        lat = latency(server, {512: args.repeats, 1024: args.repeats_large})
    finally:
        server.stop()
    cold_runs = cold(refpy, args.cold_repeats, args.weights)
    thr = throughput(clients_list, args.images, args.workers, log_dir)

    print(f"\nlatency, nuclei_demo at diameter 17, {args.workers} worker(s); load average at end "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'image':8s} {'HTTP p50':>9s} {'HTTP p95':>9s} {'in-proc p50':>12s} {'in-proc p95':>12s} "
          f"{'overhead p50':>13s} {'cold run':>9s} {'cold cellpose':>14s}")
    for size, r in lat.items():
        c = cold_runs[size]
        ref = c.get("python -m cellpose", {}).get("median_s", float("nan"))
        print(f"{size}^2{'':3s} {r['http_p50']:9.3f} {r['http_p95']:9.3f} {r['in_process_p50']:12.3f} "
              f"{r['in_process_p95']:12.3f} {1000 * (r['http_p50'] - r['in_process_p50']):10.1f} ms "
              f"{c['cellflow-rt run']['median_s']:9.2f} {ref:14.2f}")
    for size, r in lat.items():
        stages = ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in r["server_stages_median"].items())
        print(f"  server stages at {size}^2 (median): {stages}")
    print("\nthroughput at 512^2")
    print(f"{'clients':>8s} {'images/s':>9s} {'p50 [s]':>8s} {'p95 [s]':>8s} {'503s':>5s}")
    for clients, r in thr.items():
        print(f"{clients:8d} {r['images_per_s']:9.2f} {r['latency_p50_s']:8.2f} {r['latency_p95_s']:8.2f} "
              f"{r['rejected_503']:5d}")
    if args.json:
        write_json(args.json, {"latency": lat, "cold": cold_runs, "throughput": thr, "workers": args.workers,
                               "cpus": os.cpu_count()})
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
