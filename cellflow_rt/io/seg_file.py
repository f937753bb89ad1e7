"""Reading Cellpose ``_seg.npy`` files without letting them run code.

A ``_seg.npy`` is ``np.save`` of a dict: an ``.npy`` header saying "object array", then a pickle.
``np.load(allow_pickle=True)`` would execute whatever the pickle asks for; :func:`load_seg_npy`
unpickles it with :class:`SegUnpickler` instead, which builds only plain data: dicts, lists, tuples,
strings, bytes, numbers, None, and numpy arrays, dtypes and scalars. Any other global a pickle names
(``os.system``, ``builtins.eval``, a numpy helper that runs code...) is refused before it is looked up.

Files come from ``io.masks_flows_to_seg`` and the GUI of Cellpose 3.1.1.1, and from
:func:`cellflow_rt.io.save_seg_npy`.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Union

import numpy as np

from ..pickle_guard import guard_hashing
from .limits import ImageTooLargeError, check_declared_shape

__all__ = ["SegFileError", "RefusedGlobal", "SegUnpickler", "load_seg_npy"]


class SegFileError(ValueError):
    """A ``_seg.npy`` file is missing, malformed, or asks for something other than plain data."""

    def __init__(self, path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot read {os.fspath(path)!r} as a Cellpose _seg.npy: {problem}")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named something other than plain data."""


class _NDArrayName:
    """What ``numpy.ndarray`` names in a pickle: only a token for :func:`_reconstruct`'s first argument.

    numpy's pickles name the ndarray type solely as the subtype passed to ``_reconstruct``; handing
    out ``np.ndarray`` itself would let a pickle call it, ``ndarray((2**31,), "f8")``, and allocate.
    """


def _numpy_pickle_callables() -> dict:
    """The callables numpy's own pickles name, found through numpy (their module moved in numpy 2)."""
    empty_array = np.zeros(1).__reduce__()[0]       # multiarray._reconstruct: an empty ndarray

    def reconstruct(subtype, shape, dtype):
        # numpy's pickles ask for shape (0,) and then fill it from bytes in the file; a crafted one
        # could ask for any shape (or a dtype with a huge subarray), allocated before any data is read
        if subtype is not _NDArrayName:
            raise RefusedGlobal("_reconstruct: only plain numpy arrays are rebuilt")
        dtype = np.dtype(dtype)
        values = np.atleast_1d(np.asarray(shape, dtype=np.int64)).tolist() + [max(1, dtype.itemsize // 8)]
        check_declared_shape(values, None, "pickled array")
        return empty_array(np.ndarray, shape, dtype)
    scalar = np.float32(0).__reduce__()[0]           # multiarray.scalar: a scalar from its bytes
    allowed = {("numpy", "ndarray"): _NDArrayName, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):   # numpy 1 and numpy 2 names
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class SegUnpickler(pickle._Unpickler):
    """An unpickler that builds plain data only (see the module docstring).

    ``find_class`` answers from a fixed table of names; it never imports a module. Besides numpy's
    array, dtype and scalar constructors the table holds ``builtins.complex`` (a number) and
    ``_codecs.encode`` (how protocol 2 pickles bytes).

    It is the standard library's Python implementation of the unpickler (``pickle._Unpickler``):
    its BUILD opcode can be checked here, and a dtype's state is numpy's to set only as numpy
    writes it (a forged ``flags`` field makes numpy treat plain numbers as object pointers).
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    # a dict key nested a million tuples deep crashes the interpreter when hashed (pickle_guard)
    guard_hashing(dispatch)

    def _load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            # numpy's state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
            if not isinstance(state, tuple) or len(state) < 8 or state[2:5] != (None, None, None):
                raise RefusedGlobal("a dtype with subarrays or fields: a _seg.npy holds plain arrays")
            if state[7] != inst.flags:
                raise RefusedGlobal(f"dtype {inst} with flags {state[7]!r} (numpy gives it {inst.flags})")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    _ALLOWED = {**_numpy_pickle_callables(), ("builtins", "complex"): complex,
                ("_codecs", "encode"): codecs.encode}

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refusing to load {module}.{name}: a _seg.npy holds only "
                                         "numpy arrays, dicts, lists, strings and numbers") from None

    def persistent_load(self, pid):
        raise RefusedGlobal("refusing a persistent id: not plain data")


def _read_header(fh, path):
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)
    except ValueError as exc:
        raise SegFileError(path, f"not an .npy file ({exc})") from None
    raise SegFileError(path, f".npy format version {version} is not supported")


def _check_lengths(payload: bytes) -> None:
    """Walk the opcodes once without building anything: every length an opcode declares must fit in
    the pickle (the Python unpickler allocates a BYTEARRAY8's declared length before reading it)."""
    for _ in pickletools.genops(payload):  # raises ValueError for a declared length past the end
        pass


def load_seg_npy(path: Union[str, os.PathLike]) -> dict:
    """Load a ``_seg.npy`` file's dict without running any code it may contain.

    Parameters
    ----------
    path : str or path-like
        The file (written by Cellpose's ``masks_flows_to_seg`` or GUI, or by ``cellflow-rt run``).

    Returns
    -------
    dict
        The saved dict as stored: at least ``masks`` (an integer label array); Cellpose's files also
        hold ``outlines``, ``flows``, ``filename``, ``diameter``, ``chan_choose``, ``ismanual``...

    Raises
    ------
    SegFileError
        The file is missing or not an ``.npy``, its pickle names anything but plain data, or the
        dict has no integer ``masks`` array.
    cellflow_rt.io.limits.ImageTooLargeError
        The pickle asks for an array with more values than :func:`~cellflow_rt.io.limits.max_values`
        allows (refused before it is allocated), or the masks are that large.

    Examples
    --------
    >>> seg = load_seg_npy("cells_seg.npy")  # doctest: +SKIP
    >>> seg["masks"].max()  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise SegFileError(path, "no such file")
    with open(path, "rb") as fh:
        shape, _, dtype = _read_header(fh, path)
        if dtype != np.dtype(object) or shape != ():
            raise SegFileError(path, f"expected a pickled dict, found a plain {dtype} array of shape {shape}")
        payload = fh.read()
    try:
        _check_lengths(payload)
        obj = SegUnpickler(io.BytesIO(payload)).load()
    except RefusedGlobal as exc:
        raise SegFileError(path, str(exc)) from None
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(path, exc.shape, exc.limit, "pickled array") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise SegFileError(path, f"corrupt pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise SegFileError(path, f"expected a dict, found {type(obj).__name__}")
    masks = obj.get("masks")
    if not isinstance(masks, np.ndarray) or masks.dtype.kind not in "iu" or masks.ndim not in (2, 3):
        raise SegFileError(path, "no 2D or 3D integer 'masks' array in the file")
    check_declared_shape(masks.shape, path, "masks array")
    return obj
