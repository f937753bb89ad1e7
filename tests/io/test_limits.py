"""Images over the in-memory ceiling (cellflow_rt.io.limits) are refused from their header, before
anything is allocated: by the readers, ``cellflow-rt run``, ``serve``, the napari reader, the
``_seg.npy`` loader and the blockwise sources.

The run/serve/napari cases are measured in their own processes: the refusal's time, and the peak
resident memory (``ru_maxrss`` of the child, or ``VmHWM`` of the server) against 200 MB.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellflow_rt.io import ImageReadError, imread, imread_bytes
from cellflow_rt.io.limits import DEFAULT_MAX_VALUES, ENV_VAR, ImageTooLargeError, check_declared_shape, max_values
from cellflow_rt.io.seg_file import load_seg_npy
from cli_helpers import cli_executable
from hostile_files import png_claiming, tiff_claiming

HUGE = 100_000
MB = 1 << 20


def _huge_files(folder: Path) -> dict:
    files = {"huge.png": png_claiming(HUGE, HUGE), "huge.tif": tiff_claiming(HUGE, HUGE)}
    for name, data in files.items():
        assert len(data) <= 140  # "a 100-byte PNG": 68 bytes; the TIFF with its one IFD: 138
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def _npy_claiming(shape) -> bytes:
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return fh.getvalue() + bytes(16)


# --------------------------------------------------------------------------------------------------
# the ceiling


def test_ceiling_defaults_and_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert max_values() == DEFAULT_MAX_VALUES == 2**31
    monkeypatch.setenv(ENV_VAR, "1000")
    assert max_values() == 1000
    monkeypatch.setenv(ENV_VAR, "1e6")
    assert max_values() == 1_000_000
    for bad in ("-5", "0", "lots"):
        monkeypatch.setenv(ENV_VAR, bad)
        with pytest.raises(ValueError, match=ENV_VAR):
            max_values()


def test_check_declared_shape_counts_every_axis():
    check_declared_shape((10, 10, 3), None, limit=300)
    with pytest.raises(ImageTooLargeError, match=r"declares shape \(10, 10, 4\) \(400 values\)") as info:
        check_declared_shape((10, 10, 4), "x.tif", limit=300)
    assert isinstance(info.value, ImageReadError) and info.value.limit == 300
    with pytest.raises(ImageReadError, match="negative"):
        check_declared_shape((10, -1), None)


@pytest.mark.parametrize("name,data", [("huge.png", png_claiming(HUGE, HUGE)), ("huge.tif", tiff_claiming(HUGE, HUGE)),
                                       ("huge.npy", _npy_claiming((HUGE, HUGE)))])
def test_readers_refuse_declared_size_from_the_header(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    for read in (lambda: imread(path), lambda: imread_bytes(data, {"png": "png", "tif": "tiff", "npy": "npy"}[name[-3:]])):
        with pytest.raises(ImageTooLargeError) as info:
            read()
        message = str(info.value)
        assert f"({HUGE}, {HUGE}" in message and "10,000,000,000 values" in message
        assert ENV_VAR in message and "--blocksize" in message


def test_env_var_lowers_the_ceiling_for_real_images(tmp_path, monkeypatch):
    image = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    tifffile.imwrite(tmp_path / "small.tif", image)
    np.testing.assert_array_equal(imread(tmp_path / "small.tif"), image)
    monkeypatch.setenv(ENV_VAR, str(32 * 32 - 1))
    with pytest.raises(ImageTooLargeError, match="1,024 values"):
        imread(tmp_path / "small.tif")
    monkeypatch.setenv(ENV_VAR, str(32 * 32))
    np.testing.assert_array_equal(imread(tmp_path / "small.tif"), image)


def test_seg_npy_pickle_cannot_allocate_a_declared_array(tmp_path):
    reconstruct = np.zeros(1).__reduce__()[0]

    class Allocates:  # unpickled as numpy's _reconstruct(ndarray, (HUGE, HUGE), "u1")
        def __reduce__(self):
            return reconstruct, (np.ndarray, (HUGE, HUGE), b"B")

    path = tmp_path / "bomb_seg.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(pickle.dumps({"masks": Allocates()}, protocol=2))
    with pytest.raises(ImageTooLargeError, match="pickled array declares shape"):
        load_seg_npy(path)


def test_zarr_source_with_huge_chunks_is_refused(tmp_path):
    zarr = pytest.importorskip("zarr")
    from cellflow_rt.big.sources import open_source

    zarr.create_array(str(tmp_path / "bomb.zarr"), shape=(HUGE, HUGE), chunks=(HUGE, HUGE), dtype="uint8")
    with pytest.raises(ImageTooLargeError, match="chunk declares shape .*smaller chunks"):
        open_source(tmp_path / "bomb.zarr")
    zarr.create_array(str(tmp_path / "fine.zarr"), shape=(HUGE, HUGE), chunks=(1024, 1024), dtype="uint8")
    assert open_source(tmp_path / "fine.zarr").shape == (HUGE, HUGE)


# --------------------------------------------------------------------------------------------------
# run, serve, napari: time and peak memory, each in its own process


#: Runs a command and prints its exit status and peak RSS (from wait4: that child's own). The command
#: is started from this small process, not from pytest: a child forked from a large parent counts the
#: parent's pages in its ru_maxrss until it execs.
PEAK_WRAPPER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    tic = time.perf_counter()
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status), "peak": usage.ru_maxrss * 1024,
                      "seconds": time.perf_counter() - tic, "stderr": err}))
""")


