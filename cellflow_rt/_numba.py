"""Shared numba settings: on-disk caching in a writable directory.

numba writes its cache next to the source files by default, which fails in a read-only install
(a Docker image), and it ignores a cache directory it cannot write to even when the entries there
are valid. So: ``NUMBA_CACHE_DIR`` when set, else a user cache directory; and when that directory
exists but is read-only (a pre-warmed cache in a ``--read-only`` container), a copy of it in the
temporary directory. numba reads its configuration when it is first imported, so this module is
imported by ``cellflow_rt/__init__.py`` before any kernel module; if the caller imported numba
earlier, the setting is also applied to numba's live configuration.
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "cellflow-rt" / "numba")


def _writable(path: Path) -> Path:
    """``path`` if numba can write there, else a private copy of it in the temporary directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    copy = Path(tempfile.gettempdir()) / f"cellflow-rt-numba-{uid}"
    if path.is_dir() and not copy.exists():
        shutil.copytree(path, copy, dirs_exist_ok=True)
    copy.mkdir(parents=True, exist_ok=True)
    return copy


def configure_cache() -> str:
    """Point numba's cache at a writable directory (see the module docstring); return it."""
    cache = str(_writable(Path(os.environ.get("NUMBA_CACHE_DIR") or _default_cache_dir())))
    os.environ["NUMBA_CACHE_DIR"] = cache
    if "numba" in sys.modules:
        from numba.core import config
        config.CACHE_DIR = cache
    return cache


CACHE_DIR = configure_cache()

#: Options for every ``numba.njit`` kernel of the package.
NUMBA_OPTS = dict(cache=True, nogil=True)
