"""Where the readers take an image from: a file on disk (a :class:`~pathlib.Path`) or an image
file's bytes in memory (an :class:`io.BytesIO`).

tifffile, Pillow and numpy each open either one; the few checks that look at the raw bytes (a PNG's
header, a JPEG's last marker) get them through these helpers, so that :func:`~.read.imread` and
:func:`~.read.imread_bytes` run the same code.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import BinaryIO, Iterator, Union

__all__ = ["Source", "open_source", "source_bytes", "source_head"]

Source = Union[Path, io.BytesIO]


@contextlib.contextmanager
def open_source(source: Source) -> Iterator[BinaryIO]:
    """A binary file at its start: the path opened (and closed after), or the buffer itself."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            yield fh
    else:
        source.seek(0)
        yield source


def source_bytes(source: Source) -> bytes:
    """All the bytes."""
    return source.read_bytes() if isinstance(source, Path) else source.getvalue()


def source_head(source: Source, size: int) -> bytes:
    """The first ``size`` bytes (fewer when the file is shorter)."""
    with open_source(source) as fh:
        head = fh.read(size)
    if not isinstance(source, Path):
        source.seek(0)
    return head
