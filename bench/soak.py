"""Soak test of ``cellflow-rt serve``: thousands of requests, good and bad, from concurrent clients.

Usage (repository root, the project's venv with the serve extra)::

    python bench/soak.py [--requests 3000] [--clients 8] [--good 0.2] [--workers 1] [--max-queue 4]

A server is started on 127.0.0.1 (``nuclei_demo``; ``--workers``, ``--max-queue``); ``--clients``
threads (the documented concurrency: up to workers + max-queue requests are admitted, the rest get
503 with Retry-After) share ``--requests`` requests: a fraction ``--good`` are 96 x 96 nuclei crops to
segment, the others are bad in turn (a corrupt PNG, a truncated TIFF, a 68-byte PNG declaring
100,000 x 100,000 pixels, an unknown option, a wrong Content-Type, an oversized body, a client that
leaves before the answer). It reports requests answered by status and kind, latency percentiles per
kind, the server's resident memory at the start and the end, and its own error counters.
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _tiff(array) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def _requests(good_image: bytes):
    from hostile_files import png_claiming

    query = "/segment?model=nuclei_demo&diameter=17"
    return {
        "good": (query, good_image, "image/tiff"),
        "corrupt_png": (query, b"\x89PNG\r\n\x1a\n" + b"junk" * 40, "image/png"),
        "truncated_tiff": (query, good_image[: len(good_image) // 3], "image/tiff"),
        "huge_header": (query, png_claiming(100_000, 100_000), "image/png"),
        "bad_option": (query + "&flow_threshold=lots", good_image, "image/tiff"),
        "wrong_type": (query, good_image, "text/plain"),
        "oversized": (query, bytes(3_000_000), "image/tiff"),
        "abandoned": (query, good_image, "image/tiff"),
    }


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def _start(args, folder: Path):
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cellflow_rt.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--model", "nuclei_demo", "--workers", str(args.workers), "--max-queue",
                             str(args.max_queue), "--max-body-mb", "2", "--no-access-log"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        match = re.search(r"ready on http://127\.0\.0\.1:(\d+)", (folder / "server.log").read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise SystemExit((folder / "server.log").read_text())
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def _send(port: int, kind: str, request) -> int:
    path, body, content_type = request
    if kind == "abandoned":
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return 499
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
        except (ConnectionResetError, BrokenPipeError):  # an oversized body: the server closed early
            return 413
        finally:
            conn.close()
        if response.status != 503:
            return response.status
        time.sleep(float(response.getheader("Retry-After", "1")) / 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--good", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=4)
    args = parser.parse_args()

    from cli_helpers import crop

    requests = _requests(_tiff(crop(96)))
    bad_kinds = [k for k in requests if k != "good"]
    n_good = int(args.requests * args.good)
    plan = ["good"] * n_good + [bad_kinds[i % len(bad_kinds)] for i in range(args.requests - n_good)]
    rng = np.random.default_rng(0)
    rng.shuffle(plan)

    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start(args, Path(tmp))
        try:
            rss_start = _rss(proc.pid)
            results = defaultdict(list)  # (kind, status) -> latencies
            lock, index = threading.Lock(), iter(range(len(plan)))

            def client():
                while True:
                    with lock:
                        i = next(index, None)
                    if i is None:
                        return
                    tic = time.perf_counter()
                    status = _send(port, plan[i], requests[plan[i]])
                    with lock:
                        results[(plan[i], status)].append(time.perf_counter() - tic)

            tic = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - tic
            time.sleep(2)
            rss_end = _rss(proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
            conn.close()
        finally:
            proc.terminate()
            proc.wait(60)

    print(f"{len(plan)} requests from {args.clients} clients in {seconds:.1f} s "
          f"({len(plan) / seconds:.0f}/s); server: {args.workers} worker(s), queue {args.max_queue}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| kind | status | requests | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|")
    for (kind, status), latencies in sorted(results.items()):
        ms = np.array(latencies) * 1000
        print(f"| {kind} | {status} | {len(ms)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 90):.1f} | "
              f"{np.percentile(ms, 99):.1f} | {ms.max():.1f} |")
    print(f"\nserver RSS: {rss_start / 2**20:.0f} MB at the start, {rss_end / 2**20:.0f} MB at the end")
    counters = re.findall(r'^cellflow_errors_total\{reason="(\w+)"\} (\S+)$', metrics, re.M)
    print("server's cellflow_errors_total: " + ", ".join(f"{r} {float(v):.0f}" for r, v in counters))
    served = re.findall(r'^cellflow_requests_total\{endpoint="/segment",status="(\d+)"\} (\S+)$', metrics, re.M)
    print("server's cellflow_requests_total (/segment): " + ", ".join(f"{s}: {float(v):.0f}" for s, v in served))
    return 0


if __name__ == "__main__":
    sys.exit(main())
