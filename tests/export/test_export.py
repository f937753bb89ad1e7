"""The exporter: checkpoints in, verified ONNX + manifest out; refusals; the size model as numbers."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REFERENCE_2D, cellpose_python  # $CELLFLOW_RT_REFERENCE or ../shared's
from label_helpers import assert_same_labels

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WEIGHTS = SHARED / "weights"
NUCLEI = WEIGHTS / "cellflow_nuclei_demo"
CYTO = WEIGHTS / "cellflow_cyto_demo"
MANIFEST_KEYS = {
    "format", "name", "description", "onnx_file", "onnx_sha256", "source_file", "source_sha256",
    "exporter_version", "opset", "nchan", "nout", "nbase", "diam_mean", "diam_labels", "builtin_name",
    "kind", "restore_type", "default_channels", "size_model", "parity", "fp16",
}
# Small tiles keep the module's exports quick on 2 cores; the committed models went through the
# full gate (224x224, 128x160, 240x176).
QUICK_SIZES = ((128, 160), (64, 96))


def _require_shared():
    if not WEIGHTS.is_dir():
        pytest.skip(f"shared weights not found at {WEIGHTS}")


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def nuclei_export(tmp_path_factory):
    """The nuclei demo exported once for the module, with the fp16 variant."""
    pytest.importorskip("torch")
    _require_shared()
    from cellflow_rt.export import export_checkpoint

    out = tmp_path_factory.mktemp("nuclei")
    lines = []
    manifest_path = export_checkpoint(NUCLEI, name="nuc", out_dir=out, fp16=True, channels=[0, 0],
                                      parity_sizes=QUICK_SIZES, echo=lines.append)
    return manifest_path, "\n".join(lines)


@pytest.fixture(scope="module")
def cyto_export(tmp_path_factory):
    """The cyto demo exported once through the click command, as a user would (full parity gate)."""
    pytest.importorskip("torch")
    _require_shared()
    from click.testing import CliRunner

    from cellflow_rt.export.command import export_command

    out = tmp_path_factory.mktemp("cyto")
    result = CliRunner().invoke(export_command, [str(CYTO), "--out", str(out), "--name", "cyto",
                                                 "--channels", "1", "2", "--description", "test export"])
    assert result.exit_code == 0, result.output
    return out / "cyto.json", result.output


@pytest.fixture(scope="module")
def nuclei_net():
    pytest.importorskip("torch")
    _require_shared()
    from cellflow_rt.export.checkpoint import load_checkpoint
    from cellflow_rt.export.cpnet import build_cpnet

    ckpt = load_checkpoint(NUCLEI)
    return build_cpnet(ckpt.spec, ckpt.state_dict)


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- round trip ---------------------------------------------------------------------------------

@pytest.mark.torch
def test_manifest_has_the_schema_and_checkpoint_facts(nuclei_export):
    import torch

    manifest_path, _ = nuclei_export
    manifest = json.loads(manifest_path.read_text())
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["format"] == "cellflow-rt-model/1"
    assert manifest["name"] == "nuc" and manifest["onnx_file"] == "nuc.onnx"
    assert manifest["onnx_sha256"] == _sha256(manifest_path.with_name("nuc.onnx"))
    assert manifest["source_file"] == "cellflow_nuclei_demo"
    sums = dict(reversed(line.split()) for line in (WEIGHTS / "SHA256SUMS").read_text().splitlines() if line)
    assert manifest["source_sha256"] == sums["cellflow_nuclei_demo"]
    assert (manifest["nchan"], manifest["nout"], manifest["nbase"]) == (2, 3, [2, 32, 64, 128, 256])
    state = torch.load(NUCLEI, weights_only=True)
    # the float32 values exactly, as JSON numbers
    assert manifest["diam_mean"] == float(state["diam_mean"][0]) == 17.0
    assert manifest["diam_labels"] == float(np.float32(state["diam_labels"][0].item()))
    assert manifest["builtin_name"] is None
    assert (manifest["kind"], manifest["restore_type"]) == ("segmentation", None)
    assert manifest["default_channels"] == [0, 0]
    assert isinstance(manifest["opset"], int) and manifest["exporter_version"]


@pytest.mark.torch
def test_manifest_round_trips_through_the_registry(nuclei_export):
    from cellflow_rt.registry import resolve_model

    manifest_path, _ = nuclei_export
    by_json = resolve_model(manifest_path)
    by_onnx = resolve_model(str(manifest_path.with_suffix(".onnx")))
    assert by_json == by_onnx
    assert by_json.onnx_path == manifest_path.with_suffix(".onnx")
    assert (by_json.nchan, by_json.nout, by_json.default_channels) == (2, 3, (0, 0))
    assert by_json.diam_mean == 17.0 and by_json.builtin_name is None
    stored = np.load(WEIGHTS / "cellflow_nuclei_demo_size.npy", allow_pickle=True).item()
    size = by_json.size_model
    assert size.A.dtype == np.float64 and np.array_equal(size.A, stored["A"])
    assert np.array_equal(size.smean, stored["smean"].astype(np.float64))
    assert size.diam_mean == stored["diam_mean"] and size.ymean == float(stored["ymean"])


@pytest.mark.torch
def test_onnx_metadata_repeats_the_manifest(nuclei_export):
    import onnx

    from cellflow_rt.export.manifest import read_onnx_metadata

    manifest_path, _ = nuclei_export
    manifest = json.loads(manifest_path.read_text())
    meta = read_onnx_metadata(onnx.load(str(manifest_path.with_suffix(".onnx"))))
    assert meta["precision"] == "fp32"
    for key in ("format", "name", "nchan", "nout", "nbase", "diam_mean", "diam_labels", "default_channels",
                "size_model", "source_sha256", "builtin_name"):
        assert meta[key] == manifest[key], key


@pytest.mark.torch
def test_graph_io_names_and_dynamic_axes(nuclei_export):
    import onnx

    manifest_path, _ = nuclei_export
    graph = onnx.load(str(manifest_path.with_suffix(".onnx"))).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    assert dims == {"image": ["batch", 2, "height", "width"], "flows": ["batch", 3, "height", "width"],
                    "style": ["batch", 256]}
    assert not any(n.op_type == "AveragePool" for n in graph.node)  # style is a ReduceMean


@pytest.mark.torch
def test_parity_report_is_recorded_and_printed(nuclei_export):
    manifest_path, output = nuclei_export
    parity = json.loads(manifest_path.read_text())["parity"]
    assert 0 <= parity["max_abs_error_flows"] <= 1e-4 and 0 <= parity["max_abs_error_style"] <= 1e-5
    assert {(c["batch"], c["height"], c["width"]) for c in parity["cases"]} == {
        (b, h, w) for b in (1, 8) for h, w in QUICK_SIZES}
    assert "max abs error flows" in output


@pytest.mark.torch
def test_onnx_matches_torch_cpnet(nuclei_export, nuclei_net):
    """Independent of the gate: other sizes, batch 1 and 8, noise and blob images."""
    from cellflow_rt.export.parity import parity_images, torch_outputs

    manifest_path, _ = nuclei_export
    session = _ort(manifest_path.with_suffix(".onnx"))
    for height, width, seed in ((80, 112, 11), (112, 64, 12)):
        images = parity_images(2, height, width, batch=8, seed=seed, grayscale=True)
        for x in (images, images[:1], images[-1:]):
            flows_t, style_t = torch_outputs(nuclei_net, x)
            flows_o, style_o = session.run(["flows", "style"], {"image": x})
            assert flows_o.shape == (len(x), 3, height, width) and style_o.shape == (len(x), 256)
            assert np.max(np.abs(flows_o - flows_t)) <= 1e-4
            assert np.max(np.abs(style_o - style_t)) <= 1e-5


@pytest.mark.torch
def test_fp16_variant_is_written_and_its_error_reported(nuclei_export):
    from cellflow_rt.registry import resolve_model

    manifest_path, output = nuclei_export
    fp16 = json.loads(manifest_path.read_text())["fp16"]
    half_path = manifest_path.with_name(fp16["onnx_file"])
    assert fp16["onnx_file"] == "nuc_fp16.onnx" and fp16["onnx_sha256"] == _sha256(half_path)
    assert 0 < fp16["max_abs_error_flows"] < 0.5 and 0 < fp16["max_abs_error_style"] < 1e-3
    assert "fp16" in output
    info = resolve_model(half_path)
    assert info.precision == "fp16" and info.name == "nuc"
    x = np.zeros((1, 2, 64, 64), np.float32)
    flows, style = _ort(half_path).run(["flows", "style"], {"image": x})
    assert flows.dtype == np.float32 and style.dtype == np.float32


@pytest.mark.torch
def test_fp16_variant_normalises_the_style_in_float32(nuclei_export, nuclei_net):
    """The style's sum of squares overflows float16 (max 65504) on inputs like these."""
    import onnx
    from onnx import TensorProto

    from cellflow_rt.export.parity import parity_images, torch_outputs

    manifest_path, _ = nuclei_export
    half_path = manifest_path.with_name("nuc_fp16.onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(half_path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    reduce_sum = [n for n in graph.node if n.op_type == "ReduceSum"]
    assert reduce_sum and all(types[n.input[0]] == TensorProto.FLOAT for n in reduce_sum)
    assert any(types.get(n.output[0]) == TensorProto.FLOAT16 for n in graph.node if n.op_type == "Conv")
    x = parity_images(2, 64, 96, batch=2, seed=5)  # noise in both channels: sum of squares ~1e7
    _, style_t = torch_outputs(nuclei_net, x)
    _, style_h = _ort(half_path).run(["flows", "style"], {"image": x})
    assert np.isfinite(style_h).all() and np.max(np.abs(style_h - style_t)) < 1e-3


@pytest.mark.torch
def test_cli_export_round_trip(cyto_export):
    from cellflow_rt.registry import resolve_model

    manifest_path, output = cyto_export
    info = resolve_model(manifest_path)
    assert info.default_channels == (1, 2) and info.diam_mean == 30.0
    assert info.manifest["description"] == "test export" and info.manifest["fp16"] is None
    assert info.size_model is not None  # found next to the checkpoint: <checkpoint>_size.npy
    assert {(c["height"], c["width"]) for c in info.manifest["parity"]["cases"]} == {(224, 224), (128, 160), (240, 176)}
    assert "max abs error flows" in output
    assert not list(manifest_path.parent.glob("*fp16*"))


# --- against Cellpose's own CPnet -----------------------------------------------------------------

_CELLPOSE_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from cellpose.resnet_torch import CPnet
    data = np.load(sys.argv[2])
    out = {}
    for mkldnn in (False, True):
        net = CPnet([2, 32, 64, 128, 256], 3, 3, mkldnn=mkldnn)
        net.load_model(sys.argv[1], device=torch.device("cpu"))
        net.eval()
        with torch.no_grad():
            flows, style = net(torch.from_numpy(data["x"]))[:2]
        out[f"flows_{mkldnn}"], out[f"style_{mkldnn}"] = flows.numpy(), style.numpy()
    np.savez(sys.argv[3], **out)
""")


@pytest.mark.torch
@pytest.mark.heavy
def test_onnx_matches_cellpose_cpnet(nuclei_export, tmp_path):
    """Oracle: Cellpose 3.1.1.1's CPnet (plain and mkldnn, as its CPU path runs) on the same inputs."""
    python = sys.executable if importlib.util.find_spec("cellpose") is not None else cellpose_python()
    from cellflow_rt.export.parity import parity_images

    manifest_path, _ = nuclei_export
    x = np.concatenate([parity_images(2, 128, 160, batch=4, seed=21, grayscale=True),
                        parity_images(2, 128, 160, batch=2, seed=22)[-1:]])
    np.savez(tmp_path / "in.npz", x=x)
    subprocess.run([python, "-c", _CELLPOSE_SCRIPT, str(NUCLEI), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   check=True, capture_output=True, timeout=300)
    ref = np.load(tmp_path / "out.npz")
    flows, style = _ort(manifest_path.with_suffix(".onnx")).run(["flows", "style"], {"image": x})
    for mkldnn in (False, True):
        assert np.max(np.abs(flows - ref[f"flows_{mkldnn}"])) <= 1e-4
        assert np.max(np.abs(style - ref[f"style_{mkldnn}"])) <= 1e-5


# --- refusals -------------------------------------------------------------------------------------

def _export_into(tmp_path, checkpoint):
    from cellflow_rt.export import export_checkpoint

    out = tmp_path / "out"
    try:
        export_checkpoint(checkpoint, out_dir=out, name="x", echo=None)
    finally:
        assert not out.exists() or not list(out.iterdir()), "nothing may be written on failure"


@pytest.mark.torch
def test_rejects_random_bytes(tmp_path):
    pytest.importorskip("torch")
    from cellflow_rt.export.checkpoint import CheckpointError

    bad = tmp_path / "random.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="could not be read"):
        _export_into(tmp_path, bad)


@pytest.mark.torch
def test_rejects_truncated_checkpoint(tmp_path):
    pytest.importorskip("torch")
    _require_shared()
    from cellflow_rt.export.checkpoint import CheckpointError

    bad = tmp_path / "truncated"
    bad.write_bytes(NUCLEI.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        _export_into(tmp_path, bad)


@pytest.mark.torch
def test_rejects_other_architectures(tmp_path):
    torch = pytest.importorskip("torch")
    _require_shared()
    from cellflow_rt.export.checkpoint import CheckpointError, load_checkpoint

    sam = tmp_path / "cpsam"
    torch.save({"W2": torch.zeros(3, 3), "encoder.patch_embed.proj.weight": torch.zeros(8, 3, 8, 8)}, sam)
    with pytest.raises(CheckpointError, match="Cellpose-SAM"):
        _export_into(tmp_path, sam)

    other = tmp_path / "resnet"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).state_dict(), other)
    with pytest.raises(CheckpointError, match="not a Cellpose CPnet"):
        load_checkpoint(other)

    state = torch.load(NUCLEI, weights_only=True)
    state["upsample.up.res_up_0.conv.conv_1.full.weight"] = torch.zeros(32, 128)
    wrong_shape = tmp_path / "wrong_shape"
    torch.save(state, wrong_shape)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(wrong_shape)

    state = torch.load(NUCLEI, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    extra = tmp_path / "extra"
    torch.save(state, extra)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(extra)

    not_a_dict = tmp_path / "tensor"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(CheckpointError, match="not a CPnet state dict"):
        load_checkpoint(not_a_dict)


@pytest.mark.torch
def test_missing_checkpoint_is_file_not_found(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(FileNotFoundError, match="not found"):
        _export_into(tmp_path, tmp_path / "nope")


@pytest.mark.torch
def test_parity_gate_refuses_and_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    _require_shared()
    from cellflow_rt.export import exporter
    from cellflow_rt.export.parity import ParityError

    def broken(*args, **kwargs):
        return {"max_abs_error_flows": 3e-4, "max_abs_error_style": 1e-8, "cases": []}

    monkeypatch.setattr(exporter, "measure_parity", broken)
    with pytest.raises(ParityError, match="nothing was written"):
        _export_into(tmp_path, NUCLEI)


def test_check_parity_limits():
    from cellflow_rt.export.parity import ParityError, check_parity

    check_parity({"max_abs_error_flows": 1e-4, "max_abs_error_style": 1e-5})
    for flows, style in ((1.1e-4, 0.0), (0.0, 1.1e-5), (float("nan"), 0.0)):
        with pytest.raises(ParityError):
            check_parity({"max_abs_error_flows": flows, "max_abs_error_style": style})


# --- size model -------------------------------------------------------------------------------------

def _estimated_cases():
    if not REFERENCE_2D.is_dir():
        return []
    return sorted(d.name for d in REFERENCE_2D.iterdir()
                  if json.loads((d / "params.json").read_text()).get("estimated"))


@pytest.mark.torch
@pytest.mark.parametrize(
    "case", _estimated_cases() or [pytest.param(None, marks=pytest.mark.skip("no shared reference"))])
def test_size_model_json_reproduces_reference_diam_style(case, nuclei_export, cyto_export):
    from cellflow_rt.registry import resolve_model
    from cellflow_rt.size import style_diameter

    params = json.loads((REFERENCE_2D / case / "params.json").read_text())
    manifest = {"cellflow_nuclei_demo": nuclei_export[0], "cellflow_cyto_demo": cyto_export[0]}[params["model"]]
    ref = np.load(REFERENCE_2D / case / "outputs.npz")
    diameter = style_diameter(ref["size_styles"], resolve_model(manifest).size_model)
    assert diameter == pytest.approx(float(ref["diam_style"]), rel=1e-5)


#: Reference cases run through fresh exports: each model with its size model and channel layouts, and a
#: stack; the bundled models go through every case in test_parity_2d.py / test_parity_3d.py.
FRESH_EXPORT_CASES = ("2d/nuclei_256", "2d/nuclei_389x517_estimate", "2d/cyto_300_2ch", "2d/cyto_480_rgb_estimate",
                      "3d/nuclei_vol_stitch0.5")


def _reference_cases():
    """The reference folders of FRESH_EXPORT_CASES (empty without ../shared)."""
    return [REFERENCE_2D.parent / case for case in FRESH_EXPORT_CASES] if REFERENCE_2D.is_dir() else []


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("case", _reference_cases() or [pytest.param(None, marks=pytest.mark.skip("no shared reference"))],
                         ids=lambda case: f"{case.parent.name}/{case.name}" if case else "none")
def test_fresh_export_reproduces_cellpose_reference(case, nuclei_export, cyto_export):
    """Each demo checkpoint exported now (not the bundled ONNX) gives Cellpose 3.1.1.1's stored outputs:
    the estimated diameter and the masks exactly, flows and cell probability within the network's
    float32 summation-order difference (ONNX Runtime's order, not torch's: under 2e-5 measured)."""
    import tifffile

    from cellflow_rt import models

    params = json.loads((case / "params.json").read_text())
    manifest = {"cellflow_nuclei_demo": nuclei_export[0], "cellflow_cyto_demo": cyto_export[0]}[params["model"]]
    ref = np.load(case / "outputs.npz")
    image = tifffile.imread(case / "image.tif")
    model = models.CellposeModel(pretrained_model=str(manifest))
    diameter = params["diameter_used"]
    if params["estimated"]:  # the exported size model, end to end
        diameter, _ = models.SizeModel(model).eval(image, channels=params["eval"].get("channels"),
                                                   channel_axis=params["eval"].get("channel_axis"))
        assert diameter == params["diameter_used"]
    masks, flows, _ = model.eval(image, **dict(params["eval"], diameter=diameter))
    np.testing.assert_allclose(flows[1], ref["dP"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(flows[2], ref["cellprob"], rtol=0, atol=1e-4)
    assert masks.dtype == ref["masks"].dtype
    assert_same_labels(masks, ref["masks"], same_ids=True, what=case.name)


def test_size_model_reader_refuses_code(tmp_path):
    from cellflow_rt.export.size_model import SizeModelError, read_size_model

    path = tmp_path / "evil_size.npy"
    np.save(path, np.array(_Payload(), dtype=object), allow_pickle=True)
    with pytest.raises(SizeModelError, match="refusing"):
        read_size_model(path)

    np.save(path, np.zeros(3))
    with pytest.raises(SizeModelError, match="not a pickled dict"):
        read_size_model(path)

    small = {"A": np.zeros(4), "smean": np.zeros(4), "diam_mean": 30.0, "ymean": 0.0}
    np.save(path, np.array(small), allow_pickle=True)
    with pytest.raises(SizeModelError, match="256 floats"):
        read_size_model(path)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


# --- finding checkpoints ------------------------------------------------------------------------------

def test_builtin_names_are_found_in_cellpose_model_dir(tmp_path, monkeypatch):
    from cellflow_rt.export.sources import (builtin_name_of, default_model_name, default_size_model,
                                            locate_checkpoint)

    (tmp_path / "nucleitorch_0").write_bytes(b"x")
    (tmp_path / "size_nucleitorch_0.npy").write_bytes(b"x")
    (tmp_path / "cyto3").write_bytes(b"x")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    found = locate_checkpoint("nuclei")
    assert found == tmp_path / "nucleitorch_0"
    assert builtin_name_of(found) == "nuclei" and default_model_name(found) == "nuclei"
    assert default_size_model(found) == tmp_path / "size_nucleitorch_0.npy"
    assert locate_checkpoint("cyto3") == tmp_path / "cyto3" and default_size_model(tmp_path / "cyto3") is None
    custom = tmp_path / "my_model.pth"
    custom.write_bytes(b"x")
    (tmp_path / "my_model.pth_size.npy").write_bytes(b"x")
    assert builtin_name_of(custom) is None and default_model_name(custom) == "my_model"
    assert default_size_model(custom) == tmp_path / "my_model.pth_size.npy"
    with pytest.raises(FileNotFoundError, match="cyto2torch_0"):
        locate_checkpoint("cyto2")


def test_model_names_are_checked():
    from cellflow_rt.export.sources import check_model_name

    assert check_model_name("nuclei_demo-2.1") == "nuclei_demo-2.1"
    for bad in ("", "../x", "a/b", ".hidden", "x.onnx", "a b"):
        with pytest.raises(ValueError, match="name"):
            check_model_name(bad)


# --- without torch ------------------------------------------------------------------------------------

def test_command_imports_without_torch_and_says_how_to_install():
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # makes `import torch` fail
        import cellflow_rt.export, cellflow_rt.export.command as c
        from click.testing import CliRunner
        result = CliRunner().invoke(c.export_command, ["whatever"])
        print(result.exit_code)
        print(result.output)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    code, _, output = done.stdout.partition("\n")
    assert code != "0"
    assert "pip install 'cellflow-rt[export]'" in output and "torch==2.13.0" in output


def test_export_package_does_not_import_torch():
    script = "import sys, cellflow_rt.export, cellflow_rt.export.command; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
