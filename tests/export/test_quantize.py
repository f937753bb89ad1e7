"""``cellflow-rt quantize`` and ``precision="int8"``: the int8 network of the Cellpose-SAM demo.

Calibrated on real DSB2018 nuclei (``shared/data/dsb2018_sample``), judged on a reference case it
never saw, against Cellpose 4.2.1.1's float32 masks.
"""
import json
import shutil

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tests.conftest import REFERENCE_CPSAM, SHARED, require_shared

pytest.importorskip("nncf")
pytest.importorskip("openvino")

pytestmark = pytest.mark.torch  # NNCF imports torch where it is installed

CALIBRATION = SHARED / "data" / "dsb2018_sample"


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """The Cellpose-SAM demo converted into a folder of its own (quantize writes beside it)."""
    require_shared()
    from cellflow_rt.convert import convert_checkpoint
    from tests.conftest import CPSAM_TINY

    manifest = convert_checkpoint(CPSAM_TINY, name="cpsam_q", out_dir=tmp_path_factory.mktemp("quantize"))
    return manifest.with_suffix(".onnx")


@pytest.fixture(scope="module")
def quantized(demo_onnx):
    from cellflow_rt.cli import main

    result = CliRunner().invoke(main, ["quantize", str(demo_onnx), "--images", str(CALIBRATION),
                                       "--img_filter", "_image", "--tiles", "24"])
    assert result.exit_code == 0, result.output
    return demo_onnx


def test_quantize_writes_the_int8_network_and_its_facts(quantized):
    from cellflow_rt.int8_model import RECIPE_VERSION, int8_files
    from cellflow_rt.registry import cached_sha256

    xml, facts_path = int8_files(quantized)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    facts = json.loads(facts_path.read_text())
    assert facts["recipe_version"] == RECIPE_VERSION
    assert facts["onnx_sha256"] == cached_sha256(quantized)
    assert facts["calibration_tiles"] == 24
    assert all(name.endswith("_image.tif") for name in facts["calibration_images"])
    assert facts["attention_fused"] == 2  # the demo's two blocks
    assert facts["linear_layers_int8"] == 8  # qkv, proj, two MLP layers per block
    assert not list(quantized.parent.glob(".*.tmp"))


def test_only_the_linear_layers_take_quantised_inputs(quantized):
    import openvino as ov

    from cellflow_rt.int8_model import int8_files

    def producer(node):  # through the ops that only move data (NNCF may quantise before them)
        while node.get_type_name() in ("Reshape", "Squeeze", "Unsqueeze", "Transpose"):
            node = node.input_value(0).get_node()
        return node.get_type_name()

    model = ov.Core().read_model(str(int8_files(quantized)[0]))
    fed_by_fq = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("MatMul", "ScaledDotProductAttention", "Convolution"):
            producers = {producer(op.input_value(i).get_node()) for i in range(op.get_input_size())}
            fed_by_fq[op.get_friendly_name()] = (op.get_type_name(), "FakeQuantize" in producers)
    quantised = [name for name, (kind, fq) in fed_by_fq.items() if fq]
    assert len(quantised) == 8
    assert all(fed_by_fq[name][0] == "MatMul" for name in quantised)
    assert not any(fq for kind, fq in fed_by_fq.values() if kind == "ScaledDotProductAttention")


def test_int8_masks_match_cellpose_on_an_unseen_case(quantized):
    from cellflow_rt.metrics import matching_summary
    from cellflow_rt.models import CellposeModel

    case = REFERENCE_CPSAM / "gray_256"
    model = CellposeModel(pretrained_model=str(quantized), precision="int8")
    assert model.model.net.precision == "int8"
    kwargs = json.loads((case / "params.json").read_text())["eval"]
    masks = model.eval(tifffile.imread(case / "image.tif"), **kwargs)[0]
    summary = matching_summary(np.load(case / "outputs.npz")["masks"], masks)
    # measured 0.98 (57 of Cellpose's 58 nuclei; our bf16 gets the same)
    assert summary["ap_0.5"] >= 0.95
    assert abs(summary["n_pred"] - summary["n_true"]) <= 2


