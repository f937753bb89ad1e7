"""The errors of :mod:`cellflow_rt.convert`.

They subclass the exporter's :class:`~cellflow_rt.export.checkpoint.CheckpointError` (itself a
``ValueError``), so code that handles the exporter's refusals handles the converter's too. Size
models are read by the exporter's safe reader, whose :class:`SizeModelError` is re-exported here.
"""
from __future__ import annotations

import os

from cellflow_rt.export.checkpoint import CheckpointError
from cellflow_rt.export.size_model import SizeModelError

__all__ = ["CheckpointError", "CheckpointFormatError", "UnsafeCheckpointError", "ConversionCheckError",
           "SizeModelError"]


class CheckpointFormatError(CheckpointError):
    """A checkpoint file is truncated, malformed, or holds something other than tensors.

    Parameters
    ----------
    path : str or path-like
        The file.
    problem : str
        What is wrong with it.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class UnsafeCheckpointError(CheckpointFormatError):
    """A checkpoint's pickle names a global outside the allow-list (it could run code).

    Nothing the pickle names is imported or called: the refusal happens at the name lookup.

    Attributes
    ----------
    global_name : str
        ``module.name`` of the refused global (e.g. ``posix.system``).
    """

    def __init__(self, path, global_name: str):
        self.global_name = global_name
        super().__init__(path, f"refusing to load '{global_name}': a checkpoint may only name tensor, storage "
                               "and container types (the file may try to run code; it was not run)")


class ConversionCheckError(CheckpointError):
    """The converted graph failed its self-check (non-finite outputs or wrong shapes); nothing was written."""
