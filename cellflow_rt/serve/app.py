"""The HTTP side (Starlette): routes, the bearer token, and every failure as one line of text.

Every route goes through :func:`create_app`'s ``endpoint`` wrapper: it checks the token (constant-time
comparison), turns a :class:`Problem` into its status with a one-line ``text/plain`` reason, reads
and discards an unread request body before an early answer (so that the client, still sending,
gets the answer rather than a reset connection), and counts the request in the metrics. Only a bug
gives a 500; bad input is a 4xx, a full queue or a shutdown a 503 with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from typing import Dict, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from ..preprocess import ImageShapeError
from .answers import NotAcceptableError, choose_answer
from .decode import (BadImageError, ImageTooLargeError, UnsupportedMediaTypeError, body_format, check_header,
                     check_media_type)
from .metrics import Metrics
from .openapi import openapi_document
from .options import OptionError, parse_query
from .work import ClientGoneError, QueueFullError, Service, WorkTimeoutError, segment_body

logger = logging.getLogger("cellflow_rt.serve")

#: Status recorded (never sent) for a request whose client went away.
CLIENT_CLOSED = 499
#: Seconds spent reading and discarding an unread body before an early answer.
_DRAIN_SECONDS = 10.0


class Problem(Exception):
    """An answer other than 200: status, one-line reason, the metrics' reason label, extra headers."""

    def __init__(self, status: int, reason: str, kind: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(reason)
        self.status, self.reason, self.kind = status, reason, kind
        self.headers = dict(headers or {})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _problem_for(exc: BaseException) -> Problem:
    """The answer for an exception raised while handling ``POST /segment``."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, QueueFullError):
        return Problem(503, str(exc), "busy", {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, WorkTimeoutError):
        if exc.started:
            return Problem(504, str(exc), "timeout")
        return Problem(503, str(exc), "busy", {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, UnsupportedMediaTypeError):
        return Problem(415, str(exc), "unsupported_type")
    if isinstance(exc, ImageTooLargeError):
        return Problem(413, str(exc), "too_large")
    if isinstance(exc, NotAcceptableError):
        return Problem(406, str(exc), "not_acceptable")
    if isinstance(exc, OptionError):
        return Problem(400, str(exc), "bad_option")
    if isinstance(exc, (BadImageError, ImageShapeError, ValueError)):
        return Problem(400, str(exc), "bad_image")
    if isinstance(exc, MemoryError):
        return Problem(413, "out of memory while segmenting this image", "too_large")
    logger.exception("internal error while answering a request")
    return Problem(500, f"internal error ({type(exc).__name__}: {exc})", "internal")


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is over this server's limit of {limit} bytes", "too_large",
                          {"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard_body(request: Request, limit: int) -> None:
    """Read and drop what is left of the body (at most ``limit`` bytes, for a few seconds)."""
    if getattr(request.state, "body_read", False):
        return

    async def drain():
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return
    try:
        await asyncio.wait_for(drain(), _DRAIN_SECONDS)
    except (ClientDisconnect, asyncio.TimeoutError, RuntimeError):
        pass  # the answer goes out (or not) all the same


async def _client_gone(request: Request) -> None:
    """Complete when the client disconnects (after its body has been read)."""
    if (await request.receive())["type"] != "http.disconnect":
        await asyncio.Event().wait()  # not ours to read (the server's own protocol state): stop watching


def _server_timing(timings: Dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in timings.items())


def create_app(service: Service, token: Optional[str] = None) -> Starlette:
    """The ASGI application serving ``service``; with ``token``, every route needs ``Authorization:
    Bearer TOKEN``."""
    metrics = Metrics(service)
    openapi = openapi_document(token_required=bool(token))
    expected = token.encode() if token else None
    limits = service.limits

    def authorized(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes the same time wherever the first difference is
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)

    def endpoint(name: str):
        def wrap(handler):
            @functools.wraps(handler)
            async def run(request: Request) -> Response:
                started = time.perf_counter()
                reason = ""
                try:
                    if expected is not None and not authorized(request):
                        raise Problem(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                                      "unauthorized", {"WWW-Authenticate": 'Bearer realm="cellflow-rt"'})
                    response = await handler(request)
                except ClientDisconnect:
                    response, reason = Response(status_code=CLIENT_CLOSED), "disconnected"
                except Exception as exc:  # every failure becomes one line with its status
                    problem = _problem_for(exc)
                    if problem.headers.get("Connection") != "close":
                        await _discard_body(request, limits.max_body_bytes)
                    response = PlainTextResponse(_one_line(problem.reason), problem.status, problem.headers)
                    reason = problem.kind
                metrics.observe(name, response.status_code, time.perf_counter() - started, reason)
                return response
            return run
        return wrap

    @endpoint("/segment")
    async def segment(request: Request) -> Response:
        arrived = time.perf_counter()
        options = parse_query(request.query_params.multi_items(), service.models, service.default_model)
        timeout = min(limits.timeout, options.timeout or limits.timeout)
        deadline = time.monotonic() + timeout
        answer_type = choose_answer(request.headers.get("accept", ""))
        content_type = request.headers.get("content-type", "")
        check_media_type(content_type)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise Problem(413, f"the body ({declared} bytes) is over this server's limit of "
                               f"{limits.max_body_bytes} bytes", "too_large", {"Connection": "close"})
        service.admit()
        try:
            try:
                body = await asyncio.wait_for(_read_body(request, limits.max_body_bytes),
                                              max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise Problem(408, f"the body did not arrive within the request timeout of {timeout:g} s",
                              "timeout", {"Connection": "close"}) from None
            request.state.body_read = True
            kind = body_format(content_type, body)
            # a header over the limit never waits for a worker (parsed off the event loop: a TIFF's IFDs)
            await asyncio.to_thread(check_header, body, kind, limits.max_values)
            gone = asyncio.ensure_future(_client_gone(request))
            try:
                job = functools.partial(segment_body, body, kind, options, answer_type, limits)
                del body
                uploaded = time.perf_counter()
                outcome = await service.run(job, service.models[options.model], deadline, gone, timeout)
            finally:
                gone.cancel()
        except ClientGoneError:
            raise ClientDisconnect() from None
        finally:
            service.release()
        work = sum(outcome.timings.values())
        timings = {"upload": uploaded - arrived,
                   "queue": max(0.0, time.perf_counter() - uploaded - work), **outcome.timings}
        metrics.observe_stages(timings)
        headers = {"X-Masks-Count": str(outcome.n_masks), "X-Diameter": f"{outcome.diameter:.4g}",
                   "Server-Timing": _server_timing(timings)}
        return Response(outcome.body, media_type=answer_type, headers=headers)

    @endpoint("/health")
    async def health(request: Request) -> Response:
        body = {"status": "draining" if service.draining else "ok", "version": __version__,
                "models": list(service.models), "default_model": service.default_model,
                "workers": service.workers, "max_queue": service.max_queue,
                "queue": {"waiting": service.waiting, "busy": service.busy, "admitted": service.admitted},
                "limits": {"max_body_bytes": limits.max_body_bytes, "max_image_mpx": limits.max_values / 1e6,
                           "timeout_s": limits.timeout}}
        return JSONResponse(body, status_code=503 if service.draining else 200)

    @endpoint("/models")
    async def models(request: Request) -> Response:
        listed = [{"name": name, "diam_mean": float(m.diam_mean), "diam_labels": float(m.diam_labels),
                   "nchan": m.nchan, "default_channels": list(m.info.default_channels),
                   "size_model": m.size_model is not None, "provider": m.net.providers[0],
                   "precision": m.net.precision} for name, m in service.models.items()]
        return JSONResponse({"default": service.default_model, "models": listed})

    @endpoint("/metrics")
    async def metrics_route(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @endpoint("/openapi.json")
    async def openapi_route(request: Request) -> Response:
        return JSONResponse(openapi)

    @endpoint("/")
    async def index(request: Request) -> Response:
        return PlainTextResponse(f"cellflow-rt {__version__}: POST /segment (image bytes; settings as query "
                                 f"parameters), GET /health, /models, /metrics, /openapi.json\n")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        await _discard_body(request, limits.max_body_bytes)
        kind = "not_found" if exc.status_code == 404 else "bad_request"
        metrics.observe("other", exc.status_code, 0.0, kind)
        reason = "no such endpoint" if exc.status_code == 404 else _one_line(exc.detail)
        return PlainTextResponse(f"{reason}: {request.method} {request.url.path}", exc.status_code, exc.headers)

    routes = [Route("/segment", segment, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/models", models, methods=["GET"]), Route("/metrics", metrics_route, methods=["GET"]),
              Route("/openapi.json", openapi_route, methods=["GET"]), Route("/", index, methods=["GET"])]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(service.shutdown)  # jobs still running finish first

    # gzip only for clients that ask (Accept-Encoding), at the fastest level: answers are label images
    middleware = [Middleware(GZipMiddleware, minimum_size=4096, compresslevel=1)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error},
                    lifespan=lifespan)
    app.state.metrics = metrics  # the server's connection guard counts what it closes here
    return app
