"""``cellflow-rt run`` with a Cellpose 4 (Cellpose-SAM) model, as a user would run it."""
import shutil

import numpy as np
import pytest
import tifffile

from cli_helpers import run_cli
from conftest import REFERENCE_CPSAM, require_shared

pytestmark = pytest.mark.torch  # the demo is exported at test time


def test_run_gives_cellpose4_masks_and_warns_about_cellpose3_flags(cpsam_tiny, tmp_path):
    require_shared()
    shutil.copy(REFERENCE_CPSAM / "gray_300x384_diam40" / "image.tif", tmp_path / "cells.tif")
    shutil.copy(REFERENCE_CPSAM / "stack_stitch0.5" / "image.tif", tmp_path / "stack.tif")
    env = {"CELLFLOW_RT_MODELS": str(cpsam_tiny.parent)}
    run = run_cli(["run", "cells.tif", "--model", "cpsam_tiny", "--diameter", "40", "--chan", "2", "--save_tif"], tmp_path,
                  env=env)
    assert run.returncode == 0, run.output
    assert "--chan: not used by Cellpose 4 models" in run.stderr
    assert "44 cells, diameter 40.0 px" in run.line_for("cells.tif")
    expected = np.load(REFERENCE_CPSAM / "gray_300x384_diam40" / "outputs.npz")["masks"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells_cp_masks.tif"), expected)
    # no --diameter: no resize (Cellpose 4's default), not 30; stitching: Z on axis 0 by default
    run = run_cli(["run", "stack.tif", "--model", "cpsam_tiny", "--stitch_threshold", "0.5", "--save_tif"], tmp_path, env=env)
    assert run.returncode == 0, run.output
    expected = np.load(REFERENCE_CPSAM / "stack_stitch0.5" / "outputs.npz")["masks"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "stack_cp_masks.tif"), expected)
    seg = np.load(tmp_path / "stack_seg.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(seg["masks"], expected)
