"""Fuzz target: :func:`cellflow_rt.io.seg_file.load_seg_npy` (the restricted unpickler) and the napari
reader on top of it.

Cases start from a real ``_seg.npy`` (written by :func:`cellflow_rt.io.save_seg_npy`) and mutate
its pickle: byte edits, truncation, opcodes spliced in (globals that run code, REDUCE, BUILD,
persistent ids, memo abuse), and opcode streams generated from scratch. The contract: a dict with an
integer ``masks`` array, or :class:`~cellflow_rt.io.seg_file.SegFileError` /
:class:`~cellflow_rt.io.limits.ImageTooLargeError`; never any other exception, and never a call to
anything outside the unpickler's table (a canary global records calls).
"""
from __future__ import annotations

import io
import pickle
import struct
import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, strategies as st  # noqa: E402

from cellflow_rt.io.limits import ENV_VAR, ImageTooLargeError  # noqa: E402
from cellflow_rt.io.seg_file import SegFileError, load_seg_npy  # noqa: E402
from fuzz_helpers import overwrite, within_contract  # noqa: E402

pytestmark = pytest.mark.fuzz

CALLED = []


def canary(*args):  # noqa: D401 - a global no pickle may reach
    CALLED.append(args)


def _header() -> bytes:
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
    return fh.getvalue()


