"""Exporting Cellpose 4 (Cellpose-SAM) checkpoints: the demo at test time, refusals, and a full-size
network with random weights (slow)."""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import pytest

from conftest import CPSAM_TINY, REFERENCE_CPSAM, require_shared

pytestmark = pytest.mark.torch

#: SAM ViT-L as Cellpose-SAM uses it: global blocks 5, 11, 17, 23 keep 127-row tables, the rest 27.
VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, neck_dim=256, nout=3,
             rel_pos_lengths=tuple(127 if i in (5, 11, 17, 23) else 27 for i in range(24)))


def test_manifest_says_cellpose4(cpsam_tiny):
    from cellflow_rt.registry import resolve_model

    manifest = json.loads(cpsam_tiny.read_text())
    assert manifest["cellpose_generation"] == 4 and manifest["architecture"] == "cpsam"
    assert manifest["cpsam"] == {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_dim": 256, "neck_dim": 32,
                                 "nout": 3, "patch_size": 8, "tile": 256, "rel_pos_lengths": [27, 127]}
    assert (manifest["nchan"], manifest["nout"], manifest["diam_labels"]) == (3, 3, 26.0)
    assert "nbase" not in manifest and "default_channels" not in manifest and manifest["size_model"] is None
    parity = manifest["parity"]
    assert parity["max_abs_error_flows"] <= 1e-4 and parity["max_abs_error_style"] == 0
    assert [c["batch"] for c in parity["cases"]] == [3, 3, 3]  # traced at 1: the batch axis is dynamic
    assert manifest["fp16"]["onnx_sha256"] and manifest["fp16"]["max_abs_error_flows"] < 0.5
    info = resolve_model(cpsam_tiny)
    assert info.generation == 4 and info.default_channels is None
    assert resolve_model(cpsam_tiny.with_name("cpsam_tiny_fp16.onnx")).precision == "fp16"


