"""The converter refuses crafted and damaged checkpoints and size models, runs nothing, writes nothing."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cellflow_rt.convert import CheckpointFormatError, UnsafeCheckpointError, convert_checkpoint
from cellflow_rt.convert.torch_checkpoint import read_state_dict, read_torch_checkpoint
from cellflow_rt.export.size_model import SizeModelError
from convert_helpers import (Global, PersId, Reduce, copy_zip, npy_with_pickle, pickle_bytes, save_zip_state,
                             state_pickle, tensor, write_zip_checkpoint)

WEIGHTS = Path(__file__).resolve().parents[2].parent / "shared" / "weights"
NUCLEI = WEIGHTS / "cellflow_nuclei_demo"
pytestmark = pytest.mark.skipif(not NUCLEI.is_file(), reason="../shared/weights is absent")


def _assert_refused(path, out_dir, error, *needles, **options):
    with pytest.raises(error) as info:
        convert_checkpoint(path, name="m", out_dir=out_dir, **options)
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert not out_dir.exists() or not any(out_dir.iterdir()), "something was written"
    return message


@pytest.mark.parametrize("module, name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                          ("subprocess", "call"), ("builtins", "exec")])
def test_code_running_globals_are_refused_and_not_run(tmp_path, module, name):
    sentinel = tmp_path / "sentinel"
    command = f"open({str(sentinel)!r}, 'w')" if name in ("eval", "exec") else f"touch {sentinel}"
    data = pickle_bytes(Reduce(Global(module, name), (command,)))
    path = tmp_path / "evil.pth"
    write_zip_checkpoint(path, data, {})
    message = _assert_refused(path, tmp_path / "out", UnsafeCheckpointError, f"{module}.{name}", str(path))
    assert "not run" in message
    assert not sentinel.exists()


def test_forbidden_global_inside_a_state_dict_is_refused(tmp_path):
    # a valid-looking state dict with one entry that calls os.system: refused before any tensor is read
    sentinel = tmp_path / "sentinel"
    state = {"a": np.zeros(3, np.float32)}
    data, storages = state_pickle(state)
    data = data[:-2] + pickle_bytes("b")[2:-1] + pickle_bytes(Reduce(Global("os", "system"),
                                                                     (f"touch {sentinel}",)))[2:-1] + b"u."
    path = tmp_path / "evil.pth"
    write_zip_checkpoint(path, data, storages)
    with pytest.raises(UnsafeCheckpointError, match="os.system") as info:
        read_torch_checkpoint(path)
    assert info.value.global_name == "os.system"
    assert not sentinel.exists()


@pytest.mark.parametrize("module, name, error", [("torch.nn.modules.conv", "Conv2d", UnsafeCheckpointError),
                                                 ("numpy", "ndarray", UnsafeCheckpointError),
                                                 ("builtins", "getattr", UnsafeCheckpointError),
                                                 ("torch", "ComplexFloatStorage", CheckpointFormatError)])
def test_unknown_classes_and_storage_types_are_refused(tmp_path, module, name, error):
    array = np.zeros(4, np.float32)
    data = pickle_bytes({"w": tensor("0", array, storage_type=Global(module, name))}) if "Storage" in name else \
        pickle_bytes({"w": Reduce(Global(module, name), ())})
    path = tmp_path / "odd.pth"
    write_zip_checkpoint(path, data, {"0": array})
    _assert_refused(path, tmp_path / "out", error, f"{module}.{name}")


@pytest.mark.parametrize("junk", ["text", 3, [1, 2], None])
def test_non_tensor_entries_are_refused(tmp_path, junk):
    path = tmp_path / "junk.pth"
    write_zip_checkpoint(path, pickle_bytes({"w": junk}), {})
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "'w'", "not a tensor")


def test_a_tensor_rebuilt_from_something_else_than_a_storage_is_refused(tmp_path):
    fake = Reduce(Global("torch._utils", "_rebuild_tensor_v2"), ("not a storage", 0, (2,), (1,), False, None))
    path = tmp_path / "fake.pth"
    write_zip_checkpoint(path, pickle_bytes({"w": fake}), {})
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "instead of a storage")


def test_other_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "module.pth"
    write_zip_checkpoint(path, pickle_bytes({"w": PersId(("module", "os", "source"))}), {})
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "persistent id")


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    data, storages = state_pickle({"a": np.ones(2, np.float32)})
    write_zip_checkpoint(path, pickle_bytes([1, 2]), storages)
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "not a state dict")


def test_truncated_zip_is_refused(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(NUCLEI.read_bytes()[: NUCLEI.stat().st_size // 2])
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, str(path), "truncated")


def test_zip_without_data_pkl_is_refused(tmp_path):
    path = tmp_path / "nopkl.pth"
    copy_zip(NUCLEI, path, skip=("data.pkl",))
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "data.pkl")


def test_zip_missing_a_storage_is_refused(tmp_path):
    path = tmp_path / "nostorage.pth"
    copy_zip(NUCLEI, path, skip=("/data/5",))
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "data/5", "missing")


def test_storage_shorter_than_its_tensor_is_refused(tmp_path):
    path = tmp_path / "short.pth"
    copy_zip(NUCLEI, path, replace={"/data/7": b"\0" * 12})
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "storage 7", "bytes")


def test_damaged_storage_is_refused(tmp_path):
    # a storage's bytes changed in place (same length) while the zip still records the original CRC
    path = tmp_path / "damaged.pth"
    with zipfile.ZipFile(NUCLEI) as z:
        original = next(i for i in z.infolist() if i.filename.endswith("/data/7"))
    copy_zip(NUCLEI, path, replace={"/data/7": b"\x7f" * original.file_size})
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(original.filename)
    data = bytearray(path.read_bytes())
    old, new = info.CRC.to_bytes(4, "little"), original.CRC.to_bytes(4, "little")
    local = info.header_offset + 14  # CRC field of the local header
    central = data.index(b"PK\x01\x02")  # central directory entries, in member order
    while int.from_bytes(data[central + 42:central + 46], "little") != info.header_offset:
        central = data.index(b"PK\x01\x02", central + 4)
    assert data[local:local + 4] == old and data[central + 16:central + 20] == old
    data[local:local + 4] = data[central + 16:central + 20] = new
    path.write_bytes(bytes(data))
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, "data/7", "damaged")


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    array = np.zeros(4, np.float32)
    bad = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                 (PersId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 4)), 2, (2, 2), (2, 1), False, None))
    path = tmp_path / "past.pth"
    write_zip_checkpoint(path, pickle_bytes({"w": bad}), {"0": array})
    with pytest.raises(CheckpointFormatError, match="needs element 5 of storage 0"):
        read_state_dict(path)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(1000))
    _assert_refused(path, tmp_path / "out", CheckpointFormatError, str(path))


def test_size_model_calling_a_forbidden_global_is_refused(tmp_path):
    sentinel = tmp_path / "sentinel"
    size = tmp_path / "evil_size.npy"
    npy_with_pickle(size, pickle_bytes(Reduce(Global("posix", "system"), (f"touch {sentinel}",))))
    _assert_refused(NUCLEI, tmp_path / "out", SizeModelError, "posix.system", str(size), size_model=size)
    assert not sentinel.exists()


def test_a_handmade_state_dict_reads_back(tmp_path):
    # the reader against the writer of convert_helpers (dtypes, shapes, strides)
    state = {"f": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "h": np.ones((2, 2), np.float16),
             "n": np.array(7, np.int64), "e": np.zeros((0, 3), np.float32)}
    path = tmp_path / "state.pth"
    save_zip_state(path, state)
    got = read_state_dict(path)
    assert list(got) == list(state)
    for key, value in state.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape
        np.testing.assert_array_equal(got[key], value)
    assert not got["f"].flags.writeable
