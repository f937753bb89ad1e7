"""CPDINO end to end against Cellpose 4.2.1.1's ``CellposeModel.eval`` (float32).

Cases made by tests/tools/make_reference_cpdino.py: ``tests/data/cpdino`` (the tiny DINOv3 net,
converted here without torch) and, for the heavy test, a folder of full-size references named by
``CELLFLOW_RT_CPDINO_REFERENCE`` (``/work/cpdino-big/vitb`` made with ``vitb --seed 123``; its
checkpoint is hundreds of MB, so it is not in the repository). Random weights make chaotic flows:
flows and cell probability are compared tightly (1e-3 absolute, every 3rd pixel as stored), masks
by AP (one fragment of hundreds may move where a flow sits on a boundary within float32 rounding).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "cpdino"
FLOWS_TOLERANCE = 1e-3
CASES = sorted(p.stem for p in DATA.glob("*.npz") if not p.name.startswith("network_tile"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from cellflow_rt import models
    from cellflow_rt.convert import convert_checkpoint

    manifest = convert_checkpoint(DATA / "cpdino_tiny", name="cpdino_tiny", out_dir=tmp_path_factory.mktemp("cpdino"))
    model = models.CellposeModel(pretrained_model=str(Path(manifest).with_suffix(".onnx")))
    assert model.model.family.name == "cpdino"
    return model


def check_case(model, reference: Path, case: str) -> dict:
    from cellflow_rt.metrics import matching_summary

    ref = np.load(reference / f"{case}.npz")
    kwargs = json.loads(str(ref["params"]))["eval"]
    masks, flows, styles = model.eval(ref["image"], **kwargs)
    dp_error = float(np.abs(flows[1][:, ::3, ::3] - ref["dP"]).max())
    cellprob_error = float(np.abs(flows[2][::3, ::3] - ref["cellprob"]).max())
    summary = matching_summary(ref["masks"], masks)
    print(f"{reference.name}/{case} {kwargs}: dP {dp_error:.2e}, cellprob {cellprob_error:.2e}, masks ours "
          f"{masks.max()} Cellpose {ref['masks'].max()}, AP50 {summary['ap_0.5']:.4f}", file=sys.stderr)
    assert masks.shape == ref["masks"].shape and not np.any(styles)
    assert dp_error < FLOWS_TOLERANCE and cellprob_error < FLOWS_TOLERANCE
    if ref["masks"].max() == 0:
        assert masks.max() == 0
    else:
        assert summary["ap_0.5"] >= 0.99 and summary["ap_0.9"] >= 0.95
    return kwargs


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_end_to_end_matches_cellpose42(tiny_model, case):
    check_case(tiny_model, DATA, case)


def test_cases_cover_both_tiles_and_a_default():
    sides = [json.loads(str(np.load(DATA / f"{c}.npz")["params"]))["eval"].get("bsize") for c in CASES]
    assert {256, 384, None} <= set(sides)
    assert any(np.load(DATA / f"{c}.npz")["masks"].max() > 100 for c in CASES)


def test_bsize_is_checked(tiny_model):
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_model.eval(np.zeros((64, 64), np.float32), bsize=100)


@pytest.mark.heavy
def test_full_size_reference_end_to_end(tmp_path):
    folder = os.environ.get("CELLFLOW_RT_CPDINO_REFERENCE")
    if not folder or not Path(folder).is_dir():
        pytest.skip("CELLFLOW_RT_CPDINO_REFERENCE names no folder of full-size CPDINO references")
    from cellflow_rt import models
    from cellflow_rt.convert import convert_checkpoint

    reference = Path(folder)
    checkpoint = next(reference.glob("cpdino_vit*"))
    manifest = Path(convert_checkpoint(checkpoint, name=checkpoint.name, out_dir=tmp_path))
    import onnxruntime as ort

    session = ort.InferenceSession(str(manifest.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    for bsize in (384, 256):
        tile_data = np.load(reference / f"network_tile_{bsize}.npz")
        tile = np.repeat(np.repeat(tile_data["net_tile_u8"], 2, -2), 2, -1).astype(np.float32) / 128 - 0.5
        error = np.abs(session.run(["flows"], {"image": tile})[0][..., ::3, ::3] - tile_data["net_out"]).max()
        print(f"{checkpoint.name} tile {bsize}: max error {error:.2e}", file=sys.stderr)
        assert error < 1e-4
    del session
    model = models.CellposeModel(pretrained_model=str(manifest.with_suffix(".onnx")))
    for case in sorted(p.stem for p in reference.glob("*.npz") if not p.name.startswith("network_tile")):
        check_case(model, reference, case)


def test_converted_graphs_load_in_openvino_bf16(tmp_path):
    """Converted graphs name their outputs on the nodes that compute them (no Identity, which
    OpenVINO folds, reporting the inner name): the bf16 path (OpenVINO) finds 'flows' and 'style'."""
    pytest.importorskip("openvino")
    import onnx

    from cellflow_rt import models
    from cellflow_rt.convert import convert_checkpoint

    manifest = Path(convert_checkpoint(DATA / "cpdino_tiny", name="tiny", out_dir=tmp_path))
    graph = onnx.load(str(manifest.with_suffix(".onnx"))).graph
    assert not [n for n in graph.node if n.op_type == "Identity"]
    assert {o for n in graph.node for o in n.output} >= {"flows", "style"}
    model = models.CellposeModel(pretrained_model=str(manifest.with_suffix(".onnx")), precision="bf16")
    ref = np.load(DATA / "gray_300x260_b384.npz")
    flows = model.eval(ref["image"], bsize=384)[1]
    # bfloat16 arithmetic: close to Cellpose's float32 flows, not equal (random weights amplify it)
    assert np.abs(flows[1][:, ::3, ::3] - ref["dP"]).max() < 1.0


@pytest.mark.slow
def test_command_line_runs_256_tiles_as_cellpose_does(tiny_model, tmp_path):
    """Cellpose 4.2.1.1's command line passes its ``--bsize`` (default 256) to eval: ``run`` does too."""
    import subprocess

    import tifffile

    image = np.load(DATA / "gray_420x200_b384_flow0.npz")["image"]
    tifffile.imwrite(tmp_path / "img.tif", image)
    onnx_path = tiny_model.model.info.onnx_path
    proc = subprocess.run([sys.executable, "-m", "cellflow_rt.cli", "run", str(tmp_path / "img.tif"),
                           "--pretrained_model", str(onnx_path), "--flow_threshold", "0", "--save_tif"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ours = tifffile.imread(tmp_path / "img_cp_masks.tif")
    assert np.array_equal(ours, tiny_model.eval(image, bsize=256, flow_threshold=0.0)[0])
    assert not np.array_equal(ours, tiny_model.eval(image, flow_threshold=0.0)[0])  # 384 tiles differ


@pytest.mark.slow
def test_command_line_bsize_is_honoured_and_checked(tiny_model, tmp_path):
    """``run --bsize 384`` runs 384 tiles on a CPDINO model; a side that is not a multiple of 8 is a usage error."""
    import tifffile
    from click.testing import CliRunner

    from cellflow_rt.cli import main

    image = np.load(DATA / "gray_420x200_b384_flow0.npz")["image"]
    tifffile.imwrite(tmp_path / "img.tif", image)
    onnx_path = str(tiny_model.model.info.onnx_path)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "img.tif"), "--pretrained_model", onnx_path,
                                       "--flow_threshold", "0", "--save_tif", "--bsize", "384"])
    assert result.exit_code == 0, result.output
    ours = tifffile.imread(tmp_path / "img_cp_masks.tif")
    assert np.array_equal(ours, tiny_model.eval(image, flow_threshold=0.0)[0])  # eval's default: 384
    refused = CliRunner().invoke(main, ["run", str(tmp_path / "img.tif"), "--pretrained_model", onnx_path,
                                        "--bsize", "300"])
    assert refused.exit_code == 2 and "bsize must be a positive multiple of 8" in refused.output
