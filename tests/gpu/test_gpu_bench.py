"""bench/gpu/payload.py: slices that fit the GPU tool's per-call limit, joined and checked on the other side."""
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))
import payload  # noqa: E402

MiB = 2**20


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(payload, "LIMIT", MiB + MiB // 2)
    monkeypatch.setattr(payload, "MARGIN", 16 * 1024)


def _payload(path: Path) -> bytes:
    """A small xz tar of incompressible bytes (so that it needs several slices)."""
    import lzma
    content = os.urandom(3 * MiB)
    with lzma.open(path, "wb", preset=0) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        info = tarfile.TarInfo("site/onnxruntime/lib.so")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return content


def _machine(gpu_dir: Path, state: Path, calls) -> None:
    """What device.sh keeps on the GPU machine after the given calls."""
    (state / "parts").mkdir(parents=True)
    shutil.copyfile(gpu_dir / "call1" / "manifest.json", state / "manifest.json")
    for k in calls:
        for part in (gpu_dir / f"call{k}").glob("stream.part*"):
            shutil.copyfile(part, state / "parts" / part.name)


def test_slices_fit_each_call_and_unpack_to_the_payload(tmp_path, small_limit):
    gpu_dir = tmp_path / ".gpu"
    (gpu_dir / "call1" / "data").mkdir(parents=True)
    (gpu_dir / "call1" / "data" / "dynamics_0.npz").write_bytes(os.urandom(MiB // 4))
    source = tmp_path / "payload.tar.xz"
    content = _payload(source)
    checkout = MiB // 4
    n = payload.split_payload(source, gpu_dir, checkout)
    assert n >= 3
    manifest = json.loads((gpu_dir / "call1" / "manifest.json").read_text())
    assert manifest["slices"] == n
    for k in range(1, n + 1):
        carried = sum(p.stat().st_size for p in (gpu_dir / f"call{k}").rglob("*") if p.is_file())
        assert carried + checkout <= payload.LIMIT
    calls = (gpu_dir / "CALLS.md").read_text()
    assert "`bash bench/gpu/device.sh first`" in calls and "`bash bench/gpu/device.sh last`" in calls
    assert calls.count("device.sh part") == n - 2 and f'".gpu/call{n}"' in calls

    state = tmp_path / "machine"
    _machine(gpu_dir, state, range(1, n + 1))
    payload.unpack(state)
    assert (state / "payload" / "site" / "onnxruntime" / "lib.so").read_bytes() == content


def test_a_missed_or_damaged_slice_is_refused(tmp_path, small_limit):
    gpu_dir = tmp_path / ".gpu"
    (gpu_dir / "call1").mkdir(parents=True)
    source = tmp_path / "payload.tar.xz"
    _payload(source)
    n = payload.split_payload(source, gpu_dir, 0)
    missed = tmp_path / "missed"
    _machine(gpu_dir, missed, range(1, n))
    with pytest.raises(SystemExit, match="start again at call 1"):
        payload.unpack(missed)
    damaged = tmp_path / "damaged"
    _machine(gpu_dir, damaged, range(1, n + 1))
    part = next((damaged / "parts").glob("stream.part02"))
    data = part.read_bytes()
    part.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # always a change (writing b"x" was none when it was "x")
    with pytest.raises(SystemExit, match="sha256"):
        payload.unpack(damaged)


def test_checkout_is_counted_without_the_bundled_onnx_models():
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    counted = payload.checkout_bytes(repo)
    onnx = sum(p.stat().st_size for p in (repo / "models").glob("*.onnx"))
    assert 0 < counted < 20 * MiB < onnx + counted