def test_graph_has_fixed_tiles_dynamic_batch_and_metadata(cpsam_tiny):
    import onnx
    import onnxruntime as ort

    from cellflow_rt.export.manifest import read_onnx_metadata

    path = cpsam_tiny.with_suffix(".onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [3, 256, 256]
    model = onnx.load(str(path))
    metadata = read_onnx_metadata(model)
    assert metadata["cellpose_generation"] == 4 and metadata["precision"] == "fp32"
    assert model.producer_name == "cellflow-rt export"
    # the graph holds the stored weights for Gemm (no transposed copies): about the parameter count
    n_weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert n_weights < 1.05 * 237_000 + 2 * 32 * 32 * 16 * 2


def test_network_tile_matches_cellpose4(cpsam_tiny):
    """The stored tile: ONNX Runtime against our torch network, and our torch network against the
    stored Cellpose 4 output.

    ``network_tile.npz`` was made by calling ``model.net`` before any ``eval``: the network was still
    in training mode, where Cellpose 4's CPSAM drops blocks at random (``rdrop``), and block 1 was
    dropped in that draw. Our network without block 1 reproduces the stored output (block 0, neck,
    readout); the end-to-end cases check the whole network in eval mode.
    """
    import onnxruntime as ort
    import torch

    from cellflow_rt.export.checkpoint import load_checkpoint
    from cellflow_rt.export.cpsam import PATCH, build_cpsam

    z = np.load(REFERENCE_CPSAM / "network_tile.npz")
    ckpt = load_checkpoint(CPSAM_TINY)
    net = build_cpsam(ckpt.spec, ckpt.state_dict)
    tile = torch.from_numpy(z["net_tile"])
    with torch.no_grad():
        ours = net(tile)[0].numpy()
        x = net.encoder.patch_embed.proj(tile).permute(0, 2, 3, 1) + net.encoder.pos_embed
        x = net.encoder.neck(net.encoder.blocks[0](x).permute(0, 3, 1, 2))
        without_block1 = torch.nn.functional.conv_transpose2d(net.out(x), net.W2, stride=PATCH).numpy()
    np.testing.assert_allclose(without_block1, z["net_out"], rtol=0, atol=1e-4)
    session = ort.InferenceSession(str(cpsam_tiny.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    flows, style = session.run(None, {"image": z["net_tile"]})
    np.testing.assert_allclose(flows, ours, rtol=0, atol=1e-4)
    assert style.shape == (1, 256) and not style.any()


def test_relative_position_tables_are_resized_like_sam():
    """27- and 127-row tables to 63 rows: linear, half-pixel centres (align_corners=False), with
    torch's float32 positions (hence the tolerance against this float64 restatement)."""
    import torch

    from cellflow_rt.export.cpsam import relative_position_terms, resize_rel_pos

    rng = np.random.default_rng(0)
    for rows in (27, 127):
        table = rng.standard_normal((rows, 5)).astype(np.float32)
        resized = resize_rel_pos(torch.from_numpy(table)).numpy()
        centres = np.clip((np.arange(63) + 0.5) * rows / 63 - 0.5, 0, rows - 1)
        expected = np.stack([np.interp(centres, np.arange(rows), table[:, c]) for c in range(5)], axis=1)
        np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-4)
    terms = relative_position_terms(torch.arange(63.0)[:, None]).numpy()[..., 0]
    assert terms[0, 0] == 31 and terms[0, 31] == 0 and terms[31, 0] == 62  # row i - j + 31


def test_refuses_cellpose4_variants_and_cellpose3_options(tmp_path):
    import torch

    from cellflow_rt.export import export_checkpoint
    from cellflow_rt.export.checkpoint import CheckpointError, load_checkpoint

    require_shared()
    dino = tmp_path / "cpdino"
    torch.save({"W2": torch.zeros(192, 3, 8, 8), "encoder.cls_token": torch.zeros(1, 1, 8)}, dino)
    with pytest.raises(CheckpointError, match="DINOv3"):
        load_checkpoint(dino)
    state = torch.load(CPSAM_TINY, weights_only=True)
    del state["encoder.neck.1.bias"]
    missing = tmp_path / "missing"
    torch.save(state, missing)
    with pytest.raises(CheckpointError, match="missing: encoder.neck.1.bias"):
        load_checkpoint(missing)
    with pytest.raises(ValueError, match="size_model"):
        export_checkpoint(CPSAM_TINY, size_model=tmp_path / "x.npy", out_dir=tmp_path / "o", echo=None)
    with pytest.raises(ValueError, match="channels"):
        export_checkpoint(CPSAM_TINY, channels=[0, 0], out_dir=tmp_path / "o", echo=None)
    assert not (tmp_path / "o").exists()


def test_dataparallel_prefix_is_stripped(tmp_path):
    import torch

    from cellflow_rt.export.checkpoint import load_checkpoint

    require_shared()
    state = torch.load(CPSAM_TINY, weights_only=True)
    prefixed = tmp_path / "ddp"
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    ckpt = load_checkpoint(prefixed)
    assert ckpt.architecture == "cpsam" and "W2" in ckpt.state_dict


@pytest.mark.slow
@pytest.mark.heavy
def test_full_size_random_cpsam_exports_at_parity(tmp_path):
    """ViT-L Cellpose-SAM (305 M parameters) with random weights: export, then ONNX Runtime against
    torch on one tile (the gate runs it at batch 2). Prints its time and the process's peak RSS."""
    from cellflow_rt.export import export_checkpoint
    from cellflow_rt.export.checkpoint import checkpoint_from_state_dict
    from cellflow_rt.export.cpsam import CPSAMSpec, random_cpsam_state

    start = time.perf_counter()
    spec = CPSAMSpec(**VIT_L)
    ckpt = checkpoint_from_state_dict(random_cpsam_state(spec, seed=0), tmp_path / "random_cpsam_vitl")
    assert sum(int(np.prod(v.shape)) for v in ckpt.state_dict.values()) > 3.0e8
    manifest_path = export_checkpoint(ckpt, name="cpsam_vitl", out_dir=tmp_path, parity_tiles=1, echo=None)
    del ckpt
    manifest = json.loads(manifest_path.read_text())
    parity = manifest["parity"]
    onnx_bytes = manifest_path.with_suffix(".onnx").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"full-size CPSAM: {time.perf_counter() - start:.0f} s, ONNX {onnx_bytes / 2**30:.2f} GiB, max error "
          f"{parity['max_abs_error_flows']:.2e}, peak RSS of this process {peak:.0f} MiB", file=sys.stderr)
    assert manifest["cpsam"]["depth"] == 24 and manifest["cpsam"]["num_heads"] == 16
    assert onnx_bytes > 1.1e9
    assert parity["max_abs_error_flows"] <= 1e-4
    assert [c["batch"] for c in parity["cases"]] == [2, 2]


def test_registry_checks_cellpose4_manifests(cpsam_tiny, tmp_path):
    import shutil

    from cellflow_rt.registry import ModelFileError, resolve_model

    manifest = json.loads(cpsam_tiny.read_text())
    shutil.copy(cpsam_tiny.with_suffix(".onnx"), tmp_path / "cpsam_tiny.onnx")
    for change, message in (({"cpsam": None}, "'cpsam'"), ({"cellpose_generation": 5}, "cellpose_generation"),
                            ({"cellpose_generation": 3}, "'nbase'")):
        (tmp_path / "cpsam_tiny.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ModelFileError, match=message):
            resolve_model(tmp_path / "cpsam_tiny.json")
