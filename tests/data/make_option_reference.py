"""Make tests/data/option_reference.npz: Cellpose 3.1.1.1 outputs for options the shared reference
does not cover (augment on images under 224 px, tile_overlap, channels=None, normalize=False, niter,
interp=False, per-plane stacks, min_size/max_size_fraction).

Run in the reference environment plus scikit-image (see ../shared/tools/make_reference.py; .ci/run
builds one as .venv-cellpose):
    .venv-cellpose/bin/python tests/data/make_option_reference.py ../shared [OUT.npz]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from cellpose import models

sys.path.insert(0, str(Path(sys.argv[1]) / "tools"))
import synth  # noqa: E402

torch.set_num_threads(2)
weights = Path(sys.argv[1]) / "weights"
rng = np.random.default_rng(11)
nuc = lambda n, d=17.0: np.clip(synth.nuclei_image(rng, n=n, diam=d)[0], 0, 65535).astype(np.uint16)
cyto = synth.cyto_image(rng, n=160, diam=30.0)[0]
cyto = np.clip(cyto, 0, 65535).astype(np.uint16)



def _unit(img):
    """Scale to about [0, 1] by hand, so that normalize=False still sees a sensible image."""
    lo, hi = np.percentile(img, [1, 99])
    return ((img - lo) / (hi - lo)).astype(np.float32)


cases = {
    "augment_small_rescale1": ("cellflow_nuclei_demo", nuc(128)[:100, :120], dict(channels=[0, 0], diameter=17.0, augment=True)),
    "augment_small_rescaled": ("cellflow_nuclei_demo", nuc(128)[:100, :120], dict(channels=[0, 0], diameter=25.0, augment=True)),
    "tile_overlap_0.3": ("cellflow_nuclei_demo", nuc(300)[:300, :260], dict(channels=[0, 0], diameter=17.0, tile_overlap=0.3)),
    "no_norm_niter50_nointerp": ("cellflow_nuclei_demo", _unit(nuc(128)), dict(channels=[0, 0], diameter=17.0, normalize=False, niter=50, interp=False)),
    "channels_none_cyto": ("cellflow_cyto_demo", np.moveaxis(cyto, 0, -1) if cyto.shape[0] < 5 else cyto, dict(channels=None, diameter=30.0)),
    "cyto_invert_min_size_off": ("cellflow_cyto_demo", np.moveaxis(cyto, 0, -1) if cyto.shape[0] < 5 else cyto, dict(channels=[1, 2], channel_axis=-1, diameter=30.0, invert=True, min_size=-1, max_size_fraction=0.1)),
    "stack_per_plane": ("cellflow_nuclei_demo", np.stack([nuc(96), nuc(96) // 2]), dict(channels=[0, 0], diameter=17.0, z_axis=0)),
}
out = {}
for name, (model, img, kw) in cases.items():
    m = models.CellposeModel(gpu=False, pretrained_model=str(weights / model))
    masks, flows, styles = m.eval(img, **kw)
    out[f"{name}/image"] = img
    out[f"{name}/masks"] = masks
    out[f"{name}/dP_shape"] = np.array(flows[1].shape)
    out[f"{name}/dP"] = np.asarray(flows[1], np.float32)  # values, not only shapes, are compared
    out[f"{name}/cellprob"] = np.asarray(flows[2], np.float32)
    out[f"{name}/params"] = np.array(json.dumps(dict(model=model, eval=kw)))
    print(name, img.shape, img.dtype, masks.shape, int(masks.max()), flows[1].shape)
np.savez_compressed(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).with_name("option_reference.npz"), **out)
