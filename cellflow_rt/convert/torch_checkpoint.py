"""Reading ``torch.save`` files into numpy arrays, without torch and without running their pickles.

Two layouts exist:

- the zip format (every ``torch.save`` since torch 1.6): ``<archive>/data.pkl`` is a pickle of the
  object whose tensors refer, by persistent id ``('storage', <storage type>, key, location, numel)``,
  to raw little- or big-endian storages ``<archive>/data/<key>`` (``<archive>/byteorder`` says which);
- the legacy format (older torch): a pickled magic number, protocol number and system information,
  then the object's pickle (persistent ids ``('storage', <type>, key, location, numel, view)``), a
  pickled list of storage keys and, for each key in that order, an 8-byte element count and the
  storage's bytes.

Every pickle is read by :class:`_TensorUnpickler`, which answers global lookups from a fixed table
(tensor rebuild functions, storage types, ``collections.OrderedDict``) and refuses every other name
with :class:`~.errors.UnsafeCheckpointError` before anything is imported or called. Sizes a file
declares are checked against the file's own size before anything is allocated (the pickle's string
and bytes lengths, zip members' sizes, compression ratios, tensor extents), so that a small crafted
file cannot make the reader allocate gigabytes. Tensors come
back as read-only numpy views of the file: uncompressed zip members and legacy storages are
memory-mapped, so a 1.2 GB checkpoint is not copied into memory (each zip member's CRC is still
checked: a damaged storage is refused rather than read as wrong weights).
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellflow_rt.pickle_guard import BoundedReader, check_declared_lengths, check_hashable, guard_hashing

from .errors import CheckpointFormatError, UnsafeCheckpointError

__all__ = ["read_torch_checkpoint", "read_state_dict"]

# torch storage class name -> numpy dtype of its elements ("BFloat16" is widened to float32 later).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("f4"), "DoubleStorage": np.dtype("f8"), "HalfStorage": np.dtype("f2"),
    "BFloat16Storage": np.dtype("u2"), "LongStorage": np.dtype("i8"), "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"), "UntypedStorage": np.dtype("u1"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
# deflate cannot expand data more than 1032-fold: a larger declared size is a lie (a zip bomb)
_DEFLATE_MAX_RATIO = 1032
# general-purpose flag bits of members zipfile cannot read: encrypted (0), patched data (5), strong encryption (6)
_ZIP_UNREADABLE_FLAGS = 0x1 | 0x20 | 0x40


@dataclass(frozen=True)
class _StorageType:
    """What a storage-class global stands for: its name and element type."""

    name: str
    dtype: np.dtype


@dataclass(slots=True)
class _StorageRef:
    """A storage named by a persistent id; ``data`` is filled in once its bytes are located."""

    key: str
    storage_type: _StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _PendingTensor:
    """A tensor whose storage bytes come later in the file (legacy format)."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
    # and _rebuild_tensor(storage, offset, size, stride): the extra arguments only affect autograd.
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"a tensor rebuild got a {type(storage).__name__} instead of a storage")
    if not (_is_int(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(_is_int(n) for n in size + stride)):
        raise pickle.UnpicklingError(f"malformed tensor arguments: offset {storage_offset!r}, size {size!r}, "
                                     f"stride {stride!r}")
    return _PendingTensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(n) for n in stride))


