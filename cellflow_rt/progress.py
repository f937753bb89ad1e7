"""How a run tells the user where it is: progress bars on a terminal, plain lines otherwise.

:class:`Reporter` is what ``cellflow-rt run`` talks to. On a terminal (stderr is a TTY) it draws
tqdm bars on stderr (files of a batch, blocks of a blockwise run, and the network's tiles of one
image once that image has taken :data:`TILE_BAR_DELAY` seconds) and prints its lines above them;
elsewhere it draws nothing and prints plain lines only, so that logs stay greppable: one line per
file, and for blockwise stages one line per tenth of the blocks, never one per block.

:class:`KernelCompileNotice` says once that numba is compiling the kernels (only a first run on a
machine compiles; later runs load them from the cache) and, at the end, how long that took: it
listens to numba's ``numba:compile`` events, which fire on cache misses only.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, TextIO

__all__ = ["Reporter", "StageProgress", "KernelCompileNotice", "TileProgressNetwork", "TILE_BAR_DELAY"]

#: Seconds an image's network runs before its tile bar appears (short images get none).
TILE_BAR_DELAY = 2.0
#: Tiles per network call when tiles are counted (the network has no cross-tile operation).
TILES_PER_CALL = 8


class Reporter:
    """Lines and bars for one run.

    Parameters
    ----------
    interactive : bool, optional
        Draw bars; default: whether stderr is a terminal.
    verbose : bool
        Whether :meth:`detail` lines are printed (``--verbose``).
    out, err : text streams, optional
        Where lines go (default: sys.stdout, sys.stderr; bars always go to ``err``).
    """

    def __init__(self, interactive: Optional[bool] = None, verbose: bool = False,
                 out: Optional[TextIO] = None, err: Optional[TextIO] = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = _isatty(self.err) if interactive is None else bool(interactive)
        self.verbose = verbose

    def line(self, text: str, err: bool = False) -> None:
        """Print a line (above any bar)."""
        stream = self.err if err else self.out
        if self.interactive:
            from tqdm import tqdm
            tqdm.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def detail(self, text: str) -> None:
        """A ``--verbose`` line (stderr)."""
        if self.verbose:
            self.line(text, err=True)

    def bar(self, total: int, desc: str, unit: str, delay: float = 0.0, position: Optional[int] = None):
        """A tqdm bar on stderr; disabled (draws nothing) when not interactive."""
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=self.err, disable=not self.interactive, leave=False,
                    dynamic_ncols=True, delay=delay, position=position)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class StageProgress:
    """Progress of named stages counted in items (``big.Progress`` reports of a blockwise run).

    Interactive: one bar per stage. Otherwise a line ``  <stage>: done/total <unit> (s)`` when a stage
    starts, each time another tenth of it is done, and when it ends.
    """

    def __init__(self, reporter: Reporter, unit: str = "blocks"):
        self.reporter, self.unit = reporter, unit
        self._bars = {}
        self._tenths = {}

    def __call__(self, report) -> None:
        stage, done, total = report.stage, report.done, report.total
        skipped = f", {report.skipped} empty skipped" if getattr(report, "skipped", 0) else ""
        if self.reporter.interactive:
            bar = self._bars.get(stage)
            if bar is None:
                bar = self._bars[stage] = self.reporter.bar(total, stage, self.unit)
            bar.n = done
            bar.set_postfix_str(skipped.lstrip(", "), refresh=False)
            bar.refresh()
            if done >= total:
                bar.close()
            return
        tenth = 10 * done // max(total, 1)
        if self._tenths.get(stage) != tenth:
            self._tenths[stage] = tenth
            self.reporter.line(f"  {stage}: {done}/{total} {self.unit}{skipped} ({report.seconds:.1f} s)", err=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class TileProgressNetwork:
    """A network whose ``run`` counts tiles on a bar (delayed: only images that take a while show it).

    ``run`` passes the tiles to the wrapped network :data:`TILES_PER_CALL` at a time; results are the
    same (the network has no operation across tiles). Every other attribute is the wrapped network's.
    """

    def __init__(self, net, reporter: Reporter):
        self._net = net
        self._reporter = reporter
        self._bar = None

    def __getattr__(self, name):
        return getattr(self._net, name)

    def run(self, tiles, batch_size: int = 8):
        import numpy as np

        n = len(tiles)
        step = max(TILES_PER_CALL, batch_size)
        if n <= step:
            return self._net.run(tiles, batch_size=batch_size)
        bar = self._reporter.bar(n, "tiles", "tile", delay=TILE_BAR_DELAY)
        try:
            flows, styles = [], []
            for start in range(0, n, step):
                y, s = self._net.run(tiles[start:start + step], batch_size=batch_size)
                flows.append(y)
                styles.append(s)
                bar.update(len(y))
        finally:
            bar.close()
        return np.concatenate(flows), np.concatenate(styles)


class KernelCompileNotice:
    """Announce numba compilation once, and measure it (see the module docstring).

    Use as a context manager around a run; ``seconds`` is the time spent compiling.
    """

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.seconds = 0.0
        self._announced = False
        self._depth = threading.local()
        self._started = 0.0
        self._listener = None

    def __enter__(self):
        from numba.core import event

        notice = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                notice._start()

            def on_end(self, ev):
                notice._end()

        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event

        event.unregister("numba:compile", self._listener)
        if self.seconds > 0:
            from . import _numba
            self.say(f"compiled the numba kernels in {self.seconds:.1f} s (once per machine; cached in "
                     f"{_numba.CACHE_DIR})")
        return False

    def _start(self):
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        if depth:
            return  # a kernel compiled as part of another: counted with the outer one
        if not self._announced:
            self._announced = True
            self.say("compiling numba kernels for this machine (first run only; later runs load them from the cache)")
        self._started = time.perf_counter()

    def _end(self):
        self._depth.n -= 1
        if self._depth.n == 0:
            self.seconds += time.perf_counter() - self._started
