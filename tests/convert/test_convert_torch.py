"""The torch-free converter against the torch exporter: same network outputs (within 1e-5), same manifests.

The only converter test module that uses torch (to export the reference, and to write checkpoints with
``torch.save`` itself); it is skipped where torch is absent.
"""
from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from cellflow_rt.convert import convert_checkpoint  # noqa: E402
from cellflow_rt.convert.specs import CPSAMSpec, cpsam_expected_shapes  # noqa: E402
from cellflow_rt.convert.torch_checkpoint import read_state_dict, read_torch_checkpoint  # noqa: E402
from cellflow_rt.export import export_checkpoint  # noqa: E402

pytestmark = pytest.mark.torch
WEIGHTS = Path(__file__).resolve().parents[2].parent / "shared" / "weights"
TOLERANCE = 1e-5
# What a conversion writes differently from an export of the same checkpoint, and why: the ONNX bytes
# (hash), the gate (a self-check instead of torch parity: no torch), the converter's own mark.
CONVERTER_FIELDS = {"onnx_sha256", "parity", "converter"}
CASES = {
    "nuclei": dict(checkpoint="cellflow_nuclei_demo", nchan=2, grayscale=True, options={}),
    "cyto": dict(checkpoint="cellflow_cyto_demo", nchan=2, grayscale=False, options={"channels": [1, 2]}),
    "denoise": dict(checkpoint="cellflow_denoise_nuclei_demo", nchan=1, grayscale=False,
                    options={"restore_type": "denoise"}),
    "cpsam": dict(checkpoint="cellflow_cpsam_tiny_demo", nchan=3, grayscale=False, options={}),
}
#: SAM ViT-L as Cellpose-SAM uses it: global blocks 5, 11, 17, 23 keep 127-row tables, the rest 27.
VIT_L = CPSAMSpec(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, neck_dim=256, nout=3,
                  rel_pos_lengths=tuple(127 if i in (5, 11, 17, 23) else 27 for i in range(24)))


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(case):
    rng = np.random.default_rng(7)
    if case["nchan"] == 3:
        shapes = [(1, 3, 256, 256), (2, 3, 256, 256)]
    else:
        shapes = [(1, case["nchan"], 224, 224), (2, case["nchan"], 128, 160), (2, case["nchan"], 48, 80)]
    images = []
    for i, shape in enumerate(shapes):
        image = rng.standard_normal(shape).astype(np.float32) if i % 2 else rng.random(shape, dtype=np.float32)
        if case["grayscale"]:
            image[:, 1:] = 0
        images.append(image)
    return images


def _max_diffs(converted, exported, images):
    diffs = [0.0, 0.0]
    for image in images:
        for i, (x, y) in enumerate(zip(converted.run(None, {"image": image}), exported.run(None, {"image": image}))):
            assert x.shape == y.shape and x.dtype == y.dtype == np.float32
            diffs[i] = max(diffs[i], float(np.abs(x - y).max()))
    return diffs


@pytest.mark.parametrize("model", list(CASES))
def test_conversion_matches_the_torch_export(tmp_path, model):
    case = CASES[model]
    source = WEIGHTS / case["checkpoint"]
    if not source.is_file():
        pytest.skip("../shared/weights is absent")
    converted = convert_checkpoint(source, name=model, out_dir=tmp_path / "convert", **case["options"])
    # the exporter's own gate at one small tile and its default batch: minutes on 2 cores otherwise
    gate = {"parity_tiles": 1} if model == "cpsam" else {"parity_sizes": ((48, 64),)}
    exported = export_checkpoint(source, name=model, out_dir=tmp_path / "export", echo=None, **gate,
                                 **case["options"])
    a, b = json.loads(converted.read_text()), json.loads(exported.read_text())
    assert list(a) == list(b) + ["converter"]  # the same fields in the same order, then the converter's mark
    assert {k for k in b if a[k] != b[k]} == CONVERTER_FIELDS - {"converter"}
    diffs = _max_diffs(_session(converted.with_suffix(".onnx")), _session(exported.with_suffix(".onnx")),
                       _inputs(case))
    print(f"{model}: max |flows diff| {diffs[0]:.3g}, max |style diff| {diffs[1]:.3g}", file=sys.stderr)
    assert max(diffs) <= TOLERANCE


