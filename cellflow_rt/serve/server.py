"""Start the service: who may connect, the socket, the warm models, and uvicorn with a graceful drain.

Exposure: the server listens on a loopback address unless the caller gives a bearer token (every
request must then carry it) or says ``insecure`` explicitly; see :func:`check_exposure`.

Shutdown (SIGINT or SIGTERM): the server keeps listening but answers new requests 503 with
``Retry-After`` while the admitted ones finish, then closes; a second signal stops it at once.
"""
from __future__ import annotations

import ipaddress
import socket
import sys
import time
from typing import Callable, Dict, Optional, Sequence

from ..loaded_model import LoadedModel
from ..settings import EvalSettings
from .work import Service

#: Connections served at once; beyond them uvicorn itself answers 503 (without Retry-After).
MAX_CONNECTIONS = 1000
#: Seconds a client may take to send a request's headers (``--header-timeout``; :mod:`.guard`).
HEADER_TIMEOUT = 10.0


class ExposureError(ValueError):
    """Listening on a non-loopback address without a token or ``--insecure``."""


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_exposure(host: str, token: Optional[str], insecure: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless ``insecure``.

    Raises
    ------
    ExposureError
    """
    if is_loopback(host) or token or insecure:
        return
    raise ExposureError(f"--host {host} is not a loopback address: anyone who can reach it could run "
                        f"segmentations. Give --token TOKEN (or $CELLFLOW_RT_TOKEN) so that requests must "
                        f"carry 'Authorization: Bearer TOKEN', or --insecure to allow it without a token")


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (port 0: a free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def load_models(names: Sequence[str], providers, strict_provider: bool, threads: Optional[int],
                precision: str) -> Dict[str, LoadedModel]:
    """Load each model once (by registry name; the first is the default), keyed by its name."""
    models: Dict[str, LoadedModel] = {}
    for name in names:
        model = LoadedModel.load(name, providers=providers, strict_provider=strict_provider,
                                 num_threads=threads, precision=precision)
        models.setdefault(name, model)
    return models


def warm_up(models: Dict[str, LoadedModel]) -> float:
    """Segment the bundled example image once per model (loads numba's kernels, sizes ONNX Runtime's
    buffers) so that the first request pays only its own work; returns the seconds spent."""
    from ..examples import example_image_path
    from ..io import imread
    from ..pipeline import segment

    tic = time.perf_counter()
    image = imread(example_image_path())
    for model in models.values():
        segment(image, model, EvalSettings(channels=(0, 0), diameter=float(model.diam_mean)))
    return time.perf_counter() - tic


def run_server(service: Service, sock: socket.socket, token: Optional[str] = None, access_log: bool = True,
               on_ready: Callable[[str], None] = print, header_timeout: float = HEADER_TIMEOUT) -> None:
    """Serve ``service`` on the bound ``sock`` until SIGINT/SIGTERM (then drain and return); a
    connection whose request headers take over ``header_timeout`` seconds is closed."""
    import uvicorn

    from .app import create_app
    from .guard import header_timeout_protocol

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, with a first signal that drains instead of closing at once."""

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                host, port = sock.getsockname()[:2]
                on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")

        def handle_exit(self, sig, frame):
            if service.draining:  # a second signal: stop now
                self.should_exit = self.force_exit = True
            else:
                service.start_draining(grace=service.limits.timeout + 5)

        async def on_tick(self, counter):
            if service.drained():
                self.should_exit = True
            return await super().on_tick(counter)

    app = create_app(service, token=token)
    slow = header_timeout_protocol(header_timeout, lambda: app.state.metrics.errors.labels("slow_headers").inc())
    config = uvicorn.Config(app, log_level="info", access_log=access_log, http=slow,
                            lifespan="on", limit_concurrency=MAX_CONNECTIONS, timeout_graceful_shutdown=10,
                            server_header=False)
    DrainingServer(config).run(sockets=[sock])
    sys.stdout.flush()