def _run_measured(command) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *map(str, command)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_run_refuses_huge_headers_fast_and_small(tmp_path):
    files = _huge_files(tmp_path)
    run = _run_measured([cli_executable(), "run", "--dir", tmp_path, "--model", "nuclei_demo", "--diameter", "17",
                         "--save_png"])
    print(f"run: {run['seconds']:.2f} s for the whole command, peak RSS {run['peak'] / MB:.0f} MB")
    assert run["status"] == 1, run["stderr"]
    for name in files:
        assert f"{name}: FAILED: ImageTooLargeError" in run["stderr"] and "--blocksize" in run["stderr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # nothing written
    # every input refused from its header: the model is not even loaded
    assert run["peak"] < 200 * MB
    assert run["seconds"] < 10  # the command's start-up (imports) included; about 0.6 s on 2 idle cores


READER_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    tic = time.perf_counter()
    from cellflow_rt.napari._reader import get_reader
    reader = get_reader(sys.argv[1])
    try:
        reader(sys.argv[1])
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - tic
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"error": error, "seconds": seconds, "peak": hwm}))
""")


@pytest.mark.parametrize("name", ["huge.png", "huge.tif"])
def test_napari_reader_refuses_huge_image_fast_and_small(tmp_path, name):
    import json

    path = _huge_files(tmp_path)[name]
    seg = tmp_path / f"{path.stem}_seg.npy"
    np.save(seg, {"masks": np.zeros((8, 8), np.uint16), "filename": str(path)}, allow_pickle=True)
    out = subprocess.run([sys.executable, "-c", READER_SCRIPT, str(seg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"napari reader, {name}: {result['seconds']:.2f} s (imports included), peak RSS {result['peak'] / MB:.0f} MB")
    assert result["error"] and result["error"].startswith("ImageTooLargeError") and name in result["error"]
    assert result["seconds"] < 1.0 + 3.0  # the import of the reader included; the refusal itself is ms
    assert result["peak"] < 200 * MB


def test_serve_refuses_huge_bodies_fast_and_keeps_its_memory(tmp_path):
    from serve_helpers import ServerProcess

    files = _huge_files(tmp_path)
    server = ServerProcess(["--model", "nuclei_demo", "--no-access-log"], tmp_path / "server")
    try:
        def hwm():
            status = Path(f"/proc/{server.proc.pid}/status").read_text()
            return next(int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmHWM"))
        before = hwm()
        for name, content_type in (("huge.png", "image/png"), ("huge.tif", "image/tiff")):
            tic = time.perf_counter()
            answer = server.post("/segment", files[name].read_bytes(), content_type=content_type)
            seconds = time.perf_counter() - tic
            print(f"serve, {name}: {answer.status} in {seconds * 1000:.0f} ms; VmHWM {hwm() / MB:.0f} MB")
            assert answer.status == 413 and "10000.0 million pixel values" in answer.text, answer.text
            assert seconds < 1.0
        assert hwm() - before < 20 * MB
        print(f"serve: VmHWM {before / MB:.0f} MB before, {hwm() / MB:.0f} MB after")
    finally:
        server.stop()


def test_check_file_size_reads_headers_only(tmp_path):
    from cellflow_rt.io.peek import check_file_size

    files = _huge_files(tmp_path)
    for path in files.values():
        with pytest.raises(ImageTooLargeError):
            check_file_size(path)
    tifffile.imwrite(tmp_path / "fine.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk")
    (tmp_path / "huge.npy").write_bytes(_npy_claiming((HUGE, HUGE)))
    check_file_size(tmp_path / "fine.tif")
    check_file_size(tmp_path / "corrupt.png")  # the reader reports it, with its own message
    with pytest.raises(ImageTooLargeError, match=".npy array declares"):
        check_file_size(tmp_path / "huge.npy")
