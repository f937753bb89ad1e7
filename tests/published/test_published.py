"""Cellpose's published models by name (cellflow_rt.published): catalog, download, cache, fetch.

No internet: a local HTTP server (tests/published_server.py) serves the demo checkpoints of
../shared/weights under Cellpose's file names. No test here may import torch: every test runs with
``sys.modules["torch"] = None``, so an ``import torch`` anywhere on the path fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cellflow_rt.published import (CATALOG, ChecksumError, DownloadError, UnknownModelError, UnsupportedModelError,
                                   cache_dir, fetch_model, is_cached, lookup, remove_model)
from cellflow_rt.published import download as download_module
from cellflow_rt.published.download import download, source_url
from published_server import SHARED_WEIGHTS, ModelServer

pytestmark = pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/weights is absent")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
    """Make ``import torch`` fail for the duration of each test."""
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """Our cache, Cellpose's cache and the user model folder in tmp; downloads from the local server."""
    monkeypatch.setenv("CELLFLOW_RT_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cellpose"))
    monkeypatch.setenv("CELLFLOW_RT_MODELS", str(tmp_path / "user"))
    monkeypatch.setenv("CELLFLOW_RT_MODELS_URL", server.url)
    monkeypatch.setattr(download_module, "BACKOFF_SECONDS", 0.0)
    return tmp_path


