"""Guards shared by cellflow-rt's restricted unpicklers (``_seg.npy``, size models, torch checkpoints).

Refusing unknown globals keeps a pickle from running code, but the opcodes alone can still hurt the
reading process: a length field can declare gigabytes that the unpickler allocates before reading
them, and a dict key nested a million tuples deep crashes CPython outright when it is hashed
(``tuple.__hash__`` recurses in C without a depth check: a segmentation fault, not an exception).
Both guards work on the standard library's Python unpickler (``pickle._Unpickler``).
"""
from __future__ import annotations

import io
import pickle
import pickletools

__all__ = ["check_declared_lengths", "guard_hashing", "check_hashable", "BoundedReader"]

#: Deepest tuple nesting accepted in a dict key or set item (real pickles use flat keys).
MAX_KEY_DEPTH = 8
_FLAT = (str, bytes, int, float, complex, bool, type(None))


def check_declared_lengths(file) -> None:
    """Walk a pickle's opcodes up to its STOP without building anything.

    Every length an opcode declares (BINBYTES8, BINUNICODE8, BYTEARRAY8, LONG4...) must fit in what
    ``file`` still holds: the Python unpickler allocates a BYTEARRAY8's declared length before it
    reads a byte. ``file`` must answer ``read(n)`` with at most what it holds, without allocating
    ``n`` first (``io.BytesIO`` or :class:`BoundedReader`).

    Raises
    ------
    ValueError
        A declared length runs past the end, or an opcode is unknown or truncated.
    """
    for _ in pickletools.genops(file):
        pass


class BoundedReader(io.RawIOBase):
    """A read-only view of ``file`` up to byte ``end``, which never allocates more than remains.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading, so a pickle declaring a 4 GB
    string in a 100-byte file would cost 4 GB; here ``read(n)`` asks for at most what is left.
    """

    def __init__(self, file, end: int):
        super().__init__()
        self._file = file
        self._end = end

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        left = max(self._end - self._file.tell(), 0)
        return self._file.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        left = max(self._end - self._file.tell(), 0)
        return self._file.readline(left if size is None or size < 0 else min(size, left))


def check_hashable(value, what: str = "a dict key", depth: int = 0) -> None:
    """Refuse ``value`` as a key unless it is plain data nested at most :data:`MAX_KEY_DEPTH` tuples deep.

    Raises
    ------
    pickle.UnpicklingError
        ``value`` is of another type or nested deeper (hashing it could crash the interpreter).
    """
    if type(value) in _FLAT:
        return
    if type(value) is tuple and depth < MAX_KEY_DEPTH:
        for item in value:
            check_hashable(item, what, depth + 1)
        return
    raise pickle.UnpicklingError(f"{what} must be a string, number or shallow tuple of them "
                                 f"(got {type(value).__name__}{' nested too deeply' if type(value) is tuple else ''})")


def guard_hashing(dispatch: dict) -> None:
    """Make a ``pickle._Unpickler`` dispatch table check every key and set item before hashing it.

    Covers SETITEM, SETITEMS, DICT, ADDITEMS and FROZENSET; the items since the last MARK are the
    unpickler's current ``stack`` (the Python unpickler starts a fresh list at each MARK).
    """
    base = {code: dispatch[code[0]] for code in (pickle.SETITEM, pickle.SETITEMS, pickle.DICT, pickle.ADDITEMS,
                                                  pickle.FROZENSET)}

    def setitem(self):
        check_hashable(self.stack[-2])
        base[pickle.SETITEM](self)

    def keys_since_mark(self):
        for key in self.stack[::2]:
            check_hashable(key)

    def setitems(self):
        keys_since_mark(self)
        base[pickle.SETITEMS](self)

    def make_dict(self):
        keys_since_mark(self)
        base[pickle.DICT](self)

    def set_items(code):
        def load(self):
            for item in self.stack:
                check_hashable(item, "a set item")
            base[code](self)
        return load

    dispatch[pickle.SETITEM[0]] = setitem
    dispatch[pickle.SETITEMS[0]] = setitems
    dispatch[pickle.DICT[0]] = make_dict
    dispatch[pickle.ADDITEMS[0]] = set_items(pickle.ADDITEMS)
    dispatch[pickle.FROZENSET[0]] = set_items(pickle.FROZENSET)