def test_calibration_tiles_are_the_networks_own_and_spread(demo_onnx):
    from cellflow_rt.export.quantize import calibration_tiles
    from cellflow_rt.io.read import imread
    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.settings import EvalSettings

    model = LoadedModel.load(str(demo_onnx))
    net = model.net
    images = [imread(p) for p in sorted(CALIBRATION.glob("*_image.tif"))[:3]]
    every = calibration_tiles(model, images, EvalSettings(), max_tiles=10_000)
    some = calibration_tiles(model, images, EvalSettings(), max_tiles=3)
    assert model.net is net  # the recorder is taken off again
    assert all(t.shape == (1, 3, 256, 256) and t.dtype == np.float32 for t in every)
    assert len(every) > 3 and len(some) == 3
    np.testing.assert_array_equal(some[0], every[0])
    np.testing.assert_array_equal(some[-1], every[-1])


def test_int8_without_an_int8_network_says_how_to_make_one(demo_onnx, tmp_path):
    from cellflow_rt.cli import main
    from cellflow_rt.int8_model import Int8ModelError
    from cellflow_rt.models import CellposeModel

    lone = tmp_path / demo_onnx.name
    shutil.copy(demo_onnx, lone)
    shutil.copy(demo_onnx.with_suffix(".json"), lone.with_suffix(".json"))
    with pytest.raises(Int8ModelError, match="cellflow-rt quantize"):
        CellposeModel(pretrained_model=str(lone), precision="int8")
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.random.default_rng(0).random((64, 64), dtype=np.float32))
    result = CliRunner().invoke(main, ["run", str(image), "--pretrained_model", str(lone), "--precision", "int8"])
    assert result.exit_code != 0
    assert "cellflow-rt quantize" in result.output
    assert not list(tmp_path.glob("cells_cp_masks*"))


def test_an_int8_network_of_another_export_is_refused(quantized, tmp_path):
    from cellflow_rt.int8_model import Int8ModelError, find_int8_model, int8_files

    copy = tmp_path / quantized.name
    for source in (quantized, *int8_files(quantized), int8_files(quantized)[0].with_suffix(".bin")):
        shutil.copy(source, tmp_path / source.name)
    facts_path = int8_files(copy)[1]
    facts = json.loads(facts_path.read_text())
    find_int8_model(copy, facts["onnx_sha256"])  # as written: accepted
    with pytest.raises(Int8ModelError, match="another version of"):
        find_int8_model(copy, "0" * 64)
    facts_path.write_text(json.dumps(dict(facts, recipe_version=0)))
    with pytest.raises(Int8ModelError, match="another version of cellflow-rt"):
        find_int8_model(copy, facts["onnx_sha256"])


def test_quantize_refuses_a_folder_without_images(demo_onnx, tmp_path):
    from cellflow_rt.cli import main

    result = CliRunner().invoke(main, ["quantize", str(demo_onnx), "--images", str(tmp_path)])
    assert result.exit_code != 0
    assert "no images" in result.output


def test_running_int8_imports_neither_nncf_nor_torch(quantized):
    import subprocess
    import sys

    code = ("import sys, numpy as np; from cellflow_rt.models import CellposeModel; "
            f"m = CellposeModel(pretrained_model={str(quantized)!r}, precision='int8'); "
            "m.eval(np.random.default_rng(0).random((64, 64), dtype=np.float32)); "
            "print(sorted(k for k in ('torch', 'nncf') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_info_says_how_int8_runs_here():
    from cellflow_rt.cli import main

    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("int8 (--precision int8):"))
    assert "OpenVINO" in line and "cellflow-rt quantize" in line


def test_a_cpnet_is_not_quantised(tmp_path):
    from cellflow_rt.cli import main
    from cellflow_rt.registry import resolve_model

    bundled = resolve_model("nuclei_demo").onnx_path
    model = tmp_path / bundled.name
    shutil.copy(bundled, model)
    shutil.copy(bundled.with_suffix(".json"), model.with_suffix(".json"))
    result = CliRunner().invoke(main, ["quantize", str(model), "--images", str(CALIBRATION), "--img_filter", "_image",
                                       "--tiles", "2"])
    assert result.exit_code != 0
    assert "convolutions" in result.output and "bf16" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model.name, model.with_suffix(".json").name])
