"""Cellpose 4.2's CPDINO (DINOv3 encoder) converted without torch, against Cellpose 4.2.1.1's own outputs.

The references in tests/data/cpdino were made by tests/tools/make_reference_cpdino.py: cellpose
4.2.1.1's ``CPDINO`` class around a tiny DINOv3 ViT (width 64, 2 blocks) with random weights. No
test here imports torch (``sys.modules["torch"] = None``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "cpdino"
TINY = DATA / "cpdino_tiny"
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)


def reference_tile(bsize: int):
    """(input tile, Cellpose's raw output at every 3rd pixel) of the stored network tile."""
    data = np.load(DATA / f"network_tile_{bsize}.npz")
    small = data["net_tile_u8"]
    tile = np.repeat(np.repeat(small, 2, axis=-2), 2, axis=-1).astype(np.float32) / 128 - 0.5
    return tile, data["net_out"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from cellflow_rt.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("cpdino")
    manifest = convert_checkpoint(TINY, name="cpdino_tiny", out_dir=out)
    return Path(manifest)


def session(manifest: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(manifest.with_suffix(".onnx")), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bsize", [384, 256])
def test_network_matches_cellpose_on_its_tiles(converted, bsize):
    tile, expected = reference_tile(bsize)
    flows, style = session(converted).run(["flows", "style"], {"image": tile})
    assert flows.shape == (1, 3, bsize, bsize)
    assert np.abs(flows[..., ::3, ::3] - expected).max() < TOLERANCE
    assert np.abs(expected).max() > 5  # the reference is not a near-constant output
    assert not style.any() and style.shape == (1, 256)


def test_one_graph_runs_other_sides_and_batches(converted):
    """Tiles of different sides through the same graph: each tile's output is its own, in a batch too."""
    tile, expected = reference_tile(256)
    sess = session(converted)
    batch = np.concatenate([tile, tile[:, :, ::-1, :].copy()])
    flows = sess.run(["flows"], {"image": batch})[0]
    assert np.abs(flows[:1, :, ::3, ::3] - expected).max() < TOLERANCE
    crop = sess.run(["flows"], {"image": np.ascontiguousarray(tile[:, :, :128, :200])})[0]
    assert crop.shape == (1, 3, 128, 200)
    assert np.isfinite(crop).all() and np.abs(crop - flows[:1, :, :128, :200]).max() > 1e-2  # the grid matters


def test_manifest_says_cpdino(converted):
    manifest = json.loads(converted.read_text())
    assert manifest["cellpose_generation"] == 4 and manifest["architecture"] == "cpdino"
    assert manifest["cpdino"]["backbone"] == "custom" and manifest["cpdino"]["embed_dim"] == 64
    assert manifest["cpdino"]["tile"] == 384 and manifest["cpdino"]["depth"] == 2
    assert manifest["parity"]["self_check"]["finite"]


def test_backbone_named_by_width():
    from cellflow_rt.convert.specs import CPDINOSpec

    widths = {CPDINOSpec(w, 2, w // 64, 4 * w, 4, 3).backbone for w in (1024, 768, 64 * 5)}
    assert widths == {"vitl", "vitb", "custom"}


def test_dinov3_defaults_are_what_cellpose_saves():
    """Cellpose loads with strict=False: a checkpoint without rotary periods or bias masks keeps
    DINOv3's defaults, which must be what its module holds (the tiny reference's values)."""
    from cellflow_rt.convert.specs import cpdino_defaults, read_cpdino_spec
    from cellflow_rt.convert.torch_checkpoint import read_state_dict

    state = read_state_dict(TINY)
    spec = read_cpdino_spec(state)
    for key, value in cpdino_defaults(spec).items():
        assert np.array_equal(np.asarray(state[key]), value), key


def test_damaged_checkpoints_are_refused(tmp_path):
    from convert_helpers import save_zip_state

    from cellflow_rt.convert import CheckpointError, convert_checkpoint
    from cellflow_rt.convert.specs import cpdino_expected_shapes, read_cpdino_spec
    from cellflow_rt.convert.torch_checkpoint import read_state_dict

    state = {k: np.asarray(v) for k, v in read_state_dict(TINY).items()}
    assert set(state) == set(cpdino_expected_shapes(read_cpdino_spec(state)))
    cut = dict(state)
    del cut["encoder.blocks.1.mlp.fc2.bias"]
    save_zip_state(tmp_path / "cut", cut)
    with pytest.raises(CheckpointError, match="missing: encoder.blocks.1.mlp.fc2.bias"):
        convert_checkpoint(tmp_path / "cut", name="cut", out_dir=tmp_path / "out")
    bad = dict(state, **{"encoder.patch_embed.proj.weight": state["encoder.patch_embed.proj.weight"][:, :, :8, :8]})
    save_zip_state(tmp_path / "bad", bad)
    with pytest.raises(CheckpointError, match="CPDINO"):
        convert_checkpoint(tmp_path / "bad", name="bad", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.onnx"))


def test_cpdino_resolves_by_name_and_pulls_from_a_mirror(tmp_path, monkeypatch):
    import published_server
    from published_server import ModelServer

    from cellflow_rt.published import download as download_module
    from cellflow_rt.published import fetch_model, lookup

    assert lookup("cpdino").checkpoint.url == "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpdino"
    assert lookup("cpdino-vitb").checkpoint.name == "cpdino-vitb"
    assert lookup("cpdino").architecture == lookup("cpdino-vitb").architecture == "cpdino"
    assert lookup("cpsam_v2").architecture == "cpsam"
    monkeypatch.setitem(published_server.SERVED, "cpdino", str(TINY))  # absolute: replaces the shared folder
    monkeypatch.setenv("CELLFLOW_RT_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cellpose"))
    monkeypatch.setattr(download_module, "BACKOFF_SECONDS", 0.0)
    with ModelServer() as server:
        monkeypatch.setenv("CELLFLOW_RT_MODELS_URL", server.url)
        manifest = Path(fetch_model("cpdino", progress=False))
        assert server.requests == {"cpdino": 1}
    facts = json.loads(manifest.read_text())
    assert facts["architecture"] == "cpdino" and facts["published"]["name"] == "cpdino"
    tile, expected = reference_tile(384)
    flows = session(manifest).run(["flows"], {"image": tile})[0]
    assert np.abs(flows[..., ::3, ::3] - expected).max() < TOLERANCE


def test_checkpoint_without_optional_keys_runs_like_cellpose(tmp_path):
    """Without key-bias masks and mask token (Cellpose keeps DINOv3's values for them when loading with
    strict=False), the converted graph gives the same output. (The rotary periods stay: they also
    give the head count, 64-wide heads being assumed without them, which the tiny net does not have.)"""
    from convert_helpers import save_zip_state

    from cellflow_rt.convert import convert_checkpoint
    from cellflow_rt.convert.torch_checkpoint import read_state_dict

    state = {k: np.asarray(v) for k, v in read_state_dict(TINY).items()
             if not k.endswith(("bias_mask", "mask_token"))}
    save_zip_state(tmp_path / "lean", state)
    manifest = convert_checkpoint(tmp_path / "lean", name="lean", out_dir=tmp_path / "out")
    tile, expected = reference_tile(256)
    flows = session(Path(manifest)).run(["flows"], {"image": tile})[0]
    assert np.abs(flows[..., ::3, ::3] - expected).max() < TOLERANCE
