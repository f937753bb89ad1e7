"""cellflow_rt.seg_file: _seg.npy files load as plain data; crafted pickles run nothing."""
import io
import os
import pickle

import numpy as np
import pytest

from cellflow_rt.io import save_seg_npy
from cellflow_rt.io.flows import flow_to_rgb
from cellflow_rt.io.seg_file import SegFileError, SegUnpickler, load_seg_npy

from conftest import DATA

CELLPOSE_SEG = DATA / "cellpose_seg"


def _write_npy_pickle(path, payload: bytes):
    """An .npy file whose header says 'object array' followed by the given pickle bytes."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(payload)


class _RunsShell:
    """Pickles as a call to os.system: what a malicious _seg.npy would hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    canary = tmp_path / "pwned"
    evil = {"masks": np.zeros((4, 4), np.uint16), "flows": [_RunsShell(f"touch {canary}")]}
    path = tmp_path / "evil_seg.npy"
    _write_npy_pickle(path, pickle.dumps(np.array(evil, dtype=object), protocol=protocol))
    # the same bytes through an ordinary unpickler would run the command: prove the file is live
    with pytest.raises(SegFileError, match=r"refusing to load (posix|nt)\.system"):
        load_seg_npy(path)
    assert not canary.exists()
    np.load(path, allow_pickle=True)
    assert canary.exists(), "the crafted file should run code under a plain allow_pickle=True load"


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("subprocess", "Popen"),
    ("numpy", "load"), ("numpy.testing._private.utils", "runstring"), ("numpy.lib.format", "read_array"),
    ("copyreg", "_reconstructor"), ("pickle", "loads"),
])
def test_only_plain_data_globals_are_admitted(module, name):
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        SegUnpickler(io.BytesIO(b"")).find_class(module, name)


def test_object_array_from_raw_bytes_is_refused(tmp_path):
    """An object array rebuilt from raw bytes would hold forged pointers: numpy refuses, and so do we."""
    reconstruct = np.zeros(1).__reduce__()[0]

    class Forged:
        def __reduce__(self):
            return reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), np.dtype(object), False, b"A" * 8)

    path = tmp_path / "forged_seg.npy"
    _write_npy_pickle(path, pickle.dumps({"masks": Forged()}, protocol=2))
    with pytest.raises(SegFileError, match="corrupt pickle"):
        load_seg_npy(path)


def test_reads_what_cellpose_masks_flows_to_seg_writes():
    seg = load_seg_npy(CELLPOSE_SEG / "cells_seg.npy")
    assert seg["masks"].dtype == np.uint16 and seg["masks"].shape == (48, 64) and seg["masks"].max() == 3
    assert seg["chan_choose"] == [0, 0]
    assert float(seg["diameter"]) == 17.0
    assert len(seg["flows"]) == 5 and seg["flows"][4].shape == (3, 48, 64)
    assert seg["filename"].endswith("cells.tif")


def test_reads_cellpose_gui_layout_with_extra_keys():
    seg = load_seg_npy(CELLPOSE_SEG / "gui_seg.npy")
    assert seg["normalize_params"]["percentile"] == [1.0, 99.0] and seg["restore"] is None
    assert seg["img"].shape == (24, 24) and seg["flows"] == [[], [], [], [], [[]]]


def test_round_trip_of_our_writer(tmp_path):
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 20, 30), np.uint16)
    masks[1, 5:10, 5:12] = 1
    masks[2, 10:15, 15:25] = 2
    dP = rng.normal(size=(3, 3, 20, 30)).astype(np.float32)
    cellprob = rng.normal(size=(3, 20, 30)).astype(np.float32)
    path = save_seg_npy(masks, [flow_to_rgb(dP), dP, cellprob], tmp_path / "vol.tif", diameter=12.5,
                        channels=[2, 1])
    seg = load_seg_npy(path)
    np.testing.assert_array_equal(seg["masks"], masks)
    np.testing.assert_array_equal(seg["flows"][4], np.concatenate((dP, cellprob[None])))
    assert seg["diameter"] == 12.5 and seg["chan_choose"] == [2, 1]


def test_numpy1_module_names_are_read(tmp_path):
    """Files saved under numpy 1 name numpy.core.multiarray (numpy 2 moved it to numpy._core)."""
    data = {"masks": np.arange(12, dtype=np.uint16).reshape(3, 4), "diameter": np.float32(30.0), "name": "x"}
    payload = pickle.dumps(np.array(data, dtype=object), protocol=2)
    assert b"numpy._core.multiarray" in payload
    path = tmp_path / "old_seg.npy"
    _write_npy_pickle(path, payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    seg = load_seg_npy(path)
    np.testing.assert_array_equal(seg["masks"], data["masks"])
    assert seg["diameter"] == np.float32(30.0) and seg["name"] == "x"


@pytest.mark.parametrize("make,problem", [
    (lambda p: p.write_bytes(b""), "not an .npy"),
    (lambda p: np.save(p, np.zeros((4, 4))), "plain float64 array"),
    (lambda p: np.save(p, {"outlines": np.zeros((4, 4), np.uint16)}, allow_pickle=True), "no 2D or 3D integer 'masks'"),
    (lambda p: np.save(p, [1, 2, 3], allow_pickle=False), "plain int64 array"),
    (lambda p: _write_npy_pickle(p, pickle.dumps(np.array({"masks": 1}, dtype=object))[:-5]), "corrupt pickle"),
])
def test_malformed_files_name_the_problem(tmp_path, make, problem):
    path = tmp_path / "bad_seg.npy"
    make(path)
    with pytest.raises(SegFileError, match=problem):
        load_seg_npy(path)


def test_missing_file(tmp_path):
    with pytest.raises(SegFileError, match="no such file"):
        load_seg_npy(tmp_path / "absent_seg.npy")
