"""Options the shared reference does not cover, against Cellpose 3.1.1.1 outputs made by
tests/data/make_option_reference.py: augment on images under 224 px (the 3.1.1.1 crop quirk),
tile_overlap, channels=None, normalize=False with niter and interp=False, per-plane stacks,
min_size/max_size_fraction.
"""
import json

import numpy as np
import pytest

from conftest import DATA

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
    from cellflow_rt.metrics import matching_summary

    masks, flows, _ = _eval(case)
    ref_masks = REFERENCE[f"{case}/masks"]
    assert masks.shape == ref_masks.shape
    assert flows[1].shape == tuple(REFERENCE[f"{case}/dP_shape"])
    if f"{case}/dP" in REFERENCE.files:
        np.testing.assert_allclose(flows[1], REFERENCE[f"{case}/dP"], atol=1e-4)
    planes = zip(ref_masks, masks) if ref_masks.ndim == 3 else [(ref_masks, masks)]
    for ref_plane, plane in planes:
        s = matching_summary(ref_plane, plane)
        assert s["n_true"] > 0
        assert s["n_pred"] == s["n_true"]
        assert s["ap_0.9"] >= 0.95


def test_augment_quirk_keeps_the_trailing_pad():
    # 3.1.1.1 with augment on a 100 x 120 image at rescale 1 returns 114 x 132 flows (errata A2)
    masks, flows, _ = _eval("augment_small_rescale1")
    assert flows[1].shape == (2, 114, 132)
    assert masks.shape == (100, 120)
