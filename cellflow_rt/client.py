"""A small client of ``cellflow-rt serve`` (standard library HTTP; numpy only for arrays).

Examples
--------
>>> from cellflow_rt.client import Client
>>> client = Client("http://127.0.0.1:8765")                       # doctest: +SKIP
>>> result = client.segment(image, model="nuclei_demo", diameter=17)  # doctest: +SKIP
>>> result.masks.shape, result.n_masks, result.timings["network"]  # doctest: +SKIP
>>> client.segment_file("cells.tif", accept="application/geo+json")  # bytes of the answer  # doctest: +SKIP

A busy server answers 503 with ``Retry-After``; the client waits that long and tries again, up to
``busy_retries`` times, then raises :class:`ServiceError` (status 503).
"""
from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

__all__ = ["Client", "Result", "ServiceError"]

#: Content-Type of a body by file extension (the server sniffs the rest).
_CONTENT_TYPES = {".tif": "image/tiff", ".tiff": "image/tiff", ".png": "image/png", ".jpg": "image/jpeg",
                  ".jpeg": "image/jpeg", ".npy": "application/x-npy"}


class ServiceError(RuntimeError):
    """The service answered with an error (``status``, one-line ``reason``) or could not be reached
    (``status`` 0)."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


@dataclass
class Result:
    """A JSON answer of ``POST /segment``."""

    masks: Any  # ndarray (Ly, Lx) or (Lz, Ly, Lx), uint16 or uint32
    n_masks: int
    diameter: float
    model: str
    timings: Dict[str, float] = field(default_factory=dict)


class Client:
    """Talk to a ``cellflow-rt serve`` instance.

    Parameters
    ----------
    url : str
        The server's address, e.g. ``http://127.0.0.1:8765``.
    token : str, optional
        Bearer token when the server was started with ``--token`` (default ``$CELLFLOW_RT_TOKEN``).
    timeout : float
        Seconds to wait for one answer.
    busy_retries : int
        How many times a 503 (busy) answer is retried after its ``Retry-After`` delay.
    """

    def __init__(self, url: str = "http://127.0.0.1:8765", token: Optional[str] = None, timeout: float = 600.0,
                 busy_retries: int = 5):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("CELLFLOW_RT_TOKEN")
        self.timeout = timeout
        self.busy_retries = busy_retries

    # ----------------------------------------------------------------------------------------------
    # segmentation

    def segment(self, image, **settings) -> Result:
        """Segment an array (sent as ``.npy``); returns the masks and the summary.

        ``settings`` are the query parameters of ``POST /segment`` with Cellpose's names (``model``,
        ``diameter``, ``chan``, ``chan2``, ``flow_threshold``, ``do_3D`` ...).
        """
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.asarray(image), allow_pickle=False)
        answer, _ = self.request("POST", "/segment", settings, buffer.getvalue(), "application/x-npy",
                                 accept="application/json")
        return self._result(answer)

    def segment_file(self, path, accept: str = "application/json", **settings):
        """Segment an image file (TIFF, PNG, JPEG or ``.npy``), sending its bytes as they are.

        Returns a :class:`Result` for ``accept="application/json"``, otherwise the answer's bytes
        (``image/tiff``, ``application/geo+json``, ``application/zip``).
        """
        with open(path, "rb") as fh:
            data = fh.read()
        content_type = _CONTENT_TYPES.get(os.path.splitext(str(path))[1].lower(), "application/octet-stream")
        return self.segment_bytes(data, content_type, accept, **settings)

    def segment_bytes(self, data: bytes, content_type: str = "application/octet-stream",
                      accept: str = "application/json", **settings):
        """Segment an image file's bytes; a :class:`Result` for JSON answers, else the answer's bytes."""
        answer, _ = self.request("POST", "/segment", settings, data, content_type, accept=accept)
        return self._result(answer) if accept == "application/json" else answer

    @staticmethod
    def _result(answer: bytes) -> Result:
        from .serve.answers import rle_decode

        summary = json.loads(answer)
        return Result(masks=rle_decode(summary["masks"]), n_masks=summary["n_masks"], diameter=summary["diameter"],
                      model=summary["model"], timings=summary["timings"])

    # ----------------------------------------------------------------------------------------------
    # the other endpoints

    def health(self) -> dict:
        """``GET /health``: status, models, queue and limits."""
        return json.loads(self.request("GET", "/health")[0])

    def models(self) -> dict:
        """``GET /models``: the models served and the default."""
        return json.loads(self.request("GET", "/models")[0])

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self.request("GET", "/metrics")[0].decode()

    # ----------------------------------------------------------------------------------------------
    # HTTP

    def request(self, method: str, path: str, query: Optional[dict] = None, body: Optional[bytes] = None,
                content_type: Optional[str] = None, accept: Optional[str] = None) -> Tuple[bytes, dict]:
        """One request (503 answers retried after ``Retry-After``); returns the body and headers.

        Raises
        ------
        ServiceError
            Any status other than 2xx, or no connection.
        """
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: _query_value(v) for k, v in query.items()})
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.busy_retries + 1):
            req = urllib.request.Request(url, data=body, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                    return answer.read(), dict(answer.headers)
            except urllib.error.HTTPError as exc:
                reason = exc.read().decode("utf-8", "replace").strip() or exc.reason
                retry_after = exc.headers.get("Retry-After")
                if exc.code == 503 and retry_after and attempt < self.busy_retries:
                    time.sleep(float(retry_after))
                    continue
                raise ServiceError(exc.code, reason) from None
            except (urllib.error.URLError, OSError) as exc:
                raise ServiceError(0, f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None
        raise AssertionError("unreachable")


def _query_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
