"""Writing files all at once or not at all.

Every file this package writes goes through :func:`atomic_write`, so an interrupted or failed write
never leaves a partial output file behind.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import OutputWriteError, PathLike
from .stale import remove_stale_temporaries, temp_token

__all__ = ["atomic_write", "write_bytes", "write_tiff"]


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write a file all at once or not at all.

    Yields a temporary path in the destination's folder (hidden, same name at the end so that
    extension-driven writers behave the same); when the block finishes the file is flushed to disk
    and renamed onto ``path`` (``os.replace``, atomic on POSIX and Windows). If the block raises, the
    temporary file is removed and ``path`` is left as it was. Temporaries that killed runs left in the
    folder are removed first (see :mod:`cellflow_rt.io.stale`).

    Parameters
    ----------
    path : str or path-like
        Final destination; its folder must exist.

    Yields
    ------
    Path
        Where to write (an empty file already created, with the usual permissions).

    Raises
    ------
    OutputWriteError
        The folder is missing or not writable, or the block wrote no file.

    Examples
    --------
    >>> with atomic_write("out/masks.tif") as tmp:  # doctest: +SKIP
    ...     tifffile.imwrite(tmp, masks)
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputWriteError(path, f"output folder {os.fspath(directory)!r} does not exist")
    # the name carries this process's host tag and pid, so that a later run can tell when its writer
    # was killed and remove it (cellflow_rt.io.stale); that sweep runs once per folder per process
    remove_stale_temporaries(directory)
    tmp = directory / f".{temp_token()}.tmp.{path.name}"
    try:
        # created here with O_EXCL (no clash with another writer) and mode 0o666 minus the umask,
        # the permissions a plain open() gives, unlike tempfile's 0o600
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputWriteError(path, f"cannot create a file in {os.fspath(directory)!r} "
                                     f"({exc.strerror or exc})") from exc
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputWriteError(path, "the writer produced no file")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            raise OutputWriteError(path, exc.strerror or str(exc)) from exc
        raise
    _fsync_directory(directory)


def write_tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    """``tifffile.imwrite(path, data, **kwargs)`` through :func:`atomic_write`; returns ``path``."""
    import tifffile

    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`; returns ``path``."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path
