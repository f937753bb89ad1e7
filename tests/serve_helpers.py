"""Helpers for the service tests: a real ``cellflow-rt serve`` process on 127.0.0.1 and raw HTTP."""
from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from cli_helpers import cli_executable

#: Seconds a server may take to start: a fresh numba cache compiles the kernels (minutes on a busy
#: 2-core machine); a warm one loads them in seconds.
START_TIMEOUT = 600


@dataclass
class Answer:
    status: int
    headers: Dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class ServerProcess:
    """``cellflow-rt serve --port 0 ARGS`` in an empty working directory with an empty TMPDIR.

    Its output goes to ``folder/server.log`` (a pipe could fill up and block it).
    """

    def __init__(self, args: List[str], folder: Path, env: Optional[Dict[str, str]] = None):
        self.folder = Path(folder)
        self.workdir, self.tmpdir = self.folder / "cwd", self.folder / "tmp"
        self.workdir.mkdir(parents=True)
        self.tmpdir.mkdir()
        self.log_path = self.folder / "server.log"
        full_env = dict(os.environ, TMPDIR=str(self.tmpdir), **(env or {}))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([cli_executable(), "serve", "--host", "127.0.0.1", "--port", "0", *args],
                                         cwd=self.workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.port = self._wait_ready()
        #: what the server's working and temporary folders hold once it is ready (onnxruntime leaves
        #: a telemetry session file ``.ses`` in the temporary folder when it is imported)
        self.files_at_start = self.files()

    def files(self) -> List[str]:
        """Everything in the server's working and temporary folders."""
        return sorted(str(p) for folder in (self.workdir, self.tmpdir) for p in folder.rglob("*"))

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = re.search(r"ready on http://127\.0\.0\.1:(\d+)", self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"the server did not start within {START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None,
                timeout: float = 300) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def post(self, path: str, body: bytes, content_type: Optional[str] = "image/tiff", accept: Optional[str] = None,
             headers: Optional[Dict[str, str]] = None, timeout: float = 300) -> Answer:
        all_headers = dict(headers or {})
        if content_type:
            all_headers["Content-Type"] = content_type
        if accept:
            all_headers["Accept"] = accept
        return self.request("POST", path, body, all_headers, timeout)

    def health(self, headers: Optional[Dict[str, str]] = None) -> dict:
        import json
        return json.loads(self.request("GET", "/health", headers=headers).body)

    def wait_idle(self, headers: Optional[Dict[str, str]] = None, timeout: float = 300) -> dict:
        """Wait until no request is admitted and no worker is busy; return /health's answer."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health(headers)
            if health["queue"] == {"waiting": 0, "busy": 0, "admitted": 0}:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"the server is not idle after {timeout} s: {health}")
            time.sleep(0.1)

    def raw(self) -> socket.socket:
        """A connected socket, for requests that misbehave."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=60)

    @staticmethod
    def read_until_closed(sock: socket.socket) -> str:
        """Everything the server sends on ``sock`` until it closes the connection."""
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks).decode("utf-8", "replace")
            chunks.append(chunk)

    def rss(self) -> int:
        import psutil
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (graceful drain), then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of Prometheus text (0 when absent)."""
    match = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}' if labels else '')} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0
