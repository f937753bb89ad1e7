"""The two errors of the file boundary: an input that cannot be read, an output that cannot be written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["ImageReadError", "OutputWriteError", "PathLike"]

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file (or an image file's bytes in memory) is missing, empty, corrupt, truncated or of
    an unsupported type.

    ``path`` is the file, or the name given to bytes in memory (None: no name); ``problem`` is the
    message without it.
    """

    def __init__(self, path: Optional[PathLike], problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = "" if path is None else f" {os.fspath(path)!r}"
        super().__init__(f"cannot read image{where}: {problem}")


class OutputWriteError(OSError):
    """An output file could not be written (the message names the file and the reason)."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot write {os.fspath(path)!r}: {problem}")