def _rebuild_parameter(data, *_ignored):
    # A Parameter is its tensor; requires_grad, hooks and state matter to training only.
    if not isinstance(data, _PendingTensor):
        raise pickle.UnpicklingError(f"a Parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ordered_dict(*args):
    # collections.OrderedDict as a pickle may call it: OrderedDict() or OrderedDict(pairs); its keys
    # are checked before they are hashed (see cellflow_rt.pickle_guard)
    if len(args) > 1:
        raise pickle.UnpicklingError(f"OrderedDict called with {len(args)} arguments")
    if args and not isinstance(args[0], dict):
        if not isinstance(args[0], (list, tuple)):
            raise pickle.UnpicklingError(f"OrderedDict of a {type(args[0]).__name__}")
        for pair in args[0]:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise pickle.UnpicklingError("OrderedDict items must be (key, value) pairs")
            check_hashable(pair[0])
    return collections.OrderedDict(*args)


class _TensorUnpickler(pickle._Unpickler):
    """Unpickles tensors, storages and containers only; any other global raises UnsafeCheckpointError.

    It is the standard library's Python unpickler: its memo is a dict (the C unpickler grows an array
    to a LONG_BINPUT's index, gigabytes from a few bytes), and its BUILD and dict opcodes can be checked.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    guard_hashing(dispatch)

    def _load_build(self):
        # torch's state dicts carry their ``_metadata`` through BUILD on an OrderedDict; BUILD on
        # anything else could rewrite the allow-list's own objects for every later read
        inst, state = self.stack[-2], self.stack[-1]
        if type(inst) is not collections.OrderedDict or type(state) is not dict \
                or not all(type(k) is str for k in state):
            raise pickle.UnpicklingError(f"BUILD on a {type(inst).__name__} with a {type(state).__name__} state "
                                         "(a checkpoint sets attributes of OrderedDicts only)")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    _ALLOWED = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        **{(module, name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()
           for module in ("torch", "torch.storage")},
    }

    def __init__(self, file, path: Path, storages: dict, legacy: bool = False):
        super().__init__(file)
        self._path = path
        self._storages = storages
        self._legacy = legacy

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            pass
        if module in ("torch", "torch.storage") and name.endswith("Storage"):
            raise CheckpointFormatError(self._path, f"tensors of type {module}.{name} are not supported (known: "
                                                    f"{', '.join(sorted(_STORAGE_DTYPES))})")
        raise UnsafeCheckpointError(self._path, f"{module}.{name}")

    def persistent_load(self, pid):
        fields = 6 if self._legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage"):
            raise CheckpointFormatError(self._path, f"unexpected persistent id {_short(pid)} (only storages are "
                                                    "allowed)")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointFormatError(self._path, f"malformed storage reference {_short(pid)}")
        if self._legacy and pid[5] is not None:
            raise CheckpointFormatError(self._path, f"storage views (legacy format) are not supported: {_short(pid)}")
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, storage_type, int(numel))
        elif ref.storage_type != storage_type:
            raise CheckpointFormatError(self._path, f"storage {key} is named with two types")
        return ref


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def read_torch_checkpoint(path):
    """Read a ``torch.save`` file's object, with its tensors as numpy arrays.

    Parameters
    ----------
    path : str or Path
        A file written by ``torch.save`` (zip or legacy format).

    Returns
    -------
    object
        The saved object: dicts (``OrderedDict`` included), lists and tuples of plain values, with
        every tensor a read-only ``numpy.ndarray`` of its dtype (``bfloat16`` widened to float32).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    UnsafeCheckpointError
        When a pickle names a global outside the allow-list (nothing it names is run).
    CheckpointFormatError
        When the file is truncated or malformed, a storage is missing or shorter than its tensors
        need, or a storage type is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head.startswith(b"PK"):
            obj = _read_zip(path)
        elif head[:1] == b"\x80":  # a pickle (protocol >= 2): the legacy format starts with one
            obj = _read_legacy(path)
        else:
            raise CheckpointFormatError(path, "not a torch.save file (neither a zip archive nor a pickle)")
        return _resolve(obj, path)
    except (CheckpointFormatError, FileNotFoundError):
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, struct.error, OSError, MemoryError, RecursionError, zlib.error,
            NotImplementedError) as err:
        raise CheckpointFormatError(path, f"corrupt or truncated ({type(err).__name__}: {err})") from None


