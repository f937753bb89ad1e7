"""cellflow_rt.progress and ``cellflow-rt run``'s output: a bar on a terminal (a pseudo-terminal here),
plain greppable lines otherwise, no line per block, the one-time compile notice, --verbose timings."""
import io
import os
import re
import select
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from cli_helpers import FAST, cli_executable, crop, run_cli
from cellflow_rt.progress import KernelCompileNotice, Reporter, StageProgress, TileProgressNetwork


def _plain_reporter():
    out, err = io.StringIO(), io.StringIO()
    return Reporter(interactive=False, out=out, err=err), out, err


def test_stage_lines_come_a_tenth_at_a_time_not_per_block():
    reporter, _, err = _plain_reporter()
    stages = StageProgress(reporter)
    for stage in ("statistics", "segment"):
        for done in range(0, 501):
            stages(SimpleNamespace(stage=stage, done=done, total=500, skipped=3, seconds=1.0))
    lines = err.getvalue().splitlines()
    for stage in ("statistics", "segment"):
        mine = [ln for ln in lines if ln.startswith(f"  {stage}: ")]
        assert len(mine) == 11, mine  # 0/500, 50/500, ..., 500/500
        assert mine[-1] == f"  {stage}: 500/500 blocks, 3 empty skipped (1.0 s)"


def test_plain_reporter_draws_no_bar():
    reporter, out, err = _plain_reporter()
    bar = reporter.bar(10, "images", "image")
    for _ in range(10):
        bar.update(1)
    bar.close()
    reporter.line("a line")
    reporter.detail("hidden without --verbose")
    assert out.getvalue() == "a line\n" and err.getvalue() == ""


class _Net:
    """Stands in for the network: outputs depend on each tile alone; counts the calls."""

    providers = ["CPUExecutionProvider"]

    def __init__(self):
        self.calls = []

    def run(self, tiles, batch_size=8):
        self.calls.append(len(tiles))
        return tiles[:, :3] * 2.0, tiles.reshape(len(tiles), -1)[:, :256].copy()


def test_tile_counting_network_gives_the_same_outputs():
    reporter, _, _ = _plain_reporter()
    tiles = np.random.default_rng(0).random((21, 3, 16, 16)).astype(np.float32)
    inner = _Net()
    y, s = TileProgressNetwork(inner, reporter).run(tiles, batch_size=4)
    y0, s0 = _Net().run(tiles)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(s, s0)
    assert inner.calls == [8, 8, 5]
    assert TileProgressNetwork(inner, reporter).providers == ["CPUExecutionProvider"]


def test_compile_notice_once_with_its_duration():
    import numba

    said = []
    with KernelCompileNotice(said.append) as notice:
        @numba.njit(cache=False)
        def twice(x):
            return 2 * x

        @numba.njit(cache=False)
        def outer(x):
            return twice(x) + 1

        assert outer(3) == 7 and outer(4.0) == 9.0  # two signatures, a nested kernel: still one notice
    assert len(said) == 2 and said[0].startswith("compiling numba kernels")
    assert re.match(r"compiled the numba kernels in \d+\.\d s", said[1]) and notice.seconds > 0
    said.clear()
    with KernelCompileNotice(said.append):
        assert outer(5) == 11  # already compiled: nothing to say
    assert said == []


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    for name, size in (("a.tif", 96), ("b.tif", 80)):
        tifffile.imwrite(root / name, crop(size))
    return root


def _run_in_pty(args, cwd, timeout=300):
    """Run ``cellflow-rt ARGS`` with stdout and stderr on a pseudo-terminal; return (code, output)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([cli_executable()] + [str(a) for a in args], cwd=cwd, stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, COLUMNS="100"))
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_terminal_gets_a_bar_and_a_log_gets_plain_lines(two_images):
    args = ["run", "a.tif", "b.tif", *FAST, "--no_npy", "--save_png", "--verbose"]
    code, tty = _run_in_pty(args + ["--savedir", "tty"], two_images)
    assert code == 0, tty
    assert "images:" in tty and "\r" in tty and "2/2" in tty  # tqdm's bar, redrawn in place
    for name in ("a.tif", "b.tif"):
        assert re.search(rf"\[\d/2\] {name}: \d+ cells", tty), tty
    plain = run_cli(args + ["--savedir", "log"], cwd=two_images)
    assert plain.returncode == 0, plain.output
    assert "\r" not in plain.output and "images:" not in plain.output
    summaries = re.findall(r"^\[(\d)/2\] (\S+): \d+ cells, diameter 17\.0 px, [\d.]+ s$", plain.stdout, re.M)
    assert summaries == [("1", "a.tif"), ("2", "b.tif")], plain.stdout
    timings = re.findall(r"^  read [\d.]+ s, preprocess [\d.]+ s, network [\d.]+ s, dynamics [\d.]+ s, "
                         r"write [\d.]+ s$", plain.stderr, re.M)
    assert len(timings) == 2, plain.stderr
