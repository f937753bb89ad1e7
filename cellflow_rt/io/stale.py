"""Removing what killed runs of this tool left behind: ``atomic_write`` temporaries and blockwise
working folders.

A killed process cannot clean up, so its temporaries (``.<token>.tmp.<name>`` beside outputs,
``cellflow-blocks-<tag>-*`` working folders) stay until a later run removes them. Names therefore
carry their writer: a host tag (8 hex digits of a hash of the host name) and the writer's pid. A later
run removes an entry only when all of these hold, so that it never deletes a live process's file or
a user's:

- its name is exactly this tool's pattern with a writer tag (names without one, written by older
  versions or by anyone else, are left alone);
- it was written on this host (pids of other hosts, e.g. over a network file system, say nothing);
- its writer pid no longer exists here;
- neither it nor, for a folder, anything directly in it changed for :data:`STALE_AFTER` seconds
  (a second guard for pid namespaces that share a host name, e.g. containers on the host network).

On Windows nothing is removed (``os.kill(pid, 0)`` would end the process there, not probe it).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

logger = logging.getLogger("cellflow_rt.io")

__all__ = ["STALE_AFTER", "temp_token", "writer_tag", "remove_stale_temporaries", "remove_stale_block_folders"]

#: Seconds without a change after which a dead writer's leftover may be removed.
STALE_AFTER = 600.0
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_NAME = re.compile(r"\.[0-9a-f]{8}([0-9a-f]{8})([0-9a-f]{8})\.tmp\..+", re.S)
_BLOCKS_NAME = re.compile(r"cellflow-blocks-([0-9a-f]{8})([0-9a-f]{8})-.+", re.S)
_swept: set = set()


def writer_tag() -> str:
    """This process's 16 hex digits: host tag then pid."""
    return f"{_HOST}{os.getpid():08x}"


def temp_token() -> str:
    """The token of a temporary name: 8 random hex digits, then :func:`writer_tag`."""
    return secrets.token_hex(4) + writer_tag()


def _newest_change(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    pass
    return newest


def _left_by_dead_writer(path: Path, host: str, pid_hex: str) -> bool:
    if os.name == "nt" or host != _HOST:
        return False
    pid = int(pid_hex, 16)
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass  # the writer is gone
    except OSError:
        return False  # e.g. PermissionError: alive, another user's
    else:
        return False
    return time.time() - _newest_change(path) >= STALE_AFTER


def _sweep(directory: Path, pattern: re.Pattern) -> list:
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        path = Path(entry.path)
        try:
            if not _left_by_dead_writer(path, *match.groups()):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # best effort: a leftover that cannot be removed never fails the run
        logger.warning("removed %s, left by a killed cellflow-rt run", path)
        removed.append(path)
    return removed


def remove_stale_temporaries(directory) -> list:
    """Remove ``atomic_write`` temporaries that killed runs left in ``directory`` (once per process).

    Parameters
    ----------
    directory : str or path-like
        An output folder.

    Returns
    -------
    list of Path
        What was removed (empty when the folder was already swept by this process).
    """
    directory = Path(directory)
    key = os.path.abspath(directory)
    if key in _swept:
        return []
    _swept.add(key)
    return _sweep(directory, _TEMP_NAME)


def remove_stale_block_folders(parent) -> list:
    """Remove ``cellflow-blocks-*`` working folders that killed blockwise runs left in ``parent``.

    Returns
    -------
    list of Path
        What was removed.
    """
    return _sweep(Path(parent), _BLOCKS_NAME)
