"""The model registry: bundled and user models, manifests, checksums; and the size model's step 1."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from cellflow_rt import registry
from cellflow_rt.registry import (ModelFileError, ModelInfo, ModelNotFoundError, bundled_model_dir, list_models,
                                  resolve_model, user_model_dir)
from cellflow_rt.size import SizeModelParams, style_diameter

BUNDLED = {"nuclei_demo": (17.0, (0, 0)), "cyto_demo": (30.0, (1, 2))}


@pytest.fixture(autouse=True)
def empty_user_dir(tmp_path, monkeypatch):
    """Every test starts with an empty user model folder of its own."""
    folder = tmp_path / "user_models"
    folder.mkdir()
    monkeypatch.setenv("CELLFLOW_RT_MODELS", str(folder))
    return folder


def _copy_model(name: str, folder: Path, new_name: str | None = None) -> Path:
    """Copy a bundled model into ``folder`` (renamed if asked) and return its manifest path."""
    new_name = new_name or name
    manifest = json.loads((bundled_model_dir() / f"{name}.json").read_text())
    manifest.update(name=new_name, onnx_file=f"{new_name}.onnx")
    shutil.copyfile(bundled_model_dir() / f"{name}.onnx", folder / f"{new_name}.onnx")
    path = folder / f"{new_name}.json"
    path.write_text(json.dumps(manifest))
    return path


def test_bundled_models_are_listed():
    models = {m.name: m for m in list_models()}
    assert set(BUNDLED) <= set(models)
    for name, (diam_mean, channels) in BUNDLED.items():
        info = models[name]
        assert info.source == "bundled" and info.precision == "fp32"
        assert info.onnx_path == bundled_model_dir() / f"{name}.onnx" and info.onnx_path.is_file()
        assert (info.nchan, info.nout, info.diam_mean, info.default_channels) == (2, 3, diam_mean, channels)
        assert info.diam_labels > 0 and info.builtin_name is None
        assert isinstance(info.size_model, SizeModelParams) and info.size_model.A.shape == (256,)
        assert "demonstration" in info.description.lower()


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_resolves_by_name_and_by_path(name):
    info = resolve_model(name)
    assert isinstance(info, ModelInfo) and info.name == name
    assert resolve_model(info.onnx_path) == info
    assert resolve_model(str(info.onnx_path.with_suffix(".json"))) == info
    assert resolve_model(info) is info
    # frozen and hashable, so it can key caches
    with pytest.raises(AttributeError):
        info.name = "other"
    assert hash(info) == hash(resolve_model(name))


def test_unknown_name_lists_available_models():
    with pytest.raises(ModelNotFoundError, match="nuclei_demo") as err:
        resolve_model("no_such_model")
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)
    assert "cyto_demo" in str(err.value)


def test_missing_path_is_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing.json"))


def test_user_dir_from_env_var(empty_user_dir, monkeypatch, tmp_path):
    assert user_model_dir() == empty_user_dir
    _copy_model("nuclei_demo", empty_user_dir, "mine")
    models = {m.name: m for m in list_models()}
    assert models["mine"].source == "user" and models["nuclei_demo"].source == "bundled"
    assert resolve_model("mine").onnx_path == empty_user_dir / "mine.onnx"
    # a user model shadows a bundled one of the same name
    _copy_model("cyto_demo", empty_user_dir, "nuclei_demo")
    assert resolve_model("nuclei_demo").source == "user"
    assert resolve_model("nuclei_demo").default_channels == (1, 2)
    monkeypatch.delenv("CELLFLOW_RT_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_model_dir() == tmp_path / ".cellflow" / "models"


def test_sha256_mismatch_is_a_clear_error(empty_user_dir):
    manifest = _copy_model("nuclei_demo", empty_user_dir, "tampered")
    onnx_path = manifest.with_suffix(".onnx")
    data = bytearray(onnx_path.read_bytes())
    data[-100] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 .* does not match"):
        resolve_model("tampered")
    with pytest.raises(ModelFileError, match="sha256"):
        resolve_model(onnx_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [m.name for m in list_models()]
    assert "tampered" not in names and any("tampered" in str(w.message) for w in caught)


def test_checksum_is_computed_once_per_file(empty_user_dir, monkeypatch):
    manifest = _copy_model("nuclei_demo", empty_user_dir, "counted")
    calls = []
    real = registry.sha256_file
    monkeypatch.setattr(registry, "sha256_file", lambda p: calls.append(p) or real(p))
    resolve_model("counted")
    resolve_model(manifest)
    resolve_model(manifest.with_suffix(".onnx"))
    assert len(calls) == 1
    # a file changed since it was checked is checked again
    onnx_path = manifest.with_suffix(".onnx")
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="sha256"):
        resolve_model("counted")
    assert len(calls) == 2


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda text: text[: len(text) // 2], "not readable JSON"),
        (lambda text: "[1, 2]", "not a JSON object"),
        (lambda text: text.replace("cellflow-rt-model/1", "cellflow-rt-model/9"), "format"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "nchan"}), "'nchan'"),
        (lambda text: json.dumps({**json.loads(text), "onnx_file": "../elsewhere.onnx"}), "onnx_file"),
        (lambda text: json.dumps({**json.loads(text), "default_channels": [0]}), "default_channels"),
        (lambda text: json.dumps({**json.loads(text), "builtin_name": "cpsam"}), "builtin_name"),
        (lambda text: json.dumps({**json.loads(text), "size_model": {"A": [1.0]}}), "size_model"),
    ],
)
def test_corrupt_manifest_is_a_clear_error(empty_user_dir, corrupt, message):
    manifest = _copy_model("nuclei_demo", empty_user_dir, "broken")
    manifest.write_text(corrupt(manifest.read_text()))
    with pytest.raises(ModelFileError, match=message):
        resolve_model(manifest)
    with pytest.raises(ModelFileError):
        resolve_model("broken")


def test_onnx_without_manifest(empty_user_dir):
    lone = empty_user_dir / "lone.onnx"
    shutil.copyfile(bundled_model_dir() / "nuclei_demo.onnx", lone)
    with pytest.raises(ModelFileError, match="no manifest"):
        resolve_model(lone)


def test_manifest_whose_onnx_is_missing(empty_user_dir):
    manifest = _copy_model("nuclei_demo", empty_user_dir, "orphan")
    manifest.with_suffix(".onnx").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        resolve_model("orphan")


def test_registry_needs_no_torch_or_onnx():
    import subprocess
    import sys

    script = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
              "from cellflow_rt.registry import resolve_model; print(resolve_model('nuclei_demo').name)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "nuclei_demo", done.stderr


# --- size model, step 1 -------------------------------------------------------------------------

def _params(A, smean, diam_mean=30.0, ymean=0.0):
    return SizeModelParams.from_json({"A": A, "smean": smean, "diam_mean": diam_mean, "ymean": ymean})


def test_style_diameter_follows_the_reference_dtypes():
    smean32 = np.float32([0.1, 0.2])
    params = _params([0.5, -0.25], [float(v) for v in smean32], diam_mean=17.0, ymean=0.125)
    style = np.array([0.6, 0.8], np.float32)
    # Cellpose: float32 style - float32 smean, then float64 for the rest
    expected = np.exp(np.array([0.5, -0.25]) @ (style - smean32) + np.log(17.0) + 0.125)
    assert style_diameter(style, params) == expected
    assert style_diameter(style[None], params) == expected
    assert isinstance(style_diameter(style, params), float)
    # an smean that float32 cannot hold exactly is subtracted in float64
    params = _params([0.5, -0.25], [0.1, 0.2], diam_mean=17.0, ymean=0.125)
    expected = np.exp(np.array([0.5, -0.25]) @ (style.astype(np.float64) - [0.1, 0.2]) + np.log(17.0) + 0.125)
    assert style_diameter(style, params) == expected


def test_style_diameter_floor_and_fallbacks():
    assert style_diameter(np.float32([0.0]), _params([100.0], [1.0])) == 5.0  # max(5, tiny)
    assert style_diameter(np.float32([np.nan]), _params([1.0], [0.0], diam_mean=17.0)) == 17.0
    with pytest.raises(ValueError, match="style"):
        style_diameter(np.zeros(3, np.float32), _params([1.0, 2.0], [0.0, 0.0]))


def test_size_model_params_validation():
    with pytest.raises(ValueError, match="size_model"):
        _params([1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="size_model"):
        _params([1.0], [0.0], diam_mean=0.0)
    params = _params([1.0], [0.0])
    assert params.A.dtype == np.float64 and not params.A.flags.writeable
