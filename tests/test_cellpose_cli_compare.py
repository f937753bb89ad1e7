"""Command lines from Cellpose's documentation, run by ``python -m cellpose`` (3.1.1.1) and by
``cellflow-rt run`` with the same arguments: the same files must be written, with the same masks,
outlines, ROIs and text outlines.

The reference runs in Cellpose's own environment, ``$CELLPOSE_REFERENCE_PYTHON`` (default
``/work/ref/cp3/bin/python``, the environment ``../shared/reference`` was made with); without it the
test is skipped. The only argument that differs is the model: Cellpose is given the demo checkpoint
``../shared/weights/cellflow_cyto_demo``, cellflow-rt the bundled ``cyto_demo``, its export.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pillow_codecs import decode

from cli_helpers import run_cli
from conftest import REFERENCE_2D, SHARED

REFERENCE_PYTHON = Path(os.environ.get("CELLPOSE_REFERENCE_PYTHON", "/work/ref/cp3/bin/python"))
CHECKPOINT = SHARED / "weights" / "cellflow_cyto_demo"

#: ``python -m cellpose --dir ~/images_cyto/test/ --pretrained_model cyto --chan 2 --chan2 3 --save_png``
#: (Cellpose's documentation, "Command line"); then the same with the outputs added in 3.x.
COMMANDS = {
    "docs": ["--dir", "imgs", "--pretrained_model", "MODEL", "--chan", "2", "--chan2", "3", "--save_png"],
    "outputs": ["--dir", "imgs", "--pretrained_model", "MODEL", "--chan", "2", "--chan2", "3", "--save_png",
                "--save_tif", "--save_txt", "--save_outlines", "--save_rois", "--exclude_on_edges", "--in_folders",
                "--output_name", "_run2"],
}


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module", params=sorted(COMMANDS))
def both(request, tmp_path_factory):
    if not REFERENCE_PYTHON.is_file():
        pytest.skip(f"no Cellpose 3.1.1.1 environment at {REFERENCE_PYTHON} (set CELLPOSE_REFERENCE_PYTHON)")
    if not CHECKPOINT.is_file():
        pytest.skip(f"shared weights not found at {CHECKPOINT}")
    image = tifffile.imread(REFERENCE_2D / "cyto_480_rgb_estimate" / "image.tif")[:320, :320]
    root = tmp_path_factory.mktemp(request.param)
    args = COMMANDS[request.param]
    runs = {}
    for side in ("cellpose", "cellflow"):
        (root / side / "imgs").mkdir(parents=True)
        tifffile.imwrite(root / side / "imgs" / "cells.tif", image)
    home = root / "home"  # Cellpose writes its model list and log under ~/.cellpose
    cellpose_args = [str(CHECKPOINT) if a == "MODEL" else a for a in args]
    runs["cellpose"] = subprocess.run([str(REFERENCE_PYTHON), "-m", "cellpose", *cellpose_args], cwd=root / "cellpose",
                                      env=dict(os.environ, HOME=str(home)), capture_output=True, text=True,
                                      timeout=900)
    assert runs["cellpose"].returncode == 0, runs["cellpose"].stderr
    runs["cellflow"] = run_cli(["run", *["cyto_demo" if a == "MODEL" else a for a in args]], cwd=root / "cellflow")
    assert runs["cellflow"].returncode == 0, runs["cellflow"].output
    shutil.rmtree(home, ignore_errors=True)
    return root / "cellpose", root / "cellflow"


def test_same_files(both):
    cellpose, cellflow = both
    assert _files(cellflow) == _files(cellpose)


def test_same_masks(both):
    cellpose, cellflow = both
    for name in _files(cellpose):
        if name.endswith(("_masks.png", "_run2.png")) and "outlines" not in name:
            np.testing.assert_array_equal(decode(cellflow / name), decode(cellpose / name), err_msg=name)
        elif name.endswith(".tif") and not name.endswith("cells.tif"):
            np.testing.assert_array_equal(tifffile.imread(cellflow / name), tifffile.imread(cellpose / name))
    ours = np.load(cellflow / "imgs" / "cells_seg.npy", allow_pickle=True).item()
    theirs = np.load(cellpose / "imgs" / "cells_seg.npy", allow_pickle=True).item()
    for key in ("masks", "outlines"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert ours["chan_choose"] == list(theirs["chan_choose"])


def test_same_outlines_text_rois_and_outline_pixels(both):
    cellpose, cellflow = both
    for name in _files(cellpose):
        if name.endswith(".txt"):
            assert (cellflow / name).read_text() == (cellpose / name).read_text()
        elif name.endswith("_rois.zip"):
            from roifile import roiread

            ours, theirs = roiread(cellflow / name), roiread(cellpose / name)
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                np.testing.assert_array_equal(a.coordinates(), b.coordinates())
        elif "_outlines" in name and name.endswith(".png"):
            # the red outline pixels are the same; the background differs: Cellpose grays an RGB image
            # by averaging all its channels, cellflow-rt shows the two segmented channels
            red = [(decode(side / name) == (255, 0, 0)).all(axis=-1) for side in (cellflow, cellpose)]
            np.testing.assert_array_equal(red[0], red[1])
