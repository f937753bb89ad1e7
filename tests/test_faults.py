"""Faults in the middle of work: ``cellflow-rt run`` killed with SIGKILL at random points, a
blockwise run killed while it writes its zarr, and a disk that fills up under a batch.

The contract: every output under its final name is complete (it opens and holds the masks a clean
run writes), an interrupted one is absent; a rerun with ``--skip_existing`` finishes the rest; a full
disk is a clear per-image error, keeps what was written and leaves no partial file. Small crops and
the bundled nuclei model keep each test to seconds.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import FAST, cli_executable, crop, leftover_temp_files, run_cli

pytestmark = pytest.mark.faults

N_IMAGES = 6
OUTPUT_FLAGS = ["--save_tif", "--save_png"]


def _inputs(folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    image = crop(160)
    names = []
    for i in range(N_IMAGES):  # different crops: different masks per image
        tifffile.imwrite(folder / f"img{i}.tif", np.ascontiguousarray(np.roll(image, 23 * i, axis=(0, 1))[:96, :96]))
        names.append(f"img{i}")
    return names


def _masks_in(path: Path) -> np.ndarray:
    """The labels an output file holds (it must open completely)."""
    if path.name.endswith("_seg.npy"):
        from cellflow_rt.io.seg_file import load_seg_npy
        return load_seg_npy(path)["masks"]
    if path.suffix == ".png":
        from PIL import Image
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    return tifffile.imread(path)


def _outputs(folder: Path) -> dict:
    return {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
            and (p.name.endswith("_seg.npy") or "_cp_masks" in p.name)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Inputs, and the outputs of an uninterrupted run, with its duration."""
    folder = tmp_path_factory.mktemp("clean")
    names = _inputs(folder)
    tic = time.perf_counter()
    run = run_cli(["run", "--dir", folder, *FAST, *OUTPUT_FLAGS], cwd=folder)
    seconds = time.perf_counter() - tic
    assert run.returncode == 0, run.output
    outputs = {name: _masks_in(path) for name, path in _outputs(folder).items()}
    assert len(outputs) == 3 * N_IMAGES
    return names, outputs, seconds


def _kill_when(proc: subprocess.Popen, folder: Path, ready, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready(folder)`` holds (polled every few ms)."""
    deadline = time.monotonic() + timeout
    while not ready(folder):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("the run ended before the point it was to be killed at")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_batch_killed_at_random_points_leaves_complete_or_absent_outputs(tmp_path, reference):
    names, expected, _ = reference
    rng = random.Random(26)
    # kill points: while a temporary file is being written, then after a random number of outputs; at
    # least one image's outputs (3) left, so that the kill lands before the run ends (killing after 17
    # of 18 let the last file be written before SIGKILL arrived, a race seen in CI)
    points = [("mid-write", lambda f: bool(leftover_temp_files(f)))]
    for k in sorted(rng.sample(range(1, len(expected) - 3), 2)):
        points.append((f"after {k} outputs", lambda f, k=k: len(_outputs(f)) >= k))
    for attempt, (label, ready) in enumerate(points):
        folder = tmp_path / f"kill{attempt}"
        _inputs(folder)
        proc = subprocess.Popen([cli_executable(), "run", "--dir", str(folder), *FAST, *OUTPUT_FLAGS],
                                cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_when(proc, folder, ready)
        written = _outputs(folder)
        assert len(written) < len(expected)
        for name, path in written.items():  # under a final name: complete, and what a clean run writes
            np.testing.assert_array_equal(_masks_in(path), expected[name], err_msg=name)
        # finish with --skip_existing: every output there, the images already complete not redone
        before = {name: path.stat().st_mtime_ns for name, path in written.items()}
        rerun = run_cli(["run", "--dir", folder, *FAST, *OUTPUT_FLAGS, "--skip_existing"], cwd=folder)
        assert rerun.returncode == 0, rerun.output
        finished = _outputs(folder)
        assert sorted(finished) == sorted(expected)
        for name, path in finished.items():
            np.testing.assert_array_equal(_masks_in(path), expected[name], err_msg=name)
        complete = [n for n in names if all(w in before for w in expected if w.startswith(n + "_"))]
        for n in complete:
            assert f"{n}.tif: skipped (outputs exist)" in rerun.output, rerun.output
            assert all(finished[w].stat().st_mtime_ns == before[w] for w in expected if w.startswith(n + "_"))
        print(f"killed {label}: {len(written)} of {len(expected)} outputs complete, {len(complete)} images "
              f"skipped on the rerun, {len(leftover_temp_files(folder))} temporary files of the killed write left")


def _small_filesystem(folder: Path, size: str = "64k"):
    """Mount a tmpfs of ``size`` on ``folder``; skip when mounting is not permitted."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (a full disk cannot be made otherwise here)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted in this sandbox ({done.stderr.strip()})")
    return folder


