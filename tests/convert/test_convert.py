"""The torch-free converter: its graphs against the bundled (torch-exported) models, its manifests, its
formats, and a run where torch cannot be imported. No test here imports torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cellflow_rt.convert import convert_checkpoint
from cellflow_rt.convert.converter import CONVERTER
from cellflow_rt.convert.torch_checkpoint import read_state_dict
from convert_helpers import save_legacy_state, save_zip_state

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights"
BUNDLED = ROOT / "models"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "cellflow_nuclei_demo").is_file(), reason="../shared/weights is absent")
# Fields that differ from a torch export of the same checkpoint, and why: the ONNX bytes (hash), the
# gate (self-check instead of torch parity), the converter's own mark.
CONVERTER_FIELDS = {"onnx_sha256", "parity", "converter"}
TOLERANCE = 1e-5


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_diffs(a, b, images):
    diffs = [0.0, 0.0]
    for image in images:
        for i, (x, y) in enumerate(zip(a.run(None, {"image": image}), b.run(None, {"image": image}))):
            assert x.shape == y.shape
            diffs[i] = max(diffs[i], float(np.abs(x - y).max()))
    return diffs


def _images(nchan, grayscale):
    rng = np.random.default_rng(3)
    images = [rng.standard_normal((b, nchan, h, w)).astype(np.float32)
              for b, h, w in ((2, 64, 96), (1, 224, 224), (2, 128, 160))]
    for image in images:
        if grayscale:
            image[:, 1:] = 0
    return images


@pytest.mark.parametrize("model", ["nuclei_demo", "cyto_demo"])
def test_converted_cpnet_matches_the_bundled_export(tmp_path, model):
    bundled = json.loads((BUNDLED / f"{model}.json").read_text())
    manifest_path = convert_checkpoint(WEIGHTS / bundled["source_file"], name=model, out_dir=tmp_path,
                                       description=bundled["description"], channels=bundled["default_channels"])
    manifest = json.loads(manifest_path.read_text())
    assert manifest_path == tmp_path / f"{model}.json" and (tmp_path / f"{model}.onnx").is_file()
    # the bundled manifests predate the "kind" field (segmentation is what its absence means)
    assert manifest.pop("kind") == "segmentation"
    different = {k for k in set(manifest) | set(bundled) if manifest.get(k) != bundled.get(k)}
    assert different == CONVERTER_FIELDS
    assert manifest["converter"] == CONVERTER
    assert manifest["parity"]["self_check"]["finite"] is True
    diffs = _max_diffs(_session(tmp_path / f"{model}.onnx"), _session(BUNDLED / f"{model}.onnx"),
                       _images(2, grayscale=bundled["default_channels"][1] == 0))
    print(f"{model}: max |flows diff| {diffs[0]:.3g}, max |style diff| {diffs[1]:.3g}")
    assert max(diffs) <= TOLERANCE


def test_converted_model_metadata(tmp_path):
    import onnx

    convert_checkpoint(WEIGHTS / "cellflow_nuclei_demo", name="n", out_dir=tmp_path)
    model = onnx.load(str(tmp_path / "n.onnx"), load_external_data=False)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["cellflow_rt.name"] == "n" and meta["cellflow_rt.converter"] == CONVERTER
    assert meta["cellflow_rt.diam_mean"] == 17.0 and meta["cellflow_rt.precision"] == "fp32"
    assert [o.name for o in model.graph.output] == ["flows", "style"] and model.opset_import[0].version == 17


def test_restoration_net_converts(tmp_path):
    path = convert_checkpoint(WEIGHTS / "cellflow_denoise_nuclei_demo", name="dn", out_dir=tmp_path,
                              restore_type="denoise")
    manifest = json.loads(path.read_text())
    assert (manifest["kind"], manifest["restore_type"], manifest["nout"], manifest["nchan"]) == \
        ("restoration", "denoise", 1, 1)
    assert manifest["size_model"] is None and manifest["diam_mean"] == 17.0
    flows, style = _session(tmp_path / "dn.onnx").run(None, {"image": np.zeros((2, 1, 32, 48), np.float32)})
    assert flows.shape == (2, 1, 32, 48) and style.shape == (2, 256)


def test_restoration_net_needs_a_restore_type(tmp_path):
    with pytest.raises(ValueError, match="restore_type"):
        convert_checkpoint(WEIGHTS / "cellflow_denoise_nuclei_demo", name="dn", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_builtin_basename_rules(tmp_path):
    # Cellpose's built-in basenames give builtin_name and the model name, and pair size_<name>.npy
    folder = tmp_path / "cellpose"
    folder.mkdir()
    (folder / "nucleitorch_0").write_bytes((WEIGHTS / "cellflow_cyto_demo").read_bytes())
    (folder / "size_nucleitorch_0.npy").write_bytes((WEIGHTS / "cellflow_cyto_demo_size.npy").read_bytes())
    manifest = json.loads(convert_checkpoint(folder / "nucleitorch_0", name=None, out_dir=tmp_path / "out")
                          .read_text())
    # diam_mean is the stored value, as the exporter writes it (the runtime applies Cellpose's 17/30 by builtin_name)
    assert (manifest["name"], manifest["builtin_name"], manifest["diam_mean"]) == ("nuclei", "nuclei", 30.0)
    assert manifest["size_model"] is not None


def test_cpsam_demo_converts(tmp_path):
    path = convert_checkpoint(WEIGHTS / "cellflow_cpsam_tiny_demo", name="sam", out_dir=tmp_path)
    manifest = json.loads(path.read_text())
    assert (manifest["cellpose_generation"], manifest["architecture"], manifest["nchan"], manifest["nout"]) == \
        (4, "cpsam", 3, 3)
    assert manifest["cpsam"] == {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_dim": 256, "neck_dim": 32,
                                 "nout": 3, "patch_size": 8, "tile": 256, "rel_pos_lengths": [27, 127]}
    assert manifest["diam_labels"] == 26.0 and manifest["size_model"] is None and manifest["converter"] == CONVERTER
    session = _session(tmp_path / "sam.onnx")
    assert session.get_inputs()[0].shape[1:] == [3, 256, 256] and isinstance(session.get_inputs()[0].shape[0], str)
    flows, style = session.run(None, {"image": np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)})
    assert flows.shape == (2, 3, 256, 256) and np.isfinite(flows).all() and not style.any()


def test_cpsam_refuses_cellpose3_options(tmp_path):
    for option in ({"channels": [1, 2]}, {"restore_type": "denoise"},
                   {"size_model": WEIGHTS / "cellflow_nuclei_demo_size.npy"}):
        with pytest.raises(ValueError, match=next(iter(option))):
            convert_checkpoint(WEIGHTS / "cellflow_cpsam_tiny_demo", name="sam", out_dir=tmp_path, **option)
    assert not any(tmp_path.iterdir())


def test_dataparallel_prefix_and_missing_diameters(tmp_path):
    # Cellpose 4 strips a DataParallel "module." prefix; a checkpoint without diam_* gets Cellpose's 30
    state = read_state_dict(WEIGHTS / "cellflow_cpsam_tiny_demo")
    prefixed = tmp_path / "prefixed"
    save_zip_state(prefixed, {f"module.{k}": v for k, v in state.items() if not k.startswith("diam_")})
    manifest = json.loads(convert_checkpoint(prefixed, name="p", out_dir=tmp_path / "a").read_text())
    assert (manifest["diam_mean"], manifest["diam_labels"]) == (30.0, 30.0)
    convert_checkpoint(WEIGHTS / "cellflow_cpsam_tiny_demo", name="d", out_dir=tmp_path / "b")
    image = np.random.default_rng(2).random((1, 3, 256, 256), dtype=np.float32)
    a = _session(tmp_path / "a" / "p.onnx").run(None, {"image": image})
    b = _session(tmp_path / "b" / "d.onnx").run(None, {"image": image})
    np.testing.assert_array_equal(a[0], b[0])


def test_not_a_cellpose_network_is_refused(tmp_path):
    from cellflow_rt.convert import CheckpointError

    path = tmp_path / "other.pth"
    save_zip_state(path, {"fc.weight": np.zeros((2, 3), np.float32)})
    with pytest.raises(CheckpointError, match="not a Cellpose CPnet"):
        convert_checkpoint(path, name="x", out_dir=tmp_path / "out")
    state = dict(read_state_dict(WEIGHTS / "cellflow_nuclei_demo"))
    state["output.2.bias"] = np.zeros(5, np.float32)
    save_zip_state(path, state)
    with pytest.raises(CheckpointError, match="wrong shape: output.2.bias"):
        convert_checkpoint(path, name="x", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_legacy_format_reads_like_the_zip_format(tmp_path):
    state = read_state_dict(WEIGHTS / "cellflow_nuclei_demo")
    legacy = tmp_path / "legacy_nuclei"
    save_legacy_state(legacy, state)
    assert legacy.read_bytes()[:2] == b"\x80\x02"
    again = read_state_dict(legacy)
    assert list(again) == list(state)
    for key in state:
        np.testing.assert_array_equal(again[key], state[key])
    convert_checkpoint(legacy, name="legacy", out_dir=tmp_path / "out")
    a = _session(tmp_path / "out" / "legacy.onnx")
    b = _session(BUNDLED / "nuclei_demo.onnx")
    assert max(_max_diffs(a, b, _images(2, grayscale=True)[:1])) <= TOLERANCE


def test_zip_storages_are_memory_mapped():
    state = read_state_dict(WEIGHTS / "cellflow_cyto_demo")
    weight = state["downsample.down.res_down_0.conv.conv_0.2.weight"]
    base = weight
    while getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, np.memmap) or type(base).__name__ == "mmap"
    assert not weight.flags.writeable


_NO_TORCH = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Blocker())
from cellflow_rt.convert import convert_checkpoint
path = convert_checkpoint(sys.argv[1], name="n", out_dir=sys.argv[2])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("OK", path)
"""


def test_conversion_runs_where_torch_cannot_be_imported(tmp_path):
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, str(WEIGHTS / "cellflow_nuclei_demo"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("OK")
    assert (tmp_path / "n.onnx").is_file() and (tmp_path / "n.json").is_file()