def _real_seg(tmp_dir) -> bytes:
    from cellflow_rt.io import save_seg_npy

    masks = np.zeros((12, 12), np.uint16)
    masks[2:6, 2:6], masks[7:11, 6:10] = 1, 2
    dP = np.zeros((2, 12, 12), np.float32)
    path = save_seg_npy(masks, [None, dP, np.zeros((12, 12), np.float32)], tmp_dir / "cells.tif")
    return path.read_bytes()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(npy header, pickle) of a real file: a fixture, not a given argument, so that reports stay short."""
    data = _real_seg(tmp_path_factory.mktemp("seg"))
    head = _header()
    return data[:len(head)], data[len(head):]


@pytest.fixture(autouse=True, scope="module")
def _small_ceiling():
    import os
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(1 << 22)
    yield
    if old is None:
        del os.environ[ENV_VAR]
    else:
        os.environ[ENV_VAR] = old


#: Opcode fragments that try to get at code or abuse the machine's state.
HOSTILE = [
    b"c" + __name__.encode() + b"\ncanary\n(tR.",       # GLOBAL canary, call it
    b"cos\nsystem\n(S'true'\ntR.",                      # the classic
    b"cbuiltins\neval\n(S'1'\ntR.",
    b"\x8c\x08builtins\x8c\x04exec\x93.",                 # STACK_GLOBAL
    b"cnumpy\nndarray\n(K\x00\x85tR.",                   # numpy.ndarray called directly
    b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(J\xff\xff\xff\x7f\x85C\x01Btr.",
    b"P0\n.",                                           # persistent id
    b"h\xff.", b"j\xff\xff\xff\x7f.",                   # memo lookups that do not exist
    b"(" * 1000 + b".",                                 # deep marks
    b"]" + b"q\x00h\x00a" * 100 + b".",                  # a list appended to itself
    b"X\xff\xff\xff\x7fabc.",                            # a string declaring 2 GB
    b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7fabc.",          # BINBYTES8 declaring 2**63
    b"\x96\xff\xff\xff\xff\xff\xff\x00\x00.",            # BYTEARRAY8
]


def _check(path):
    CALLED.clear()
    result, error = within_contract(lambda: load_seg_npy(path), (SegFileError, ImageTooLargeError))
    assert not CALLED, f"the pickle reached a global outside the table: {CALLED}"
    if result is not None:
        assert isinstance(result, dict)
        assert isinstance(result["masks"], np.ndarray) and result["masks"].dtype.kind in "iu"


@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)))
# found by the campaign: PROTO -> BYTEARRAY8 made the Python unpickler allocate a declared 260 MB
@example(edits=[(0, 150)], cut=None)
def test_fuzz_seg_npy_mutated(tmp_path_factory, base, edits, cut):
    head, payload = base
    payload = overwrite(payload, edits)
    if cut is not None:
        payload = payload[:cut % (len(payload) + 1)]
    path = tmp_path_factory.mktemp("case") / "x_seg.npy"
    path.write_bytes(head + payload)
    _check(path)


@given(fragment=st.sampled_from(HOSTILE), at=st.integers(0, 1 << 16), replace=st.booleans())
@example(fragment=HOSTILE[0], at=0, replace=True)
def test_fuzz_seg_npy_spliced(tmp_path_factory, base, fragment, at, replace):
    head, payload = base
    at %= len(payload) + 1
    payload = fragment if replace else payload[:at] + fragment + payload[at:]
    path = tmp_path_factory.mktemp("case") / "x_seg.npy"
    path.write_bytes(head + payload)
    _check(path)


opcodes = st.lists(st.one_of(
    st.sampled_from([op.code.encode("latin1") for op in __import__("pickletools").opcodes]),
    st.binary(min_size=1, max_size=8),
    st.integers(-2**31, 2**31 - 1).map(lambda n: b"J" + struct.pack("<i", n)),
), max_size=40).map(lambda parts: b"\x80\x02" + b"".join(parts) + b".")


@given(stream=opcodes)
def test_fuzz_seg_npy_opcode_streams(tmp_path_factory, stream):
    path = tmp_path_factory.mktemp("case") / "x_seg.npy"
    path.write_bytes(_header() + stream)
    _check(path)


@given(seg=st.fixed_dictionaries({}, optional={
    "masks": st.one_of(st.none(), st.integers(), st.text(max_size=5),
                       st.sampled_from([np.zeros((3, 3), np.uint16), np.zeros((3,), np.int32),
                                        np.zeros((2, 3, 3, 1), np.uint8), np.zeros((3, 3), np.float32),
                                        np.zeros((0, 4), np.uint16)])),
    "filename": st.one_of(st.none(), st.text(max_size=20), st.integers()),
    "diameter": st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=3)),
    "chan_choose": st.one_of(st.none(), st.lists(st.integers(-5, 5), max_size=4)),
    "flows": st.one_of(st.none(), st.lists(st.none(), max_size=6)),
}))
def test_fuzz_napari_reader_fields(tmp_path_factory, seg):
    """Dict fields of the wrong type or shape: the reader opens what it can or says why not."""
    from cellflow_rt.napari._reader import read_seg_npy

    path = tmp_path_factory.mktemp("case") / "x_seg.npy"
    np.save(path, seg, allow_pickle=True)
    try:
        layers = read_seg_npy(path)
    except (SegFileError, ImageTooLargeError):
        return
    except ImportError:
        pytest.skip("napari is not installed (the reader warns through it when the image is missing)")
    assert layers[-1][2] == "labels"
    np.testing.assert_array_equal(layers[-1][0], seg["masks"])


# --------------------------------------------------------------------------------------------------
# failures the fuzzing found, as regression tests with their minimal inputs


@pytest.mark.parametrize("name,pickle_bytes", [
    # LONG_BINPUT 1385465646: CPython's C unpickler grew its memo to that many entries (22 GB, 45 s);
    # the Python unpickler used now keeps its memo in a dict
    ("memo", b"\x80\x02K\x00r.\x87\x94R."),
    # numpy.ndarray((2**28,)) called directly through REDUCE: 2 GB allocated from 30 bytes
    ("ndarray", b"\x80\x02cnumpy\nndarray\n(J\x00\x00\x00\x10\x85tR."),
    # _reconstruct with a 2**30-byte dtype subarray and shape (1,): 1 GB
    ("subarray", b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x01\x85cnumpy\ndtype\n"
                 b"X\x02\x00\x00\x00u1J\x00\x00\x00\x40\x86\x85R\x87R."),
])
def test_pickle_bombs_found_by_fuzzing_are_refused(tmp_path, name, pickle_bytes):
    path = tmp_path / f"{name}_seg.npy"
    path.write_bytes(_header() + pickle_bytes)
    tic = time.perf_counter()
    result, error = within_contract(lambda: load_seg_npy(path), (SegFileError, ImageTooLargeError))
    assert result is None and error is not None
    assert time.perf_counter() - tic < 2


def test_forged_dtype_flags_found_by_fuzzing_are_refused(tmp_path):
    """Found by the campaign: a uint16 dtype's pickled state with the flags of an object dtype made
    numpy treat the array's numbers as object pointers ("get_clear_loop not set", SystemError)."""
    plain = pickle.dumps({"masks": np.arange(6, dtype=np.uint16).reshape(2, 3)}, protocol=2)
    at = plain.index(b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00") + 11
    path = tmp_path / "forged_seg.npy"
    path.write_bytes(_header() + plain[:at] + b"\x3f" + plain[at + 1:])
    with pytest.raises(SegFileError, match="flags 63"):
        load_seg_npy(path)
    (tmp_path / "plain_seg.npy").write_bytes(_header() + plain)
    np.testing.assert_array_equal(load_seg_npy(tmp_path / "plain_seg.npy")["masks"], [[0, 1, 2], [3, 4, 5]])