def test_full_disk_is_a_clear_error_and_keeps_what_was_written(tmp_path, reference):
    names, expected, _ = reference
    # inputs and outputs on a 600 KiB tmpfs: each image's _seg.npy is about 210 KB, so the disk fills
    # on the third image
    folder = _small_filesystem(tmp_path / "small", "600k")
    try:
        _inputs(folder)
        run = run_cli(["run", "--dir", folder, *FAST, *OUTPUT_FLAGS], cwd=tmp_path)
        written = _outputs(folder)
        assert run.returncode == 1, run.output
        assert 0 < len(written) < len(expected), sorted(written)  # the disk filled part of the way through
        for name, path in written.items():
            np.testing.assert_array_equal(_masks_in(path), expected[name], err_msg=name)
        assert not leftover_temp_files(folder), sorted(p.name for p in folder.iterdir())
        failed = [ln for ln in run.output.splitlines() if "FAILED" in ln]
        assert failed and all("No space left on device" in ln for ln in failed), run.output
        assert "Traceback" not in run.output
        print(f"full disk: {len(written)} of {len(expected)} outputs written; {len(failed)} images failed: {failed[0]}")
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _limit_file_size(limit: int):
    def apply():  # in the child: writes past ``limit`` bytes fail with EFBIG instead of killing it
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_write_failing_midway_without_root_keeps_outputs_and_leaves_no_partial_file(tmp_path, reference):
    """The same fault as a full disk where mounting is not allowed: RLIMIT_FSIZE makes every write
    past 100 KB fail (EFBIG), so each image's ~210 KB _seg.npy fails half-written."""
    names, expected, _ = reference
    folder = tmp_path / "limited"
    _inputs(folder)
    proc = subprocess.run([cli_executable(), "run", "--dir", str(folder), *FAST, *OUTPUT_FLAGS], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(100_000))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    failed = [ln for ln in output.splitlines() if "FAILED" in ln]
    assert len(failed) == N_IMAGES and all("_seg.npy': File too large" in ln for ln in failed), output
    written = _outputs(folder)
    assert written and not any(name.endswith("_seg.npy") for name in written)
    for name, path in written.items():
        np.testing.assert_array_equal(_masks_in(path), expected[name], err_msg=name)
    assert not leftover_temp_files(folder)


