"""Shared numba settings: on-disk caching in a writable directory.

numba writes its cache next to the source file by default, which fails in a read-only install
(a Docker image). ``NUMBA_CACHE_DIR`` is honoured when set; otherwise we point numba at a user
cache directory before the first kernel is compiled.
"""
import os
from pathlib import Path


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "cellflow-rt" / "numba")


if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _default_cache_dir()

#: Options for every ``numba.njit`` kernel of the package.
NUMBA_OPTS = dict(cache=True, nogil=True)
