"""Make tests/data/ortho_reference.npz: Cellpose 3.1.1.1's do_3D with ``pretrained_model_ortho``
(the nuclei demo net on the YX view, the cyto demo net on the ZY and ZX views) on the shared
``reference/3d/nuclei_vol_do3D`` stack.

Run in the reference environment (see ../shared/tools/make_reference.py for how to create it):
    /work/ref/cp3/bin/python tests/data/make_ortho_reference.py ../shared
"""
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from cellpose import models

torch.set_num_threads(2)
shared = Path(sys.argv[1])
weights = shared / "weights"
image = tifffile.imread(shared / "reference" / "3d" / "nuclei_vol_do3D" / "image.tif")
model = models.CellposeModel(gpu=False, pretrained_model=str(weights / "cellflow_nuclei_demo"),
                             pretrained_model_ortho=str(weights / "cellflow_cyto_demo"))
assert model.net_ortho is not None
masks, flows, styles = model.eval(image, channels=[0, 0], diameter=17.0, do_3D=True, z_axis=0)
dP, cellprob = np.asarray(flows[1], np.float32), np.asarray(flows[2], np.float32)
every = (slice(None, None, 4), slice(None, None, 8), slice(None, None, 8))
np.savez_compressed(Path(__file__).with_name("ortho_reference.npz"), masks=masks,
                    dP_sample=dP[(slice(None),) + every], cellprob_sample=cellprob[every])
print(image.shape, masks.shape, int(masks.max()), dP.shape)
