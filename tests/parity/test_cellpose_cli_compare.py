"""Command lines from Cellpose's documentation, run by ``python -m cellpose`` (3.1.1.1) and by
``cellflow-rt run`` with the same arguments: the same files must be written, with the same masks,
outlines, ROIs and text outlines.

The reference runs in Cellpose's own environment, ``$CELLFLOW_RT_CELLPOSE_PYTHON`` (cellpose 3.1.1.1
pinned as ``../shared/reference`` was made; ``.ci/run`` builds it, so CI always runs these); without
the variable the tests skip. The only argument that differs is the model: Cellpose is given the demo checkpoint
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
from conftest import REFERENCE_2D, SHARED, cellpose_python

WEIGHTS = SHARED / "weights"

pytestmark = pytest.mark.heavy  # runs Cellpose 3.1.1.1 itself (the oracle)

#: name -> (image case in ../shared/reference/2d, checkpoint for Cellpose, bundled model for us, arguments).
#: "docs" is ``python -m cellpose --dir ~/images_cyto/test/ --pretrained_model cyto --chan 2 --chan2 3
#: --save_png`` from Cellpose's documentation ("Command line"); the others add the outputs of 3.x.
COMMANDS = {
    "docs": ("cyto_480_rgb_estimate", "cellflow_cyto_demo", "cyto_demo",
             ["--dir", "imgs", "--pretrained_model", "MODEL", "--chan", "2", "--chan2", "3", "--save_png"]),
    "outputs": ("cyto_480_rgb_estimate", "cellflow_cyto_demo", "cyto_demo",
                ["--dir", "imgs", "--pretrained_model", "MODEL", "--chan", "2", "--chan2", "3", "--save_png",
                 "--save_tif", "--save_txt", "--save_outlines", "--save_rois", "--exclude_on_edges", "--in_folders",
                 "--output_name", "_run2"]),
    "gray": ("nuclei_256", "cellflow_nuclei_demo", "nuclei_demo",
             ["--dir", "imgs", "--pretrained_model", "MODEL", "--diameter", "17", "--save_png", "--save_outlines",
              "--dir_above", "--output_name", "_n"]),
}


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module", params=sorted(COMMANDS))
def both(request, tmp_path_factory):
    case, checkpoint, bundled, args = COMMANDS[request.param]
    python = cellpose_python()
    if not (WEIGHTS / checkpoint).is_file():
        pytest.skip(f"shared weights not found at {WEIGHTS}")
    image = tifffile.imread(REFERENCE_2D / case / "image.tif")[:320, :320]
    root = tmp_path_factory.mktemp(request.param)
    for side in ("cellpose", "cellflow"):
        (root / side / "imgs").mkdir(parents=True)
        tifffile.imwrite(root / side / "imgs" / "cells.tif", image)
    home = root / "home"  # Cellpose writes its model list and log under ~/.cellpose
    cellpose = subprocess.run([python, "-m", "cellpose",
                               *[str(WEIGHTS / checkpoint) if a == "MODEL" else a for a in args]],
                              cwd=root / "cellpose", env=dict(os.environ, HOME=str(home)), capture_output=True,
                              text=True, timeout=900)
    assert cellpose.returncode == 0, cellpose.stderr
    ours = run_cli(["run", *[bundled if a == "MODEL" else a for a in args]], cwd=root / "cellflow")
    assert ours.returncode == 0, ours.output
    shutil.rmtree(home, ignore_errors=True)
    return root / "cellpose", root / "cellflow", image.ndim == 2


def test_same_files(both):
    cellpose, cellflow, _ = both
    assert _files(cellflow) == _files(cellpose)


def test_same_masks(both):
    cellpose, cellflow, _ = both
    for name in _files(cellpose):
        if name.endswith(".png") and "outlines" not in name:
            np.testing.assert_array_equal(decode(cellflow / name), decode(cellpose / name), err_msg=name)
        elif name.endswith(".tif") and not name.endswith("cells.tif"):
            np.testing.assert_array_equal(tifffile.imread(cellflow / name), tifffile.imread(cellpose / name))
    ours = np.load(cellflow / "imgs" / "cells_seg.npy", allow_pickle=True).item()
    theirs = np.load(cellpose / "imgs" / "cells_seg.npy", allow_pickle=True).item()
    for key in ("masks", "outlines"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert ours["chan_choose"] == list(theirs["chan_choose"])


def test_same_seg_file(both):
    """Every entry of Cellpose's ``_seg.npy``: the exact ones equal, the pictures of the flows within one
    grey level (they are uint8 renderings of float32 flows that differ by a few 1e-6: ONNX Runtime sums
    the network's convolutions in another order than torch, and a value on a rounding edge can flip),
    the raw flows within 1e-4."""
    cellpose, cellflow, _ = both
    for name in _files(cellpose):
        if not name.endswith("_seg.npy"):
            continue
        ours = np.load(cellflow / name, allow_pickle=True).item()
        theirs = np.load(cellpose / name, allow_pickle=True).item()
        assert sorted(ours) == sorted(theirs), name
        for key in ("masks", "outlines", "ismanual"):
            assert ours[key].dtype == theirs[key].dtype, key
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
        assert list(ours["chan_choose"]) == list(theirs["chan_choose"])
        assert float(ours["diameter"]) == float(theirs["diameter"])  # estimated or given: exact
        assert Path(ours["filename"]).parts[-2:] == Path(theirs["filename"]).parts[-2:]  # the roots differ
        assert len(ours["flows"]) == len(theirs["flows"])
        for i, (a, b) in enumerate(zip(ours["flows"], theirs["flows"])):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == b.dtype, (name, i)
            if b.dtype == np.uint8:
                assert np.abs(a.astype(int) - b).max(initial=0) <= 1, (name, i)
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-4, err_msg=f"{name} flows[{i}]")


def test_same_outlines_text_rois_and_outline_pictures(both):
    cellpose, cellflow, gray = both
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
            ours, theirs = decode(cellflow / name), decode(cellpose / name)
            if gray:  # the same picture, pixel for pixel
                np.testing.assert_array_equal(ours, theirs)
                continue
            # colour input: the same red outline pixels; the background differs: Cellpose's picture of an
            # RGB image is black (it scales the normalised image to 0-1 twice), ours shows the segmented
            # channels
            red = [(picture == (255, 0, 0)).all(axis=-1) for picture in (ours, theirs)]
            np.testing.assert_array_equal(red[0], red[1])
            assert theirs[~red[1]].max() <= 1 and ours[~red[0]].max() > 200