def _big_input(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tile = crop(160)
    image = np.tile(tile, (3, 3))[:448, :448]
    tifffile.imwrite(folder / "big.tif", image)
    return folder / "big.tif"


BLOCKWISE = ["--blocksize", "128", "--scheduler", "threads"]


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_blockwise_run_killed_while_writing_never_leaves_a_partial_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    clean = _big_input(tmp_path / "clean")
    run = run_cli(["run", clean, *FAST, *BLOCKWISE], cwd=tmp_path)
    assert run.returncode == 0, run.output
    expected = zarr.open_array(str(clean.parent / "big_cp_masks.zarr"), mode="r")[:]
    assert expected.max() > 10

    folder = tmp_path / "killed"
    path = _big_input(folder)
    output = folder / "big_cp_masks.zarr"
    proc = subprocess.Popen([cli_executable(), "run", str(path), *FAST, *BLOCKWISE], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # killed once the output zarr is being written (its temporary folder exists)
    _kill_when(proc, folder, lambda f: any(p.name.endswith(".tmp.big_cp_masks.zarr") for p in f.iterdir()))
    assert not output.exists()  # never a half-written zarr under the final name
    leftovers = [p for p in folder.iterdir() if p.name.endswith(".tmp.big_cp_masks.zarr")]
    assert leftovers
    rerun = run_cli(["run", path, *FAST, *BLOCKWISE], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.output
    assert "left by an interrupted run" in rerun.output and "starting clean" in rerun.output
    np.testing.assert_array_equal(zarr.open_array(str(output), mode="r")[:], expected)
    assert not [p for p in folder.iterdir() if ".tmp." in p.name or ".old." in p.name]
    # a second run replaces the complete output whole
    again = run_cli(["run", path, *FAST, *BLOCKWISE], cwd=tmp_path)
    assert again.returncode == 0, again.output
    np.testing.assert_array_equal(zarr.open_array(str(output), mode="r")[:], expected)


# --------------------------------------------------------------------------------------------------
# leftovers of killed runs: removed by the next run once their writer is gone, and only then

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from cellflow_rt.io.atomic import atomic_write
from cellflow_rt.big.pipeline import _parts_dir
folder = Path(sys.argv[1])
parts = Path(_parts_dir(folder, None))       # a blockwise run's working folder...
(parts / "block_0.npy").write_bytes(b"part")
with atomic_write(folder / "img_cp_masks.tif") as tmp:   # ...and an output being written
    tmp.write_bytes(b"half a tiff")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([os.sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (then, then))


def test_rerun_removes_what_a_killed_run_left_and_nothing_else(tmp_path, monkeypatch):
    from cellflow_rt.io import stale
    from cellflow_rt.io.atomic import write_bytes
    from cellflow_rt.big.pipeline import _parts_dir

    folder = tmp_path / "out"
    folder.mkdir()
    killed = subprocess.run([os.sys.executable, "-c", _KILLED_WRITER, str(folder)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    temporaries = [p for p in folder.iterdir() if ".tmp." in p.name]
    blocks = [p for p in folder.iterdir() if p.name.startswith("cellflow-blocks-")]
    assert len(temporaries) == 1 and len(blocks) == 1  # what a kill leaves
    host = stale.writer_tag()[:8]
    live = subprocess.Popen([os.sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = {
            # a live writer's (another process on this host), however old
            folder / f".0123abcd{host}{live.pid:08x}.tmp.a_cp_masks.tif": b"",
            # a dead writer of another host (its pid says nothing here)
            folder / f".0123abcd00000000{_dead_pid():08x}.tmp.b_cp_masks.tif": b"",
            # the old name format, without a writer tag: cannot tell, left alone
            folder / ".0badc0de.tmp.c_cp_masks.tif": b"",
            # the user's files
            folder / "notes.tmp.txt": b"mine", folder / f".0123abcd{host}00000001.tmp": b"not ours",
        }
        for path, data in keep.items():
            path.write_bytes(data)
        fresh_dead = folder / f".0123abcd{host}{_dead_pid():08x}.tmp.d_cp_masks.tif"
        fresh_dead.write_bytes(b"")
        for path in [*temporaries, *blocks, *keep]:
            _age(path, 2 * stale.STALE_AFTER)

        monkeypatch.setattr(stale, "_swept", set())  # as in a new process: the rerun
        write_bytes(folder / "img_cp_masks.tif", b"complete")
        _parts_dir(folder, None)
        remaining = set(folder.iterdir())
        assert not any(p in remaining for p in temporaries + blocks), "a killed run's leftovers stayed"
        assert set(keep) | {fresh_dead} <= remaining  # live, foreign, old-format, user's and recent: kept
        assert (folder / "notes.tmp.txt").read_bytes() == b"mine"
        assert (folder / "img_cp_masks.tif").read_bytes() == b"complete"
    finally:
        live.kill()
        live.wait()
