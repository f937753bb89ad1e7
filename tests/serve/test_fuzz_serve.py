"""Fuzz targets: what ``cellflow-rt serve`` parses from a client before any work: the query string
(:func:`~cellflow_rt.serve.options.parse_query`), the ``Accept`` and ``Content-Type`` headers, and
the body (:func:`~cellflow_rt.serve.decode.body_format`, :func:`~cellflow_rt.serve.decode.decode_image`).

Queries mix every real option name with unknown ones and values of every shape (numbers, JSON,
repeated names, non-ASCII); bodies are the image fuzzers' mutated files under any Content-Type. The
contract is the answer the app gives: options or :class:`OptionError` (400), a media type or
:class:`NotAcceptableError` (406), an image within the limit or ``BadImageError`` (400) /
``UnsupportedMediaTypeError`` (415) / ``ImageTooLargeError`` (413); never another exception (a 500).
"""
from __future__ import annotations

import types

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("starlette")
from hypothesis import example, given, strategies as st  # noqa: E402

from cellflow_rt.serve.answers import ANSWER_TYPES, NotAcceptableError, choose_answer  # noqa: E402
from cellflow_rt.serve.decode import (CONTENT_TYPES, BadImageError, ImageTooLargeError,  # noqa: E402
                                      UnsupportedMediaTypeError, body_format, decode_image)
from cellflow_rt.serve.options import OptionError, all_options, parse_query  # noqa: E402
from fuzz_helpers import within_contract  # noqa: E402
from hostile_files import png_claiming, tiff_claiming  # noqa: E402
from fuzz_corpus import JPEGS, NPYS, PNGS, TIFFS, mutated as _mutated  # noqa: E402

pytestmark = pytest.mark.fuzz

SERVED = {"nuclei_demo": types.SimpleNamespace(size_model=object()), "cyto_demo": types.SimpleNamespace(size_model=None)}
NAMES = [o.name for o in all_options()]
values = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "true", "false", "yes", "nan", "inf", "-inf", "1e308", "1e-320", "[0,1]",
                     "{}", '{"a": 1}', "null", "nuclei_demo", "cyto_demo", "0x10", " 3 ", "3.5", "٣"]),
    st.text(max_size=12), st.integers().map(str), st.floats().map(str))
queries = st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)), values), max_size=6)


@given(items=queries)
@example(items=[("diameter", "nan")])
@example(items=[("niter", "1e308")])
def test_fuzz_query(items):
    options, _ = within_contract(lambda: parse_query(items, SERVED, "nuclei_demo"), (OptionError,))
    if options is not None:
        assert options.model in SERVED


@given(accept=st.one_of(st.text(max_size=60), st.lists(
    st.tuples(st.sampled_from(list(ANSWER_TYPES) + ["*/*", "image/*", "application/*", "text/html", ""]),
              st.one_of(st.none(), st.floats(), st.text(max_size=4))), max_size=5).map(
    lambda parts: ", ".join(m if q is None else f"{m};q={q}" for m, q in parts))))
def test_fuzz_accept_header(accept):
    answer, _ = within_contract(lambda: choose_answer(accept), (NotAcceptableError,))
    assert answer is None or answer in ANSWER_TYPES


content_types = st.one_of(st.sampled_from(sorted(CONTENT_TYPES) + ["application/octet-stream", "", "text/plain",
                                                                  "image/png; charset=utf-8", "IMAGE/TIFF"]),
                          st.text(max_size=30))
bodies = st.one_of(_mutated([t[0] for t in TIFFS]), _mutated(PNGS), _mutated(JPEGS), _mutated(NPYS),
                   st.binary(max_size=64))


@given(content_type=content_types, body=bodies, max_values=st.sampled_from([1, 100, 10_000, 16_000_000]))
@example(content_type="image/png", body=png_claiming(100_000, 100_000), max_values=16_000_000)
@example(content_type="application/octet-stream", body=tiff_claiming(100_000, 100_000), max_values=16_000_000)
def test_fuzz_body(content_type, body, max_values):
    def decode():
        return decode_image(body, body_format(content_type, body), max_values)

    image, _ = within_contract(decode, (BadImageError, UnsupportedMediaTypeError, ImageTooLargeError),
                               lambda a: a.nbytes)
    if image is not None:
        assert isinstance(image, np.ndarray) and 0 < image.size <= max_values
