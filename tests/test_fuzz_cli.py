"""Fuzz target: ``cellflow-rt run``'s options, driven in process through click's test runner.

Each case gives a random subset of the real options with values of every kind (numbers out of
range, negative, NaN, text, empty, repeated) on a folder holding one corrupt PNG, so that valid
option sets load the model and reach the reader quickly. The contract: exit status 0, 1 (per-image
failures) or 2 (usage error) with a message, never an uncaught exception or a traceback.
"""
from __future__ import annotations

import contextlib
import os

import click
import pytest

hypothesis = pytest.importorskip("hypothesis")
from click.testing import CliRunner  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from cellflow_rt.cli import main  # noqa: E402

pytestmark = pytest.mark.fuzz

RUN = main.commands["run"]
OPTIONS = sorted(opt for p in RUN.params if isinstance(p, click.Option) and p.name not in ("example", "add_model")
                 for opt in p.opts[:1])
FLAGS = {opt for p in RUN.params if isinstance(p, click.Option) and p.is_flag for opt in p.opts[:1]}
values = st.sampled_from(["0", "1", "-1", "2", "17", "0.5", "-0.5", "nan", "inf", "1e9", "", "abc", "0,0", "1,2,3",
                          "nuclei_demo", "cpu", "cuda", "threads", "fp16", "-", "3D", "128,128"])


@contextlib.contextmanager
def _working_directory(folder):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 8)
    return folder


@settings(max_examples=25 if settings().max_examples <= 300 else 500, deadline=None)
@given(chosen=st.lists(st.tuples(st.sampled_from(OPTIONS), values), max_size=5))
def test_fuzz_run_options(folder, chosen):
    args = ["run", "--dir", str(folder), "--model", "nuclei_demo", "--savedir", str(folder)]
    for option, value in chosen:
        args += [option] if option in FLAGS else [option, value]
    with _working_directory(folder):  # relative paths (--savedir 0 ...) land there, not in the repository
        result = CliRunner().invoke(main, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: uncaught {type(result.exception).__name__}: {result.exception}") \
            from result.exception
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert "Traceback" not in result.output
    if result.exit_code:
        assert result.output.strip(), args
