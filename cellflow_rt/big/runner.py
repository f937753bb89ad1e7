"""Running lists of block tasks on dask's threaded scheduler or on a dask.distributed cluster.

A stage is a list of ``dask.delayed`` calls; :meth:`Runner.map` computes them and reports each one
that finishes through the user's progress callback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

#: Scheduler names that mean "dask's local schedulers in this process".
LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "single-threaded")


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    stage : str
        ``"statistics"`` (normalisation pass), ``"segment"``, ``"overlaps"``, ``"write"``.
    done : int
        Items finished in this stage (for ``"segment"``, skipped empty blocks count as finished).
    total : int
        Items in this stage.
    skipped : int
        Empty blocks skipped by the foreground test (``"segment"`` only).
    seconds : float
        Time since the stage started.
    """

    stage: str
    done: int
    total: int
    skipped: int = 0
    seconds: float = 0.0


class Runner:
    """Computes stages of delayed tasks on ``scheduler``.

    Parameters
    ----------
    scheduler : str or distributed.Client
        ``"threads"`` (default), ``"sync"``, a ``distributed.Client``, or a scheduler address
        (``"tcp://host:8786"``) to connect to (and disconnect from when closed).
    num_workers : int, optional
        Threads of the threaded scheduler (default: dask's, the number of cores).
    progress : callable, optional
        Called with a :class:`Progress` after every finished task.
    """

    def __init__(self, scheduler="threads", num_workers: Optional[int] = None,
                 progress: Optional[Callable[[Progress], None]] = None):
        self.client = None
        self._owns_client = False
        self.scheduler = scheduler or "threads"
        self.num_workers = num_workers
        self.progress = progress
        if isinstance(self.scheduler, str) and self.scheduler not in LOCAL_SCHEDULERS:
            from distributed import Client

            self.client = Client(self.scheduler)
            self._owns_client = True
        elif not isinstance(self.scheduler, str):
            if not hasattr(self.scheduler, "compute") or not hasattr(self.scheduler, "gather"):
                raise TypeError(f"scheduler: expected 'threads', 'sync', a scheduler address or a distributed.Client, "
                                f"got {type(self.scheduler).__name__}")
            self.client = self.scheduler

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
            self._owns_client = False

    def _report(self, stage: str, done: int, total: int, skipped: int, start: float) -> None:
        if self.progress is not None:
            self.progress(Progress(stage, done, total, skipped, time.perf_counter() - start))

    def map(self, stage: str, tasks: Sequence, skipped: int = 0) -> List:
        """Compute ``tasks`` (dask.delayed), results in the same order."""
        start = time.perf_counter()
        total = len(tasks) + skipped
        self._report(stage, skipped, total, skipped, start)
        if not tasks:
            return []
        if self.client is not None:
            from distributed import as_completed

            futures = self.client.compute(list(tasks))
            for done, _ in enumerate(as_completed(futures), start=skipped + 1):
                self._report(stage, done, total, skipped, start)
            results = self.client.gather(futures)
            del futures
            return list(results)

        import dask
        from dask.callbacks import Callback

        keys = {t.key for t in tasks}
        counter = [skipped]

        def posttask(key, result, dsk, state, worker_id):
            if key in keys:
                counter[0] += 1
                self._report(stage, counter[0], total, skipped, start)

        scheduler = "sync" if self.scheduler in ("synchronous", "single-threaded") else self.scheduler
        with Callback(posttask=posttask):
            return list(dask.compute(*tasks, scheduler=scheduler, num_workers=self.num_workers))

    def compute(self, collections: Sequence) -> None:
        """Compute dask collections for their side effects (e.g. ``da.store``)."""
        if self.client is not None:
            self.client.gather(self.client.compute(list(collections)))
        else:
            import dask

            dask.compute(*collections, scheduler="sync" if self.scheduler != "threads" else "threads",
                         num_workers=self.num_workers)
