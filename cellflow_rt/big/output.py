"""The output zarr of a blockwise run, complete or absent: built under a temporary name beside it
and renamed onto its final name only once every chunk is written.

A run killed while it writes leaves ``.<hex>.tmp.<name>`` (the pattern of
:func:`cellflow_rt.io.atomic_write`), never a half-written ``<name>`` whose missing chunks would
read as background. The next run for the same output removes such leftovers and starts clean.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, List

from ..io.stale import temp_token

logger = logging.getLogger("cellflow_rt.big")

__all__ = ["atomic_zarr", "interrupted_outputs"]


def interrupted_outputs(output) -> List[Path]:
    """Temporary zarrs of earlier runs for ``output`` that did not finish (killed or failed)."""
    output = Path(output)
    if not output.parent.is_dir():
        return []
    return sorted(p for p in output.parent.glob(f".*.tmp.{output.name}") if p.name.split(".tmp.", 1)[1] == output.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_zarr(output) -> Iterator[Path]:
    """Yield the temporary path to write ``output``'s zarr to; on success it replaces ``output``.

    Parameters
    ----------
    output : str or path-like
        The final zarr path (an existing one is replaced, as every output of ``run`` is).

    Yields
    ------
    Path
        Where to create the zarr. If the block raises, it is removed and ``output`` is untouched.
    """
    output = Path(output)
    for stale in interrupted_outputs(output):
        logger.warning("removing %s, left by an interrupted run for %s; starting clean", stale, output.name)
        _remove(stale)
    tmp = output.with_name(f".{temp_token()}.tmp.{output.name}")
    try:
        yield tmp
        if output.exists() or output.is_symlink():
            aside = output.with_name(f".{secrets.token_hex(4)}.old.{output.name}")
            os.replace(output, aside)  # a directory cannot be replaced by rename: move the old one aside
            os.replace(tmp, output)
            _remove(aside)
        else:
            os.replace(tmp, output)
    except BaseException:
        _remove(tmp)
        raise
