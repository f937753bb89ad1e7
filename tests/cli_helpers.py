"""Helpers for tests that drive ``cellflow-rt`` as a user would: real files, a subprocess, exit codes."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
DSB_IMAGE = SHARED / "data" / "dsb2018_sample" / "dsb_00_image.tif"

#: Fast settings for every run: the bundled nuclei model at its own diameter (no estimate).
FAST = ["--model", "nuclei_demo", "--diameter", "17"]

#: Temporary files of ``cellflow_rt.io.atomic_write`` (``.<hex>.tmp.<name>``).
TMP_PATTERN = re.compile(r"^\.[0-9a-f]+\.tmp\.")


def cli_executable() -> str:
    """The ``cellflow-rt`` console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "cellflow-rt"
    if beside.is_file():
        return str(beside)
    found = shutil.which("cellflow-rt")
    if found is None:
        raise RuntimeError("the cellflow-rt console script is not installed (pip install -e .)")
    return found


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def line_for(self, name: str) -> str:
        """The one progress line ``[i/n] NAME: ...`` of an input file (exactly one must exist)."""
        lines = [ln for ln in self.output.splitlines() if re.match(rf"^\[\d+/\d+\] {re.escape(name)}: ", ln)]
        assert len(lines) == 1, f"expected one progress line for {name}, got {lines}\n{self.output}"
        return lines[0]

    def failure_list(self) -> Dict[str, str]:
        """``path -> error`` from the closing ``N of M image(s) failed:`` listing."""
        lines = self.stderr.splitlines()
        heads = [i for i, ln in enumerate(lines) if re.match(r"^\d+ of \d+ image\(s\) failed:$", ln)]
        if not heads:
            return {}
        listed = {}
        for ln in lines[heads[-1] + 1:]:
            if not ln.startswith("  "):
                break
            path, _, error = ln.strip().partition(": ")
            listed[path] = error
        return listed


def run_cli(args: List[str], cwd: Path, timeout: float = 300, env: Dict[str, str] = None) -> CliRun:
    """Run ``cellflow-rt ARGS`` in ``cwd``; never raises on a non-zero exit."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([cli_executable()] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def crop(size: int = 96) -> np.ndarray:
    """A ``size`` x ``size`` uint8 crop of a real DSB2018 nuclei image (a few nuclei of ~17 px)."""
    import tifffile

    if not DSB_IMAGE.is_file():
        import pytest
        pytest.skip(f"shared data not found at {DSB_IMAGE}")
    return np.ascontiguousarray(tifffile.imread(DSB_IMAGE)[:size, :size])


def leftover_temp_files(folder: Path) -> List[Path]:
    """Temporary files of interrupted atomic writes anywhere under ``folder``."""
    return [p for p in Path(folder).rglob("*") if TMP_PATTERN.match(p.name)]


def outputs_of(folder: Path, stem: str) -> List[Path]:
    """Output files of the input ``stem`` in ``folder`` (anything named ``stem_*`` or ``stem.geojson``)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name.startswith(stem + "_") or p.name == stem + ".geojson"))
