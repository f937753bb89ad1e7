"""Writing ``torch.save``-format files by hand (no torch) for the converter's tests.

Pickles are emitted opcode by opcode, so a test can name any global (``os.system`` included) without
that global existing or being imported here: the bytes only say its name.
"""
from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Global:
    """A pickle GLOBAL opcode naming ``module.name``."""

    module: str
    name: str


@dataclass(frozen=True)
class Reduce:
    """``func(*args)`` as the pickle opcodes GLOBAL/..., args tuple, REDUCE."""

    func: object
    args: tuple


@dataclass(frozen=True)
class PersId:
    """A persistent id (BINPERSID) whose value is ``value``."""

    value: object


def emit(obj) -> bytes:
    """The opcodes that build ``obj`` (no PROTO header, no STOP)."""
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        if -(2**31) <= obj < 2**31:
            return b"J" + struct.pack("<i", obj)
        data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        data = obj.encode("utf-8")
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(obj, Global):
        return b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    if isinstance(obj, Reduce):
        return emit(obj.func) + emit(tuple(obj.args)) + b"R"
    if isinstance(obj, PersId):
        return emit(obj.value) + b"Q"
    if isinstance(obj, tuple):
        return b"(" + b"".join(emit(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(emit(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(emit(k) + emit(v) for k, v in obj.items()) + b"u"
    raise TypeError(type(obj))


def pickle_bytes(obj) -> bytes:
    """A whole protocol-2 pickle of ``obj``."""
    return b"\x80\x02" + emit(obj) + b"."


_STORAGES = {np.dtype("f4"): "FloatStorage", np.dtype("f8"): "DoubleStorage", np.dtype("f2"): "HalfStorage",
             np.dtype("i8"): "LongStorage", np.dtype("i4"): "IntStorage", np.dtype("u1"): "ByteStorage"}


def tensor(key: str, array: np.ndarray, legacy: bool = False, storage_type=None) -> Reduce:
    """A ``_rebuild_tensor_v2`` call on storage ``key`` holding C-contiguous ``array``."""
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in array.strides) if array.ndim else ()
    pid = ("storage", storage_type or Global("torch", _STORAGES[array.dtype]), key, "cpu", int(array.size))
    if legacy:
        pid = pid + (None,)
    hooks = Reduce(Global("collections", "OrderedDict"), ())
    args = (PersId(pid), 0, tuple(array.shape), strides, False, hooks)
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"), args)


def state_pickle(state: dict, legacy: bool = False) -> tuple[bytes, dict]:
    """The pickle of a state dict of arrays (an OrderedDict, as torch writes it) and its storages by key."""
    storages = {str(i): np.array(v, order="C") for i, v in enumerate(state.values())}
    items = {k: tensor(str(i), storages[str(i)], legacy) for i, k in enumerate(state)}
    obj = Reduce(Global("collections", "OrderedDict"), ())
    data = b"\x80\x02" + emit(obj) + b"(" + b"".join(emit(k) + emit(v) for k, v in items.items()) + b"u."
    return data, storages


def write_zip_checkpoint(path, data_pkl: bytes, storages: dict, archive: str = "archive", skip=()) -> None:
    """A torch zip-format file with ``data_pkl`` and raw ``storages`` (key -> array); members in ``skip`` left out."""
    members = {f"{archive}/data.pkl": data_pkl, f"{archive}/byteorder": b"little", f"{archive}/version": b"3\n"}
    members.update({f"{archive}/data/{k}": np.array(v, order="C").astype(v.dtype.newbyteorder("<")).tobytes()
                    for k, v in storages.items()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            if name not in skip and name.rsplit("/", 1)[-1] not in skip:
                z.writestr(name, data)


def save_zip_state(path, state: dict) -> None:
    """``torch.save(state_dict)`` in the zip format, without torch."""
    data, storages = state_pickle(state)
    write_zip_checkpoint(path, data, storages)


def save_legacy_state(path, state: dict) -> None:
    """``torch.save(state_dict, _use_new_zipfile_serialization=False)``, without torch."""
    data, storages = state_pickle(state, legacy=True)
    out = io.BytesIO()
    out.write(pickle_bytes(0x1950A86A20F9469CFC6C))
    out.write(pickle_bytes(1001))
    out.write(pickle_bytes({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out.write(data)
    out.write(pickle_bytes(list(storages)))
    for array in storages.values():
        out.write(struct.pack("<q", array.size))
        out.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
    with open(path, "wb") as f:
        f.write(out.getvalue())


def npy_with_pickle(path, pickle_data: bytes) -> None:
    """An ``.npy`` file whose header says 'object array' and whose payload is ``pickle_data``."""
    header = {"descr": "|O", "fortran_order": False, "shape": ()}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(pickle_data)


def copy_zip(source, dest, skip=(), replace=None) -> None:
    """Copy a zip checkpoint, leaving out members whose name ends with an entry of ``skip`` and replacing
    members by suffix from ``replace`` (suffix -> bytes)."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            if any(info.filename.endswith(s) for s in skip):
                continue
            data = next((v for s, v in replace.items() if info.filename.endswith(s)), None)
            out.writestr(info.filename, data if data is not None else src.read(info))
