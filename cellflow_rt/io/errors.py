"""The two errors of the file boundary: an input that cannot be read, an output that cannot be written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["ImageReadError", "OutputWriteError", "PathLike"]

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file is missing, empty, corrupt, truncated or of an unsupported type."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot read image {os.fspath(path)!r}: {problem}")


class OutputWriteError(OSError):
    """An output file could not be written (the message names the file and the reason)."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot write {os.fspath(path)!r}: {problem}")
