"""A local stand-in for Cellpose's download sites: the demo checkpoints of ../shared/weights served
under Cellpose's file names on 127.0.0.1, counting requests (no internet is used)."""
from __future__ import annotations

import http.server
import threading
from collections import Counter
from pathlib import Path

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"

#: Cellpose's file name -> the demo file served under it.
SERVED = {
    "nucleitorch_0": "cellflow_nuclei_demo",
    "size_nucleitorch_0.npy": "cellflow_nuclei_demo_size.npy",
    "cyto3": "cellflow_cyto_demo",
    "size_cyto3.npy": "cellflow_cyto_demo_size.npy",
    "cpsam": "cellflow_cpsam_tiny_demo",
    "denoise_nuclei": "cellflow_denoise_nuclei_demo",
    # stand-ins for names with no converter rule of their own (Cellpose's diam_mean rule applies)
    "tissuenet_cp3": "cellflow_nuclei_demo",
    "aniso_cyto2": "cellflow_denoise_nuclei_demo",
}


class ModelServer:
    """Serve :data:`SERVED` over HTTP in a thread.

    Attributes
    ----------
    url : str
        The base URL (``http://127.0.0.1:PORT``).
    requests : Counter
        File name -> number of GET requests.
    truncate : set
        File names answered with their full Content-Length but only half the bytes.
    """

    def __init__(self):
        self.requests = Counter()
        self.truncate = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests[name] += 1
                if name not in SERVED:
                    self.send_error(404)
                    return
                data = (SHARED_WEIGHTS / SERVED[name]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if name in server.truncate:
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
