"""Regenerate tests/data/cellpose_seg/ with Cellpose 3.1.1.1 (the reference environment).

Run from the repository root with the reference's python (cellpose==3.1.1.1, torch 2.13 CPU,
numpy 2.0.2), e.g. ``/tmp/cpref/bin/python tests/data/make_cellpose_seg.py``. It needs
``../shared/weights`` and the bundled example image. It writes:

- ``cells.tif``: a 48 x 64 crop of the example image, and ``cells_seg.npy``: Cellpose's
  ``io.masks_flows_to_seg`` output for ``CellposeModel.eval`` of that crop (nuclei demo, diameter 17).
  The file's ``filename`` entry is this script's temporary path, which does not exist later: readers
  must find the image beside the file, as Cellpose's GUI does.
- ``gui_seg.npy``: a file in the layout of Cellpose's GUI save (``gui/io.py:_save_sets``, 2D): extra
  keys (colors, manual_changes, normalize_params, model_path, restore, ratio), no image file, the
  image in ``img``.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from cellpose import io, models

HERE = Path(__file__).resolve().parent
OUT = HERE / "cellpose_seg"
WEIGHTS = HERE.parents[1].parent / "shared" / "weights" / "cellflow_nuclei_demo"
EXAMPLE = HERE.parents[1] / "models" / "example_nuclei.tif"


def main():
    OUT.mkdir(exist_ok=True)
    img = tifffile.imread(EXAMPLE)[100:148, 60:124]
    model = models.CellposeModel(gpu=False, pretrained_model=str(WEIGHTS))
    masks, flows, _ = model.eval(img, channels=[0, 0], diameter=17.0)
    assert masks.max() > 0
    tmp = Path(tempfile.mkdtemp())
    io.masks_flows_to_seg(img, masks, flows, str(tmp / "cells.tif"), diams=np.float32(17.0), channels=[0, 0])
    shutil.copy(tmp / "cells_seg.npy", OUT / "cells_seg.npy")
    shutil.rmtree(tmp)
    tifffile.imwrite(OUT / "cells.tif", img)

    small = img[:24, :24]
    small_masks = masks[:24, :24].astype(np.uint16)
    gui = {
        "outlines": small_masks * 0, "colors": np.array([[255, 0, 0]] * int(small_masks.max()), np.uint8),
        "masks": small_masks, "chan_choose": [0, 0], "filename": "/nonexistent/gui.png",
        "flows": [[], [], [], [], [[]]], "ismanual": np.zeros(int(small_masks.max()), bool),
        "manual_changes": [], "model_path": 0, "flow_threshold": 0.4, "cellprob_threshold": 0.0,
        "normalize_params": {"lowhigh": None, "percentile": [1.0, 99.0], "normalize": True, "norm3D": True,
                             "sharpen_radius": 0, "smooth_radius": 0, "tile_norm_blocksize": 0,
                             "tile_norm_smooth3D": 1, "invert": False},
        "restore": None, "ratio": 1.0, "diameter": 17.0, "img": small,
    }
    np.save(OUT / "gui_seg.npy", gui)
    print("masks", int(masks.max()), "written to", OUT)


if __name__ == "__main__":
    main()
