"""Options the shared reference does not cover, against Cellpose 3.1.1.1 outputs made by
tests/data/make_option_reference.py: augment on images under 224 px (the 3.1.1.1 crop quirk),
tile_overlap, channels=None, normalize=False with niter and interp=False, per-plane stacks,
min_size/max_size_fraction. Every case is exact on the CPU path: the masks must be Cellpose's label
for label; flows and cell probability within the network's float32 summation-order difference.
"""
import json

import numpy as np
import pytest

from conftest import DATA
from label_helpers import assert_same_labels

REFERENCE = np.load(DATA / "option_reference.npz")
CASES = sorted({k.split("/")[0] for k in REFERENCE.files})
BUNDLED = {"cellflow_nuclei_demo": "nuclei_demo", "cellflow_cyto_demo": "cyto_demo"}
_MODELS = {}


def _eval(case):
    from cellflow_rt import models
    params = json.loads(str(REFERENCE[f"{case}/params"]))
    name = BUNDLED[params["model"]]
    if name not in _MODELS:
        _MODELS[name] = models.CellposeModel(pretrained_model=name)
    return _MODELS[name].eval(REFERENCE[f"{case}/image"], **params["eval"])


@pytest.mark.parametrize("case", CASES)
def test_option_matches_cellpose(case):
    masks, flows, _ = _eval(case)
    ref_masks = REFERENCE[f"{case}/masks"]
    # ONNX Runtime sums the network's float32 convolutions in another order than torch: a few 1e-6
    np.testing.assert_allclose(flows[1], REFERENCE[f"{case}/dP"], atol=1e-4)
    np.testing.assert_allclose(flows[2], REFERENCE[f"{case}/cellprob"], atol=1e-4)
    assert masks.dtype == ref_masks.dtype
    assert_same_labels(masks, ref_masks, same_ids=True, what=case)
    planes = ref_masks if ref_masks.ndim == 3 else [ref_masks]
    assert all(plane.max() > 0 for plane in planes)  # no case (or plane) is trivially empty


def test_augment_quirk_keeps_the_trailing_pad():
    # 3.1.1.1 with augment on a 100 x 120 image at rescale 1 returns 114 x 132 flows (errata A2)
    masks, flows, _ = _eval("augment_small_rescale1")
    assert flows[1].shape == (2, 114, 132)
    assert masks.shape == (100, 120)
