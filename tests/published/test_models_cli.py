"""``cellflow-rt run --pretrained_model NAME`` with Cellpose's published names, and ``cellflow-rt models``,
driven as a user would (subprocess, real files) against a local stand-in for Cellpose's sites.

Every command runs with ``sys.modules["torch"] = None``: fetching and converting by name never
imports torch.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from published_server import SHARED_WEIGHTS, ModelServer

REFERENCE = SHARED_WEIGHTS.parent / "reference" / "2d"
CYTO_IMAGE = REFERENCE / "cyto_300_2ch" / "image.tif"
NUCLEI_IMAGE = REFERENCE / "nuclei_256" / "image.tif"
_MAIN_WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from cellflow_rt.cli import main; "
                       "main(prog_name='cellflow-rt')")

pytestmark = pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared is absent")


def cli(args, env, cwd, timeout=600):
    proc = subprocess.run([sys.executable, "-c", _MAIN_WITHOUT_TORCH, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


@pytest.fixture
def env(tmp_path, server):
    env = dict(os.environ, CELLFLOW_RT_MODELS_DIR=str(tmp_path / "cache"),
               CELLPOSE_LOCAL_MODELS_PATH=str(tmp_path / "cellpose"), CELLFLOW_RT_MODELS=str(tmp_path / "user"),
               CELLFLOW_RT_MODELS_URL=server.url)
    return env


def masks_of(folder: Path, stem: str) -> np.ndarray:
    return tifffile.imread(folder / f"{stem}_cp_masks.tif")


def segment(image: Path, model: str, out: Path, env, cwd, *flags):
    out.mkdir()
    proc = cli(["run", image, "--pretrained_model", model, "--savedir", out, "--no_npy", "--save_tif", *flags], env, cwd)
    assert proc.returncode == 0, proc.stderr
    return masks_of(out, image.stem)


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_run_cyto3_by_name_gives_the_bundled_export_masks(env, server, tmp_path):
    # cyto_demo.onnx was exported by torch from the checkpoint served here as "cyto3"; Cellpose's built-in
    # rule gives cyto3 diam_mean 30, the demo's own value, so the masks must be identical (the diameter
    # is estimated: this also checks that size_cyto3.npy was paired with it).
    flags = ["--chan", 1, "--chan2", 2, "--channel_axis", 0, "--diameter", 0]
    by_name = segment(CYTO_IMAGE, "cyto3", tmp_path / "a", env, tmp_path, *flags)
    assert server.requests == {"cyto3": 1, "size_cyto3.npy": 1}
    bundled = segment(CYTO_IMAGE, "cyto_demo", tmp_path / "b", env, tmp_path, *flags)
    assert by_name.max() > 10
    np.testing.assert_array_equal(by_name, bundled)
    again = segment(CYTO_IMAGE, "cyto3", tmp_path / "c", env, tmp_path, *flags)
    np.testing.assert_array_equal(again, by_name)
    assert server.total == 2  # the second run made no request


def test_restore_type_by_name(env, server, tmp_path):
    segment(NUCLEI_IMAGE, "nuclei", tmp_path / "a", env, tmp_path, "--restore_type", "denoise_nuclei", "--diameter", 17)
    assert server.requests == {"nucleitorch_0": 1, "size_nucleitorch_0.npy": 1, "denoise_nuclei": 1}


def test_cpsam_by_name_matches_the_converters_own_output(env, server, tmp_path, monkeypatch):
    from cellflow_rt.convert import convert_checkpoint

    monkeypatch.setitem(sys.modules, "torch", None)
    direct = convert_checkpoint(SHARED_WEIGHTS / "cellflow_cpsam_tiny_demo", name="cpsam_direct",
                                out_dir=tmp_path / "direct", echo=lambda line: None)
    by_name = segment(NUCLEI_IMAGE, "cpsam", tmp_path / "a", env, tmp_path, "--diameter", 26)
    assert server.requests == {"cpsam": 1}
    reference = segment(NUCLEI_IMAGE, direct.with_suffix(".onnx"), tmp_path / "b", env, tmp_path, "--diameter", 26)
    np.testing.assert_array_equal(by_name, reference)
    segment(NUCLEI_IMAGE, "cpsam", tmp_path / "c", env, tmp_path, "--diameter", 26)
    assert server.total == 1


def test_models_commands(env, server, tmp_path):
    listing = cli(["models", "list"], env, tmp_path)
    assert listing.returncode == 0
    assert "cyto3" in listing.stdout and "not downloaded" in listing.stdout and "cyto_demo" in listing.stdout
    assert "transformer_cp3" in listing.stdout and "not supported" in listing.stdout
    networks = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines() if line.startswith("  ")}
    assert (networks["cpsam_v2"], networks["cpdino"], networks["cpdino-vitb"]) == ("cpsam", "cpdino", "cpdino")
    missing = cli(["models", "path", "nuclei"], env, tmp_path)
    assert missing.returncode != 0 and "models pull nuclei" in missing.stderr
    pulled = cli(["models", "pull", "-q", "nuclei"], env, tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    path = cli(["models", "path", "nuclei"], env, tmp_path)
    assert path.returncode == 0 and Path(path.stdout.strip()) == tmp_path / "cache" / "nuclei.onnx"
    listed = [line for line in cli(["models", "list"], env, tmp_path).stdout.splitlines() if " nuclei " in line]
    assert any("downloaded" in line and "not downloaded" not in line for line in listed), listed
    info = cli(["info"], env, tmp_path)
    assert f"published models cache: {tmp_path / 'cache'}" in info.stdout
    removed = cli(["models", "remove", "nuclei"], env, tmp_path)
    assert removed.returncode == 0 and not (tmp_path / "cache" / "nuclei.json").exists()
    assert cli(["models", "remove", "nuclei"], env, tmp_path).returncode != 0
    assert server.total == 2


@pytest.mark.parametrize("args, message", [
    (["models", "pull", "cyto4"], "'cyto4' is not a model Cellpose publishes"),
    (["run", CYTO_IMAGE, "--pretrained_model", "transformer_cp3"], "transformer"),
    (["run", CYTO_IMAGE, "--pretrained_model", "cyto4"], "not found"),
])
def test_user_errors_exit_non_zero_with_a_clear_message(env, server, tmp_path, args, message):
    proc = cli(args, env, tmp_path)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert server.total == 0


def test_offline_run_says_what_to_do(env, server, tmp_path):
    server.stop()
    proc = cli(["run", CYTO_IMAGE, "--pretrained_model", "cyto3"], env, tmp_path)
    assert proc.returncode != 0
    assert f"{server.url}/cyto3" in proc.stderr and "CELLFLOW_RT_MODELS_URL" in proc.stderr, proc.stderr
    assert not list((tmp_path / "cache").glob("*.json"))


@pytest.mark.torch
def test_cpsam_by_name_gives_the_torch_exported_masks(env, server, tmp_path, cpsam_tiny):
    # cpsam_tiny: the same demo checkpoint exported by torch (conftest); the run by name never imports torch
    by_name = segment(NUCLEI_IMAGE, "cpsam", tmp_path / "a", env, tmp_path, "--diameter", 26)
    exported = segment(NUCLEI_IMAGE, cpsam_tiny.with_suffix(".onnx"), tmp_path / "b", env, tmp_path, "--diameter", 26)
    assert by_name.max() > 0
    np.testing.assert_array_equal(by_name, exported)
