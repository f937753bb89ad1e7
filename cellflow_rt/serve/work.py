"""The warm models and the bounded queue in front of them.

One :class:`~cellflow_rt.loaded_model.LoadedModel` per model is loaded once and shared by every
request (ONNX Runtime sessions accept concurrent runs). ``workers`` threads run segmentations; at
most ``max_queue`` more admitted requests wait for one. A request beyond that is not queued: the
caller answers 503 with ``Retry-After``, so the backlog never grows without bound. The dynamics
stage runs under one lock: numba's default threading layer (workqueue) must not be entered by two
threads at once, and on a few cores two concurrent dynamics would only share them anyway; the
networks of different requests still overlap with it, as in ``cellflow-rt run``'s batches.

A worker thread cannot be stopped mid-pipeline: a request that times out or whose client goes away
is answered (or dropped) at once, while its thread finishes the work and only then frees the worker,
so the number of threads busy never exceeds ``workers``.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Dict, Optional

from ..loaded_model import LoadedModel
from ..pipeline import finish, predict
from .answers import count_masks, encode_answer
from .decode import decode_image
from .limits import Limits, check_work
from .options import SegmentOptions


class QueueFullError(RuntimeError):
    """Every worker is busy and the queue is full, or the server is draining (503)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class WorkTimeoutError(RuntimeError):
    """The request's time ran out while it waited for a worker or while it was segmented."""

    def __init__(self, message: str, started: bool, retry_after: int):
        super().__init__(message)
        self.started = started
        self.retry_after = retry_after


class ClientGoneError(RuntimeError):
    """The client disconnected before its answer was ready."""


@dataclass
class Outcome:
    """A segmented request: the answer's bytes and what the headers and metrics report."""

    body: bytes
    n_masks: int
    diameter: float
    shape: tuple
    timings: Dict[str, float] = field(default_factory=dict)


def segment_body(body: bytes, kind: str, options: SegmentOptions, answer_type: str, limits: Limits,
                 model: LoadedModel, dynamics_lock: threading.Lock) -> Outcome:
    """Decode, segment and encode one request (runs in a worker thread; the dynamics under the lock)."""
    from ..diameter import estimate_diameter

    timings = {}
    tic = time.perf_counter()
    image = decode_image(body, kind, limits.max_values)
    settings = options.settings
    timings["decode"] = time.perf_counter() - tic
    if options.estimate_diameter and not settings.do_3D and image.ndim < 4:
        tic = time.perf_counter()
        with dynamics_lock:  # the estimate runs the dynamics too
            diameter, _ = estimate_diameter(image, model, settings)
        settings = settings.with_(diameter=diameter)
        timings["diameter_estimate"] = time.perf_counter() - tic
    check_work(image.shape, model, settings, limits)
    prediction = predict(image, model, settings)
    del image
    with dynamics_lock:
        seg = finish(prediction)
    del prediction
    timings.update(seg.timings)
    n_masks = count_masks(seg.masks)
    summary = {"model": model.name, "n_masks": n_masks, "diameter": float(seg.diameter),
               "shape": list(seg.masks.shape), "timings": dict(timings)}
    tic = time.perf_counter()
    body_out = encode_answer(answer_type, seg.masks, summary)
    timings["encode"] = time.perf_counter() - tic
    return Outcome(body_out, n_masks, float(seg.diameter), tuple(seg.masks.shape), timings)


