"""Exporting Cellpose 4.2's CPDINO (DINOv3 encoder) with torch: the tiny reference net at parity with
Cellpose 4.2.1.1, the gate, refusals; full-size ViT-B and ViT-L with random weights (heavy)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

DATA = Path(__file__).resolve().parents[1] / "data" / "cpdino"
TINY = DATA / "cpdino_tiny"
TOLERANCE = 1e-4
#: DINOv3's ViT-B/16 and ViT-L/16 as Cellpose 4.2.1.1 builds them (dinov3_vitb16 / dinov3_vitl16).
VIT_B = dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, n_storage=4, nout=3)
VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, n_storage=4, nout=3)


def reference_tile(bsize: int):
    data = np.load(DATA / f"network_tile_{bsize}.npz")
    tile = np.repeat(np.repeat(data["net_tile_u8"], 2, axis=-2), 2, axis=-1).astype(np.float32) / 128 - 0.5
    return tile, data["net_out"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from cellflow_rt.export import export_checkpoint

    lines = []
    manifest = export_checkpoint(TINY, name="cpdino_tiny", out_dir=tmp_path_factory.mktemp("cpdino"),
                                 echo=lines.append)
    return Path(manifest), lines


def run_onnx(manifest: Path, tile: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(manifest.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    return session.run(["flows"], {"image": tile})[0]


@pytest.mark.parametrize("bsize", [384, 256])
def test_exported_graph_matches_cellpose(exported, bsize):
    tile, expected = reference_tile(bsize)
    assert np.abs(run_onnx(exported[0], tile)[..., ::3, ::3] - expected).max() < TOLERANCE


@pytest.mark.parametrize("bsize", [384, 256])
def test_torch_network_matches_cellpose(bsize):
    from cellflow_rt.export.checkpoint import load_checkpoint
    from cellflow_rt.export.cpdino import build_cpdino

    ckpt = load_checkpoint(TINY)
    assert ckpt.architecture == "cpdino" and ckpt.generation == 4
    tile, expected = reference_tile(bsize)
    with torch.no_grad():
        flows, style = build_cpdino(ckpt.spec, ckpt.state_dict)(torch.from_numpy(tile))
    assert np.abs(flows.numpy()[..., ::3, ::3] - expected).max() < TOLERANCE
    assert not style.any()


def test_manifest_and_gate_report(exported):
    manifest_path, lines = exported
    manifest = json.loads(manifest_path.read_text())
    assert manifest["architecture"] == "cpdino" and manifest["cellpose_generation"] == 4
    assert manifest["cpdino"]["tile"] == 384 and manifest["cpdino"]["backbone"] == "custom"
    sides = {(c["height"], c["width"]) for c in manifest["parity"]["cases"]}
    assert sides == {(384, 384), (256, 320)}
    assert manifest["parity"]["max_abs_error_flows"] <= TOLERANCE
    assert any("fp32 ONNX vs torch" in line for line in lines)


def test_gate_refuses_a_graph_that_differs(tmp_path, monkeypatch):
    from cellflow_rt.convert import cpdino_graph
    from cellflow_rt.export import export_checkpoint
    from cellflow_rt.export.parity import ParityError

    monkeypatch.setattr(cpdino_graph._CPDINOGraph, "gelu", lambda self, x: self.g.op("Relu", [x]))
    with pytest.raises(ParityError, match="nothing was written"):
        export_checkpoint(TINY, name="broken", out_dir=tmp_path, echo=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_refusals(tmp_path):
    from cellflow_rt.export import export_checkpoint
    from cellflow_rt.export.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(ValueError, match="fp16"):
        export_checkpoint(TINY, fp16=True, out_dir=tmp_path, echo=None)
    with pytest.raises(ValueError, match="channels"):
        export_checkpoint(TINY, channels=[0, 0], out_dir=tmp_path, echo=None)
    state = torch.load(TINY, weights_only=True)
    del state["encoder.norm.bias"]
    torch.save(state, tmp_path / "cut")
    with pytest.raises(CheckpointError, match="missing: encoder.norm.bias"):
        load_checkpoint(tmp_path / "cut")
    torch.save({f"module.{k}": v for k, v in torch.load(TINY, weights_only=True).items()}, tmp_path / "prefixed")
    assert load_checkpoint(tmp_path / "prefixed").architecture == "cpdino"


def test_cli_export(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cellflow_rt.cli", "export", str(TINY), "--name", "tiny_cli",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    tile, expected = reference_tile(256)
    assert np.abs(run_onnx(tmp_path / "tiny_cli.json", tile)[..., ::3, ::3] - expected).max() < TOLERANCE


@pytest.mark.heavy
@pytest.mark.parametrize("name, sizes", [("vitb", VIT_B), ("vitl", VIT_L)])
def test_full_size_random_cpdino_converts_and_runs(tmp_path, name, sizes):
    """Full-size ViT-B and ViT-L shapes (random weights, Cellpose's key names) convert without torch
    and run a 384 tile; the torch writing of the network agrees on it."""
    from cellflow_rt.convert import convert_checkpoint
    from cellflow_rt.convert.specs import CPDINOSpec
    from cellflow_rt.export.cpdino import build_cpdino, random_cpdino_state

    spec = CPDINOSpec(**sizes)
    state = random_cpdino_state(spec, seed=5)
    torch.save(state, tmp_path / f"cpdino_{name}")
    manifest = Path(convert_checkpoint(tmp_path / f"cpdino_{name}", name=name, out_dir=tmp_path))
    facts = json.loads(manifest.read_text())
    assert facts["cpdino"]["backbone"] == name and facts["cpdino"]["depth"] == spec.depth
    tile = np.random.default_rng(1).random((1, 3, 384, 384), dtype=np.float32)
    flows = run_onnx(manifest, tile)
    assert flows.shape == (1, 3, 384, 384) and np.isfinite(flows).all() and flows.std() > 0.1
    with torch.no_grad():
        expected = build_cpdino(spec, state)(torch.from_numpy(tile))[0].numpy()
    assert np.abs(flows - expected).max() < 1e-3
