"""End to end against Cellpose 3.1.1.1: every 2D reference case, bundled ONNX models, CPU provider.

The CPU path reproduces Cellpose exactly (issue 29), so the masks must be Cellpose's label for label
(same ids, same dtype) and estimated diameters identical. Only the network's float32 outputs differ:
ONNX Runtime sums the convolutions in another order than torch, a few 1e-6 on flows and cell
probability (at most 8e-6 measured), which the dynamics absorb. On real DSB2018 images our AP
against the ground truth equals Cellpose's.
"""
import json
import sys

import numpy as np
import pytest
import tifffile

from conftest import REFERENCE_2D, SHARED, reference_cases, require_shared
from label_helpers import assert_same_labels

#: reference checkpoint name -> bundled model name
BUNDLED = {"cellflow_nuclei_demo": "nuclei_demo", "cellflow_cyto_demo": "cyto_demo"}

_MODELS = {}


def _model(name):
    from cellflow_rt import models
    if name not in _MODELS:
        _MODELS[name] = models.CellposeModel(pretrained_model=BUNDLED[name], gpu=False)
    return _MODELS[name]


def _case(case):
    require_shared()
    d = REFERENCE_2D / case
    params = json.loads((d / "params.json").read_text())
    return params, tifffile.imread(d / "image.tif"), np.load(d / "outputs.npz")


def _run(params, image, diameter):
    kwargs = dict(params["eval"], diameter=diameter)
    return _model(params["model"]).eval(image, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("case", reference_cases("2d"))
def test_end_to_end_matches_cellpose(case):
    from cellflow_rt.metrics import matching_summary

    params, image, ref = _case(case)
    masks, flows, styles = _run(params, image, params["diameter_used"])
    assert masks.dtype == ref["masks"].dtype
    # the network's float32 sums in ONNX Runtime's order, not torch's: a few 1e-6 (8e-6 measured)
    np.testing.assert_allclose(flows[1], ref["dP"], atol=1e-4)
    np.testing.assert_allclose(flows[2], ref["cellprob"], atol=1e-4)
    np.testing.assert_allclose(styles, ref["styles"], atol=1e-5)
    s = matching_summary(ref["masks"], masks)
    print(f"{case}: n_ref {s['n_true']} n_ours {s['n_pred']} AP50 {s['ap_0.5']:.4f} AP75 {s['ap_0.75']:.4f} "
          f"AP90 {s['ap_0.9']:.4f}", file=sys.stderr)
    # exact: the same masks with the same ids (the dynamics reproduce the reference's label order)
    assert_same_labels(masks, ref["masks"], same_ids=True, what=case)


ESTIMATED = [c for c in reference_cases("2d") if json.loads((REFERENCE_2D / c / "params.json").read_text())["estimated"]]


@pytest.mark.slow
@pytest.mark.parametrize("case", ESTIMATED)
def test_estimated_diameter_matches_cellpose(case):
    from cellflow_rt import models

    params, image, ref = _case(case)
    sz = models.SizeModel(_model(params["model"]))
    diam, diam_style = sz.eval(image, channels=params["eval"].get("channels"),
                               channel_axis=params["eval"].get("channel_axis"))
    # step 1 regresses on the network's style vector (float32 sums in another order than torch's)
    assert diam_style == pytest.approx(float(ref["diam_style"]), rel=1e-5)
    # step 2 measures the masks at that scale: exact, so the diameter is Cellpose's to the last bit
    assert diam == params["diameter_used"]
    assert np.float32(diam) == ref["diams"]


DSB_CASES = [c for c in reference_cases("2d") if c.startswith("dsb_")]


@pytest.mark.slow
@pytest.mark.parametrize("case", DSB_CASES)
def test_real_images_same_accuracy_as_cellpose(case):
    from cellflow_rt import models
    from cellflow_rt.metrics import average_precision

    params, image, ref = _case(case)
    truth = tifffile.imread(SHARED / "data" / "dsb2018_sample" / f"{case[:6]}_labels.tif")
    diameter = params["diameter_used"]
    if params["estimated"]:
        diameter, _ = models.SizeModel(_model(params["model"])).eval(image, channels=params["eval"]["channels"])
    masks = _run(params, image, diameter)[0]
    ours = average_precision(truth, masks)[0]
    theirs = average_precision(truth, ref["masks"])[0]
    print(f"{case}: AP vs ground truth ours {np.round(ours, 4)} Cellpose {np.round(theirs, 4)}", file=sys.stderr)
    np.testing.assert_array_equal(ours, theirs)  # the same masks, so the same AP