class Service:
    """Models, worker threads and the admission count shared by all requests.

    Parameters
    ----------
    models : dict
        Model name -> LoadedModel (the first is the default).
    limits : Limits
        Per-request limits.
    workers : int
        Segmentations run at once.
    max_queue : int
        Admitted requests allowed to wait for a worker.
    """

    def __init__(self, models: Dict[str, LoadedModel], limits: Limits, workers: int = 1, max_queue: int = 4):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if not models:
            raise ValueError("no model to serve")
        self.models = dict(models)
        self.default_model = next(iter(self.models))
        self.limits = limits
        self.workers = workers
        self.max_queue = max_queue
        self.admitted = 0  # requests between admission and answer (uploading, waiting or running)
        self.waiting = 0  # admitted requests waiting for a worker
        self.busy = 0  # worker threads running a job (including jobs whose request has given up)
        self.draining = False
        self.drain_deadline = math.inf
        self._mean_seconds = 1.0  # running mean of a job's duration, for Retry-After
        self._slots: Optional[asyncio.Semaphore] = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cellflow-serve")
        self._dynamics = threading.Lock()

    # ----------------------------------------------------------------------------------------------
    # admission

    def retry_after(self) -> int:
        """Seconds a turned-away client should wait: the work ahead of it, spread over the workers."""
        ahead = self.waiting + self.busy + 1
        return max(1, math.ceil(ahead * self._mean_seconds / self.workers))

    def admit(self) -> None:
        """Count a request in, or raise :class:`QueueFullError` when there is no room."""
        if self.draining:
            raise QueueFullError("the server is shutting down", self.retry_after())
        if self.admitted >= self.workers + self.max_queue:
            raise QueueFullError(f"busy: {self.workers} worker(s) and a queue of {self.max_queue} are full",
                                 self.retry_after())
        self.admitted += 1

    def release(self) -> None:
        """Count an admitted request out (after its answer, or when it fails or is abandoned)."""
        self.admitted -= 1

    def start_draining(self, grace: float) -> None:
        """Refuse new requests from now on; admitted ones may take up to ``grace`` seconds more."""
        if not self.draining:
            self.draining = True
            self.drain_deadline = time.monotonic() + grace

    def drained(self) -> bool:
        """Draining, and every admitted request has been answered (or the grace period is over)."""
        return self.draining and (self.admitted == 0 or time.monotonic() > self.drain_deadline)

    # ----------------------------------------------------------------------------------------------
    # running

    async def run(self, job: Callable[[LoadedModel, threading.Lock], Outcome], model: LoadedModel,
                  deadline: float, client_gone: Awaitable, timeout: float) -> Outcome:
        """Run ``job(model, dynamics_lock)`` on a worker thread once one is free.

        Parameters
        ----------
        job : callable
            The work (decode, segment, encode).
        deadline : float
            ``time.monotonic()`` by which the answer is due.
        client_gone : awaitable
            Completes when the client disconnects.
        timeout : float
            The request's time limit in seconds (for the messages).

        Raises
        ------
        WorkTimeoutError, ClientGoneError
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        self.waiting += 1
        try:
            acquired = await self._first(self._slots.acquire(), client_gone, deadline)
        finally:
            self.waiting -= 1
        if acquired is None:
            raise WorkTimeoutError(f"busy: no worker became free within the request timeout of {timeout:g} s",
                                   started=False, retry_after=self.retry_after())
        if acquired is client_gone:
            raise ClientGoneError("the client disconnected while waiting in the queue")
        self.busy += 1
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self._pool, job, model, self._dynamics)
        future.add_done_callback(lambda f: self._job_done(f, started))
        done = await self._first(asyncio.shield(future), client_gone, deadline)
        if done is None:
            raise WorkTimeoutError(f"the segmentation took longer than the request timeout of {timeout:g} s",
                                   started=True, retry_after=self.retry_after())
        if done is client_gone:
            raise ClientGoneError("the client disconnected during the segmentation")
        return done.result()

    def _job_done(self, future: asyncio.Future, started: float) -> None:
        self.busy -= 1
        self._slots.release()
        if not future.cancelled() and future.exception() is None:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - started)

    @staticmethod
    async def _first(work: Awaitable, client_gone: Awaitable, deadline: float):
        """``work``'s future when it completes first, ``client_gone`` if that does, None at the deadline.

        ``work`` is cancelled unless it completed (a semaphore acquisition is then not taken;
        a shielded job runs on).
        """
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task, client_gone}, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task
        task.cancel()
        return client_gone if client_gone in done else None

    def shutdown(self) -> None:
        """Wait for running jobs, then stop the worker threads."""
        self._pool.shutdown(wait=True)