def test_reader_matches_torch_load_on_odd_tensors(tmp_path):
    # dtypes, a transposed (non-contiguous) tensor, views sharing one storage at offsets, a Parameter,
    # in both file formats
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {"t": base.t(), "row": base[2], "block": base[1:4, 3:7], "half": torch.ones(3, dtype=torch.float16) / 3,
             "bf16": torch.linspace(-2, 2, 7, dtype=torch.bfloat16), "long": torch.tensor([1, -2, 3]),
             "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5, dtype=torch.float64),
             "param": torch.nn.Parameter(torch.full((2, 2), 0.25))}
    for legacy in (False, True):
        path = tmp_path / f"odd_{legacy}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        got = read_state_dict(path)
        assert list(got) == list(state)
        for key, value in state.items():
            expected = value.detach().float().numpy() if value.dtype == torch.bfloat16 else value.detach().numpy()
            assert got[key].shape == expected.shape and got[key].dtype == expected.dtype, key
            np.testing.assert_array_equal(got[key], expected, err_msg=key)


def test_reader_reads_nested_containers(tmp_path):
    path = tmp_path / "nested.pth"
    torch.save({"a": [torch.zeros(2), (1, "x", None)], "b": {"c": 1.5}}, path)
    obj = read_torch_checkpoint(path)
    assert obj["a"][1] == (1, "x", None) and obj["b"] == {"c": 1.5}
    np.testing.assert_array_equal(obj["a"][0], np.zeros(2, np.float32))


@pytest.mark.slow
@pytest.mark.heavy
def test_full_size_vit_l_converts_at_parity_with_the_exporter(tmp_path):
    """A ViT-L Cellpose-SAM (305 M parameters, random weights drawn with numpy, written by torch.save):
    converted and exported, then one tile through both graphs. Prints times and the diff."""
    rng = np.random.default_rng(0)
    state = {}
    for key, shape in cpsam_expected_shapes(VIT_L).items():
        if key == "W2":
            n = VIT_L.nout * 64
            value = np.eye(n, dtype=np.float32).reshape(n, VIT_L.nout, 8, 8)
        elif key in ("diam_mean", "diam_labels"):
            value = np.full(shape, 30.0, np.float32)
        elif len(shape) == 1 and "norm" in key:
            value = 1 + 0.02 * rng.standard_normal(shape, dtype=np.float32)
        elif len(shape) <= 1 or "rel_pos" in key or "pos_embed" in key:
            value = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        else:
            bound = float(np.prod(shape[1:])) ** -0.5
            value = rng.uniform(-bound, bound, shape).astype(np.float32)
        state[key] = torch.from_numpy(value)
    path = tmp_path / "random_cpsam_vitl"
    torch.save(state, path)
    del state, value
    gc.collect()
    start = time.perf_counter()
    converted = convert_checkpoint(path, name="vitl", out_dir=tmp_path / "convert")
    convert_s = time.perf_counter() - start
    tile = np.random.default_rng(1).random((1, 3, 256, 256), dtype=np.float32)
    session = _session(converted.with_suffix(".onnx"))
    ours = session.run(None, {"image": tile})
    del session
    gc.collect()
    exported = export_checkpoint(path, name="vitl", out_dir=tmp_path / "export", parity_tiles=1, echo=None)
    session = _session(exported.with_suffix(".onnx"))
    theirs = session.run(None, {"image": tile})
    diff = max(float(np.abs(x - y).max()) for x, y in zip(ours, theirs))
    a, b = json.loads(converted.read_text()), json.loads(exported.read_text())
    print(f"ViT-L: converted in {convert_s:.0f} s, ONNX {converted.with_suffix('.onnx').stat().st_size / 2**30:.2f} "
          f"GiB, max |flows diff| vs the exporter {diff:.3g} (flows up to {np.abs(theirs[0]).max():.3g})",
          file=sys.stderr)
    assert {k for k in b if a[k] != b[k]} == CONVERTER_FIELDS - {"converter"}
    assert diff <= TOLERANCE
