"""Fuzz target: model manifests (:func:`cellflow_rt.registry.resolve_model` on a ``.json``).

Cases start from the bundled nuclei manifest (pointing at a small stand-in ``.onnx`` whose digest it
carries) and mutate it: keys dropped, values replaced by JSON values of any type, nested values
(size model, fp16 entry) replaced, or the text itself edited and truncated. The contract: a
:class:`~cellflow_rt.registry.ModelInfo` whose numbers are usable, or
:class:`~cellflow_rt.registry.ModelFileError` / ``ModelNotFoundError`` with a message.
"""
from __future__ import annotations

import hashlib
import json
import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from cellflow_rt.registry import ModelFileError, ModelNotFoundError, bundled_model_dir, resolve_model  # noqa: E402
from fuzz_helpers import overwrite, within_contract  # noqa: E402

pytestmark = pytest.mark.fuzz

ONNX_STAND_IN = b"not really a network; only its digest is checked when a manifest is resolved"
BASE = json.loads((bundled_model_dir() / "nuclei_demo.json").read_text())
BASE.update(onnx_file="m.onnx", onnx_sha256=hashlib.sha256(ONNX_STAND_IN).hexdigest())
BASE.pop("fp16", None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _resolve(folder, text: str):
    (folder / "m.onnx").write_bytes(ONNX_STAND_IN)
    manifest = folder / "m.json"
    manifest.write_text(text, encoding="utf-8", errors="surrogatepass")
    info, error = within_contract(lambda: resolve_model(manifest), (ModelFileError, ModelNotFoundError))
    if info is not None:  # what the pipeline reads from an accepted manifest must be usable
        assert math.isfinite(info.diam_mean) and math.isfinite(info.diam_labels)
        assert isinstance(info.nchan, int) and isinstance(info.description, str)
        info.fixed_tile  # noqa: B018 - must not raise
    return info, error


@given(drop=st.sets(st.sampled_from(sorted(BASE))), replace=st.dictionaries(st.sampled_from(sorted(BASE)) | st.text(max_size=8),
                                                                             json_values, max_size=4))
def test_fuzz_manifest_fields(tmp_path_factory, drop, replace):
    manifest = {k: v for k, v in BASE.items() if k not in drop}
    manifest.update(replace)
    _resolve(tmp_path_factory.mktemp("m"), json.dumps(manifest))


@given(numbers=st.dictionaries(st.sampled_from(["diam_mean", "diam_labels", "nchan", "nout"]),
                               st.floats() | st.integers(-3, 3) | st.integers(), min_size=1))
def test_fuzz_manifest_numbers(tmp_path_factory, numbers):
    _resolve(tmp_path_factory.mktemp("m"), json.dumps(dict(BASE, **numbers)))


@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 127)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_fuzz_manifest_text(tmp_path_factory, edits, cut):
    text = overwrite(json.dumps(BASE, indent=1).encode(), edits)
    if cut is not None:
        text = text[:cut % (len(text) + 1)]
    _resolve(tmp_path_factory.mktemp("m"), text.decode("latin1"))


@given(size_model=json_values, generation=st.sampled_from([3, 4, 5, "3", None, True]))
def test_fuzz_manifest_size_model(tmp_path_factory, size_model, generation):
    manifest = dict(BASE, size_model=size_model, cellpose_generation=generation)
    _resolve(tmp_path_factory.mktemp("m"), json.dumps(manifest))


@pytest.mark.parametrize("key,value", [("diam_mean", float("nan")), ("diam_mean", float("inf")), ("diam_mean", 0),
                                       ("diam_labels", -1), ("nchan", 0), ("nchan", -1), ("nout", 0)])
def test_manifest_numbers_found_by_fuzzing_are_refused(tmp_path, key, value):
    """Found by this target: a manifest with a NaN, infinite or non-positive diameter or channel
    count was accepted, and failed later inside the pipeline."""
    info, error = _resolve(tmp_path, json.dumps(dict(BASE, **{key: value})))
    assert info is None and isinstance(error, ModelFileError) and key in str(error)
