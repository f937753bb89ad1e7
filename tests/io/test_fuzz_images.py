"""Fuzz targets: the image readers (TIFF, PNG, JPEG, ``.npy``) and the header peek.

Each case starts from a valid small file and mutates it where decoders look: TIFF tag types, counts
and values; PNG IHDR fields (with a correct CRC, so the decoder gets past the checksum) and the
compressed data; the JPEG frame header; the ``.npy`` header's shape, dtype and order; plus random
byte EDITS and truncations of any of them. The contract: :func:`~cellflow_rt.io.imread_bytes` returns
a non-empty array within the ceiling or raises :class:`~cellflow_rt.io.ImageReadError`;
:func:`~cellflow_rt.io.peek_shape` returns a tuple of ints or raises it; nothing else, within the
deadline and bounded memory (:mod:`fuzz_helpers`).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, strategies as st  # noqa: E402

from cellflow_rt.io import ImageReadError, imread_bytes, peek_shape  # noqa: E402
from cellflow_rt.io.limits import ENV_VAR  # noqa: E402
from fuzz_corpus import EDITS, JPEGS, NPYS, PNGS, TIFFS, mutated as _mutated  # noqa: E402
from fuzz_helpers import overwrite, within_contract  # noqa: E402
from hostile_files import png_claiming, tiff_claiming  # noqa: E402

pytestmark = pytest.mark.fuzz

#: The ceiling while fuzzing: accepted images stay small, so memory is easy to bound.
CEILING = 1 << 22

INTERESTING = [0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 4096, 65535, 65536, 100_000, 2**31 - 1, 2**31, 2**32 - 1]


@pytest.fixture(autouse=True, scope="module")
def _small_ceiling():
    import os
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(CEILING)
    yield
    if old is None:
        del os.environ[ENV_VAR]
    else:
        os.environ[ENV_VAR] = old


def _check_image(data: bytes, fmt: str):
    result, error = within_contract(lambda: imread_bytes(data, fmt), (ImageReadError,), lambda r: r.nbytes)
    if result is not None:
        assert isinstance(result, np.ndarray) and result.size > 0 and result.size <= CEILING
        assert result.dtype.kind in "biuf"
    return result, error


def _check_peek(data: bytes, fmt: str):
    result, _ = within_contract(lambda: peek_shape(data, fmt), (ImageReadError,))
    if result is not None:
        assert isinstance(result, tuple) and all(isinstance(n, int) for n in result)


# --------------------------------------------------------------------------------------------------
# generic mutations (fuzz_corpus.mutated): byte edits and truncation, on every base file


@given(data=_mutated([t[0] for t in TIFFS]))
@example(data=tiff_claiming(100_000, 100_000))
@example(data=tiff_claiming(0, 16))
# found by the campaign: ImageWidth of type FLOAT made peek_shape return (24, 2.8e-44)
@example(data=tiff_claiming(24, 20)[:12] + b"\x0b" + tiff_claiming(24, 20)[13:])
def test_fuzz_tiff_bytes(data):
    _check_image(data, "tiff")
    _check_peek(data, "tiff")


@given(data=_mutated(PNGS))
@example(data=png_claiming(100_000, 100_000))
@example(data=png_claiming(0, 0))
def test_fuzz_png_bytes(data):
    _check_image(data, "png")
    _check_peek(data, "png")


@given(data=_mutated(JPEGS))
def test_fuzz_jpeg_bytes(data):
    _check_image(data, "jpeg")
    _check_peek(data, "jpeg")


@given(data=_mutated(NPYS))
def test_fuzz_npy_bytes(data):
    _check_image(data, "npy")
    _check_peek(data, "npy")


# --------------------------------------------------------------------------------------------------
# structure-aware mutations

numbers = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**32 - 1))


@given(which=st.integers(0, len(TIFFS) - 1), tag=st.integers(0, 63), field=st.sampled_from(["type", "count", "value"]),
       value=numbers, more=EDITS)
def test_fuzz_tiff_tags(which, tag, field, value, more):
    data, entries = TIFFS[which]
    at = entries[tag % len(entries)]
    out = bytearray(data)
    if field == "type":
        out[at + 2:at + 4] = struct.pack("<H", value & 0xFFFF)
    else:
        start = at + (4 if field == "count" else 8)
        out[start:start + 4] = struct.pack("<I", value)
    _check_image(overwrite(bytes(out), more), "tiff")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


@given(which=st.integers(0, len(PNGS) - 1), width=numbers, height=numbers,
       depth=st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32]), colour=st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]),
       methods=st.tuples(*[st.sampled_from([0, 1, 255])] * 3),
       idat=st.one_of(st.none(), st.binary(max_size=2048).map(zlib.compress), st.binary(max_size=512)))
def test_fuzz_png_header(which, width, height, depth, colour, methods, idat):
    data = PNGS[which]
    header = struct.pack(">IIBB", width, height, depth, colour) + bytes(methods)
    out = data[:8] + _png_chunk(b"IHDR", header) + data[33:]
    if idat is not None:  # replace the image data, keeping the other chunks
        end = out.index(b"IEND") - 4
        out = out[:33] + _png_chunk(b"IDAT", idat) + out[end:]
    _check_image(out, "png")


@given(which=st.integers(0, len(JPEGS) - 1), height=st.integers(0, 65535), width=st.integers(0, 65535),
       components=st.sampled_from([0, 1, 2, 3, 4, 255]), precision=st.sampled_from([0, 8, 12, 16]), more=EDITS)
def test_fuzz_jpeg_frame(which, height, width, components, precision, more):
    data = bytearray(JPEGS[which])
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 4:sof + 10] = struct.pack(">BHHB", precision, height, width, components)
    _check_image(overwrite(bytes(data), more), "jpeg")


descrs = st.sampled_from(["|u1", "<u2", ">u2", "<i4", "<f4", "<f8", "|b1", "<c8", "|O", "|V8", "<U4", "|S3",
                          "<M8[s]", "<f2", "garbage", "[('a', '<i4')]"])
shapes = st.lists(st.one_of(st.sampled_from([0, 1, 2, 5, 6, 20, 24, -1, 2**31, 2**63 - 1, 10**12]),
                            st.integers(0, 64)), max_size=5).map(tuple)


@given(descr=descrs, shape=shapes, fortran=st.booleans(), payload=st.binary(max_size=4096),
       raw_header=st.one_of(st.none(), st.text(max_size=80)))
def test_fuzz_npy_header(descr, shape, fortran, payload, raw_header):
    header = raw_header if raw_header is not None else repr({"descr": descr, "fortran_order": fortran, "shape": shape})
    header = header.encode("latin1", "replace")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload
    _check_image(data, "npy")
    _check_peek(data, "npy")