def read_state_dict(path) -> dict:
    """Read a ``torch.save`` file that holds a state dict: ``{name: numpy array}``.

    Raises
    ------
    CheckpointFormatError
        When the file holds anything but a dict of tensors (see also :func:`read_torch_checkpoint`).
    """
    state = read_torch_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointFormatError(path, f"holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        key = bad[0]
        raise CheckpointFormatError(path, f"entry {key!r} is a {type(state[key]).__name__}, not a tensor "
                                          "(a state dict holds tensors only)")
    return dict(state)


def _load_pickle(file, path: Path, storages: dict, legacy: bool):
    """One pickle from ``file`` (at its current position), its declared lengths checked first."""
    start = file.tell()
    check_declared_lengths(file)
    file.seek(start)
    return _TensorUnpickler(file, path, storages, legacy).load()


def _check_member(path: Path, info: zipfile.ZipInfo, file_size: int) -> None:
    """Refuse a zip member whose declared sizes do not fit the file, before zipfile allocates them."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointFormatError(path, f"zip member {info.filename} uses compression method "
                                          f"{info.compress_type} (torch reads stored or deflated members only)")
    if info.flag_bits & _ZIP_UNREADABLE_FLAGS:
        # zipfile raises RuntimeError / NotImplementedError for these; torch writes none of them
        raise CheckpointFormatError(path, f"zip member {info.filename} is encrypted or patched (flags "
                                          f"{info.flag_bits:#06x}); torch.save writes plain members")
    if info.header_offset + _ZIP_LOCAL_HEADER.size + info.compress_size > file_size:
        raise CheckpointFormatError(path, f"zip member {info.filename} declares {info.compress_size} bytes, past "
                                          f"the end of the {file_size}-byte file (truncated or corrupt)")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointFormatError(path, f"stored zip member {info.filename} declares {info.file_size} bytes "
                                          f"but holds {info.compress_size}")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 64:
        raise CheckpointFormatError(path, f"deflated zip member {info.filename} declares {info.file_size} bytes "
                                          f"from {info.compress_size} (more than deflate can expand)")


def _read_zip(path: Path):
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            _check_member(path, info, file_size)
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(path, "zip archive without exactly one <archive>/data.pkl: not a "
                                              "torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(path, f"unknown byteorder {byteorder!r}")
        storages: dict = {}
        obj = _load_pickle(io.BytesIO(archive.read(pickles[0])), path, storages, legacy=False)
        for ref in storages.values():
            member = f"{prefix}data/{ref.key}"
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise CheckpointFormatError(path, f"storage {member} is missing from the archive") from None
            raw = _member_bytes(path, archive, info)
            ref.data = _typed(path, raw, ref, byteorder)
    return obj


def _member_bytes(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A zip member's bytes: a memory map when stored uncompressed (torch's case), else read."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size == 0:
        return np.frombuffer(archive.read(info), dtype=np.uint8)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_ZIP_LOCAL_HEADER.size)
        if len(header) != _ZIP_LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise CheckpointFormatError(path, f"bad local header for zip member {info.filename}")
        name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header)[-2:]
        start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
        f.seek(0, io.SEEK_END)
        if start + info.file_size > f.tell():
            raise CheckpointFormatError(path, f"zip member {info.filename} runs past the end of the file (truncated)")
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(info.file_size,))
    # torch's own mmap loading skips this; a damaged storage would otherwise become silently wrong weights
    if zlib.crc32(data) != info.CRC:
        raise CheckpointFormatError(path, f"zip member {info.filename} is damaged (CRC mismatch)")
    return data


def _typed(path: Path, raw: np.ndarray, ref: _StorageRef, byteorder: str) -> np.ndarray:
    dtype = ref.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
    need = ref.numel * dtype.itemsize
    if raw.size < need:
        raise CheckpointFormatError(path, f"storage {ref.key} holds {raw.size} bytes; its {ref.numel} "
                                          f"{ref.storage_type.name} elements need {need}")
    return raw[:need].view(dtype)


def _read_legacy(path: Path):
    end = path.stat().st_size
    with open(path, "rb") as raw:
        f = BoundedReader(raw, end)
        magic = _load_pickle(f, path, {}, legacy=True)
        if magic != _LEGACY_MAGIC:
            raise CheckpointFormatError(path, "a pickle, but not a torch.save file (no torch magic number)")
        protocol = _load_pickle(f, path, {}, legacy=True)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointFormatError(path, f"unsupported legacy torch.save protocol {protocol!r}")
        sys_info = _load_pickle(f, path, {}, legacy=True)
        if not isinstance(sys_info, dict):
            raise CheckpointFormatError(path, "malformed legacy header")
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        storages: dict = {}
        obj = _load_pickle(f, path, storages, legacy=True)
        keys = _load_pickle(f, path, {}, legacy=True)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise CheckpointFormatError(path, "legacy storage list does not match the storages the object uses")
        offset = f.tell()
    for key in keys:
        ref = storages[key]
        if offset + 8 > end:
            raise CheckpointFormatError(path, f"storage {key} is missing (file truncated)")
        count = int(np.fromfile(path, dtype="<i8" if byteorder == "little" else ">i8", count=1, offset=offset)[0])
        nbytes = count * ref.storage_type.dtype.itemsize
        if count != ref.numel or offset + 8 + nbytes > end:
            raise CheckpointFormatError(path, f"storage {key}: {count} elements stored, {ref.numel} expected, "
                                              f"{max(end - offset - 8, 0)} bytes left (truncated or corrupt)")
        raw = (np.memmap(path, dtype=np.uint8, mode="r", offset=offset + 8, shape=(nbytes,)) if nbytes
               else np.zeros(0, np.uint8))
        ref.data = _typed(path, raw, ref, byteorder)
        offset += 8 + nbytes
    return obj


def _resolve(obj, path: Path, depth: int = 0):
    """Replace every pending tensor in ``obj`` by its numpy view; refuse anything but plain data."""
    if depth > 64:
        raise CheckpointFormatError(path, "containers nested too deeply")
    if isinstance(obj, _PendingTensor):
        return _tensor(obj, path)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, path, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, path, depth + 1) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise CheckpointFormatError(path, f"unexpected {type(obj).__name__} object (only tensors and containers)")


def _tensor(pending: _PendingTensor, path: Path) -> np.ndarray:
    ref = pending.storage
    data = ref.data
    if data is None:
        raise CheckpointFormatError(path, f"storage {ref.key} was never stored")
    size, stride, offset = pending.size, pending.stride, pending.offset
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise CheckpointFormatError(path, f"tensor with negative size, stride or offset in storage {ref.key}")
    count = 1
    for n in size:
        count *= n
    # more elements than the storage holds: a view that repeats elements (expand()); weights never
    # are, and copying one (bfloat16, big-endian) or computing on it could cost any amount of memory
    if count > ref.numel:
        raise CheckpointFormatError(path, f"a tensor of size {_short(list(size))} has {count} elements; its storage "
                                          f"{ref.key} holds {ref.numel}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= ref.numel:
            raise CheckpointFormatError(path, f"a tensor of size {_short(list(size))} at offset {offset} needs element "
                                              f"{last} of storage {ref.key}, which has {ref.numel}")
    view = np.lib.stride_tricks.as_strided(data[offset:] if 0 not in size else data[:0],
                                           shape=size, strides=[s * data.itemsize for s in stride],
                                           writeable=False)
    if ref.storage_type.name == "BFloat16Storage":
        return (view.astype("<u4") << 16).view("<f4")
    if not view.dtype.isnative:
        return view.astype(view.dtype.newbyteorder("="))
    return view