def cache_files(folder: Path) -> list:
    """Files left in the cache other than lock files."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# ---- catalog ------------------------------------------------------------------------------------
def test_catalog_uses_cellposes_file_names_and_locations():
    assert lookup("cyto3").checkpoint.url == "https://www.cellpose.org/models/cyto3"
    assert lookup("cyto3").size_model.name == "size_cyto3.npy"
    for name in ("cyto", "cyto2", "nuclei"):
        model = lookup(name)
        assert model.checkpoint.name == f"{name}torch_0"
        assert model.size_model.name == f"size_{name}torch_0.npy"
    assert lookup("tissuenet_cp3").checkpoint.name == "tissuenet_cp3" and lookup("tissuenet_cp3").size_model is None
    assert lookup("denoise_cyto3").restore_type == "denoise" and lookup("denoise_cyto3").kind == "restoration"
    assert lookup("upsample_per_nuclei").restore_type == "upsample"
    assert lookup("cpsam").checkpoint.url == "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam"
    assert lookup("cpsam_v2").generation == 4
    assert all(f.sha256 is None for m in CATALOG.values() for f in m.files)  # Cellpose publishes none
    for name in ("CP", "CPx", "TN1", "TN3", "LC4", "yeast_BF_cp3", "bact_fluor_cp3", "deepbacs_cp3", "aniso_cyto2"):
        assert lookup(name)


@pytest.mark.parametrize("name, network", [("transformer_cp3", "transformer"), ("neurips_cellpose_transformer",
                                           "transformer")])
def test_unsupported_networks_are_named(name, network):
    with pytest.raises(UnsupportedModelError, match=network):
        lookup(name)


def test_unknown_name():
    with pytest.raises(UnknownModelError, match="'cyto4' is not a model Cellpose publishes"):
        lookup("cyto4")


def test_source_url_follows_the_mirror_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLFLOW_RT_MODELS_URL", raising=False)
    assert source_url("cyto3", "https://www.cellpose.org/models") == "https://www.cellpose.org/models/cyto3"
    monkeypatch.setenv("CELLFLOW_RT_MODELS_URL", "https://mirror.example/cp/")
    assert source_url("size_cyto3.npy", "x") == "https://mirror.example/cp/size_cyto3.npy"
    monkeypatch.setenv("CELLFLOW_RT_MODELS_URL", str(tmp_path))
    assert source_url("cpsam", "x") == (tmp_path / "cpsam").as_uri()


def test_cache_dir_follows_platform_conventions(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLFLOW_RT_MODELS_DIR", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / ".cache" / "cellflow-rt" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cellflow-rt" / "models"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_dir() == tmp_path / "Library" / "Caches" / "cellflow-rt" / "models"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert cache_dir() == tmp_path / "local" / "cellflow-rt" / "Cache" / "models"
    monkeypatch.setenv("CELLFLOW_RT_MODELS_DIR", str(tmp_path / "moved"))
    assert cache_dir() == tmp_path / "moved"


# ---- download -----------------------------------------------------------------------------------
def test_download_checks_length_and_returns_sha256(server, tmp_path):
    digest = download(f"{server.url}/cyto3", tmp_path / "d" / "cyto3", progress=False)
    assert digest == sha256(SHARED_WEIGHTS / "cellflow_cyto_demo") == sha256(tmp_path / "d" / "cyto3")
    assert os.listdir(tmp_path / "d") == ["cyto3"]


def test_cut_connection_leaves_nothing_and_says_so(server, tmp_path):
    server.truncate.add("cyto3")
    with pytest.raises(DownloadError, match=r"cyto3 .*: the connection closed after \d+ of \d+ bytes \(3 attempts\)"):
        download(f"{server.url}/cyto3", tmp_path / "cyto3", progress=False, retries=2, backoff=0)
    assert server.requests["cyto3"] == 3
    assert os.listdir(tmp_path) == []


def test_wrong_checksum_is_refused(server, tmp_path):
    with pytest.raises(ChecksumError, match="is not the expected"):
        download(f"{server.url}/cyto3", tmp_path / "cyto3", sha256="0" * 64, progress=False)
    assert os.listdir(tmp_path) == []


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/nothing", tmp_path / "nothing", progress=False, backoff=0)
    assert server.requests["nothing"] == 1


def test_local_folder_mirror(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLFLOW_RT_MODELS_URL", str(SHARED_WEIGHTS))
    digest = download(source_url("cellflow_nuclei_demo", "x"), tmp_path / "n", progress=False)
    assert digest == sha256(SHARED_WEIGHTS / "cellflow_nuclei_demo")


# ---- fetch: download, convert, cache ------------------------------------------------------------
def test_first_use_downloads_converts_and_caches_second_makes_no_request(env, server):
    from cellflow_rt.registry import resolve_model

    manifest_path = fetch_model("nuclei", progress=False)
    assert server.requests == {"nucleitorch_0": 1, "size_nucleitorch_0.npy": 1}
    manifest = json.loads(manifest_path.read_text())
    records = {r["file"]: r for r in manifest["published"]["files"]}
    assert records["nucleitorch_0"]["sha256"] == sha256(SHARED_WEIGHTS / "cellflow_nuclei_demo")
    assert records["nucleitorch_0"]["url"] == "https://www.cellpose.org/models/nucleitorch_0"
    assert records["nucleitorch_0"]["origin"] == f"{server.url}/nucleitorch_0"
    assert not records["nucleitorch_0"]["verified_at_source"]
    assert cache_files(env / "cache") == ["nuclei.json", "nuclei.onnx"]  # downloads removed after conversion
    info = resolve_model("nuclei")
    assert (info.source, info.builtin_name, info.diam_mean, info.size_model is not None) == ("cache", "nuclei", 17.0, True)
    fetch_model("nuclei", progress=False)
    resolve_model("nuclei")
    assert server.total == 2


def test_cellposes_own_cache_is_used_without_a_request(env, server):
    cellpose = env / "cellpose"
    cellpose.mkdir()
    shutil.copy(SHARED_WEIGHTS / "cellflow_nuclei_demo", cellpose / "nucleitorch_0")
    shutil.copy(SHARED_WEIGHTS / "cellflow_nuclei_demo_size.npy", cellpose / "size_nucleitorch_0.npy")
    manifest = json.loads(fetch_model("nuclei", progress=False).read_text())
    assert server.total == 0
    assert manifest["published"]["files"][0]["origin"] == str(cellpose / "nucleitorch_0")
    assert (cellpose / "nucleitorch_0").is_file()  # Cellpose's files are left alone


def test_cut_connection_during_fetch_leaves_the_cache_empty(env, server):
    server.truncate.add("size_cyto3.npy")
    with pytest.raises(DownloadError) as err:
        fetch_model("cyto3", progress=False)
    message = str(err.value)
    assert "size_cyto3.npy" in message and server.url in message and "connection closed" in message
    assert cache_files(env / "cache") == [] and not is_cached("cyto3")


def test_offline_message_says_which_file_from_where_and_where_to_put_it(env, server):
    server.stop()
    with pytest.raises(DownloadError) as err:
        fetch_model("cyto3", progress=False)
    message = str(err.value)
    assert f"{server.url}/cyto3" in message  # the URL tried
    assert "https://www.cellpose.org/models/cyto3" in message  # Cellpose's own location
    assert str(env / "cellpose") in message and "CELLFLOW_RT_MODELS_URL" in message
    assert cache_files(env / "cache") == []


def test_wrong_catalog_checksum_refuses_the_model(env, server, monkeypatch):
    from dataclasses import replace

    from cellflow_rt.published import catalog

    model = catalog.CATALOG["nuclei"]
    monkeypatch.setitem(catalog.CATALOG, "nuclei", replace(model, checkpoint=replace(model.checkpoint, sha256="f" * 64)))
    with pytest.raises(ChecksumError, match="nucleitorch_0"):
        fetch_model("nuclei", progress=False)
    assert cache_files(env / "cache") == []


def test_restoration_name(env, server):
    from cellflow_rt.registry import resolve_model

    info = resolve_model("denoise_nuclei")
    assert (info.kind, info.restore_type, info.source) == ("restoration", "denoise", "cache")
    assert server.requests == {"denoise_nuclei": 1}


def test_resolving_unknown_and_unsupported_names(env, server):
    from cellflow_rt.registry import ModelNotFoundError, resolve_model

    with pytest.raises(ModelNotFoundError, match="'cyto4' not found.*published"):
        resolve_model("cyto4")
    with pytest.raises(UnsupportedModelError, match="not a CPnet"):
        resolve_model("transformer_cp3")
    assert server.total == 0


def test_remove(env, server):
    fetch_model("nuclei", progress=False)
    removed = remove_model("nuclei")
    assert sorted(p.name for p in removed) == ["nuclei.json", "nuclei.onnx"]
    assert cache_files(env / "cache") == [] and remove_model("nuclei") == []


def test_two_processes_pulling_at_once_end_with_one_good_model(env, server):
    script = ("import sys; sys.modules['torch'] = None; from cellflow_rt.published import fetch_model; "
              "print(fetch_model('cyto3', progress=False))")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ)) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    assert server.requests == {"cyto3": 1, "size_cyto3.npy": 1}  # the second waited, then found it cached
    assert cache_files(env / "cache") == ["cyto3.json", "cyto3.onnx"]
    from cellflow_rt.registry import resolve_model
    assert resolve_model("cyto3").source == "cache"  # manifest and checksum good


def test_python_api_and_serve_take_published_names(env, server):
    from cellflow_rt.models import CellposeModel

    by_name = CellposeModel(pretrained_model="nuclei")
    by_type = CellposeModel(model_type="nuclei")
    assert by_name.diam_mean == by_type.diam_mean == 17.0
    assert server.requests == {"nucleitorch_0": 1, "size_nucleitorch_0.npy": 1}
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    from cellflow_rt.serve.server import load_models

    assert list(load_models(["nuclei", "cyto_demo"], "cpu", False, 1, "fp32")) == ["nuclei", "cyto_demo"]
    assert server.total == 2


def test_cellposes_diam_mean_rule_for_built_in_names(env, server):
    # Cellpose 3.1.1.1 runs every name of its MODEL_NAMES at diam_mean 30 (17 for nuclei), and its
    # restoration nets at 17 when the name says nuclei, else 30, whatever the checkpoint stores (17 here)
    from cellflow_rt.registry import resolve_model

    tissuenet = resolve_model("tissuenet_cp3")
    assert (tissuenet.diam_mean, tissuenet.manifest["stored_diam_mean"], tissuenet.size_model) == (30.0, 17.0, None)
    aniso = resolve_model("aniso_cyto2")
    assert (aniso.kind, aniso.restore_type, aniso.diam_mean) == ("restoration", "denoise", 30.0)
    assert resolve_model("denoise_nuclei").diam_mean == 17.0


def test_a_killed_fetchs_leftovers_are_cleared_by_the_next(env, server):
    downloads = env / "cache" / "downloads" / ".nuclei.dead1234"
    downloads.mkdir(parents=True)
    (downloads / "nucleitorch_0").write_bytes(b"half a file")
    (env / "cache" / ".nuclei.convert.dead5678").mkdir()
    fetch_model("nuclei", progress=False)
    assert cache_files(env / "cache") == ["nuclei.json", "nuclei.onnx"]
    assert not (env / "cache" / ".nuclei.convert.dead5678").exists()


def test_python_api_offline_raises_the_download_error_once(env, server, monkeypatch):
    import urllib.error

    from cellflow_rt.models import CellposeModel

    attempts = []

    def offline(url, destination, progress):
        attempts.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download_module, "_fetch_once", offline)
    with pytest.raises(DownloadError, match="cyto3.*network is unreachable"):
        CellposeModel(pretrained_model="cyto3")
    assert len(attempts) == download_module.RETRIES + 1  # one round of retries, not one per constructor step


def test_a_damaged_file_in_cellposes_cache_is_named(env, server):
    cellpose = env / "cellpose"
    cellpose.mkdir()
    (cellpose / "nucleitorch_0").write_bytes((SHARED_WEIGHTS / "cellflow_nuclei_demo").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"from Cellpose's cache: .*nucleitorch_0.*delete a damaged file"):
        fetch_model("nuclei", progress=False)
    assert server.requests == {"size_nucleitorch_0.npy": 1}  # only the file Cellpose's cache lacked
    assert cache_files(env / "cache") == []
