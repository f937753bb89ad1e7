"""Where published models live on disk: our cache of converted models, Cellpose's own cache, and a
lock that keeps two processes from fetching the same model at once.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

#: Moves the cache of converted published models.
MODELS_DIR_ENV = "CELLFLOW_RT_MODELS_DIR"
#: Cellpose's own cache folder variable (Cellpose 3 and 4 both read it).
CELLPOSE_MODELS_ENV = "CELLPOSE_LOCAL_MODELS_PATH"
#: Sub-folder of the cache where downloads wait to be converted.
DOWNLOADS = "downloads"


def platform_cache_dir() -> Path:
    """Return cellflow-rt's folder in the platform's cache (may not exist yet).

    ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%``
    on Windows, then ``cellflow-rt`` (``cellflow-rt/Cache`` on Windows).
    """
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "cellflow-rt" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "cellflow-rt"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "cellflow-rt"


def cache_dir() -> Path:
    """Return the cache of converted published models (may not exist yet).

    ``$CELLFLOW_RT_MODELS_DIR`` when set; else ``models`` in :func:`platform_cache_dir`.
    """
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return platform_cache_dir() / "models"


def cellpose_cache_dir() -> Path:
    """Return Cellpose's model cache: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get(CELLPOSE_MODELS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


def manifest_path(name: str) -> Path:
    """Return where the converted model ``name``'s manifest is (or will be) in the cache."""
    return cache_dir() / f"{name}.json"


@contextlib.contextmanager
def model_lock(name: str, timeout: float = 3600.0) -> Iterator[None]:
    """Hold an exclusive lock on fetching ``name`` (a ``.NAME.lock`` file in the cache).

    A second process that wants the same model waits here, then finds it cached. The lock is an
    OS file lock (``fcntl.flock`` / ``msvcrt.locking``), released by the OS if the holder dies.

    Raises
    ------
    TimeoutError
        Not acquired within ``timeout`` seconds (the message names the lock file).
    """
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.lock"
    deadline = time.monotonic() + timeout
    with open(path, "a+b") as f:
        while not _try_lock(f):
            if time.monotonic() > deadline:
                raise TimeoutError(f"another process has held {path} for over {timeout:.0f} s while fetching "
                                   f"{name!r}; if none is running, delete that file")
            time.sleep(0.2)
        try:
            yield
        finally:
            _unlock(f)


if sys.platform == "win32":
    import msvcrt

    def _try_lock(f) -> bool:
        f.seek(0)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(f) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(f) -> bool:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
