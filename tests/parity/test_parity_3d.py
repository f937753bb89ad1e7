"""3D end to end against Cellpose 3.1.1.1: do_3D (with and without anisotropy) and stitch_threshold.

The CPU path reproduces Cellpose exactly (issue 29): the masks must be Cellpose's label for label.
Flows and cell probability differ by the network's float32 summation order (ONNX Runtime's, not
torch's): at most 1.5e-5 measured on cell probability.
"""
import json
import sys

import numpy as np
import pytest
import tifffile

from conftest import REFERENCE_3D, reference_cases, require_shared
from label_helpers import assert_same_labels

BUNDLED = {"cellflow_nuclei_demo": "nuclei_demo", "cellflow_cyto_demo": "cyto_demo"}


@pytest.mark.slow
@pytest.mark.parametrize("case", reference_cases("3d"))
def test_3d_end_to_end_matches_cellpose(case):
    from cellflow_rt import models
    from cellflow_rt.metrics import matching_summary

    require_shared()
    d = REFERENCE_3D / case
    params = json.loads((d / "params.json").read_text())
    image = tifffile.imread(d / "image.tif")
    ref = np.load(d / "outputs.npz")
    model = models.CellposeModel(pretrained_model=BUNDLED[params["model"]])
    masks, flows, styles = model.eval(image, **dict(params["eval"], diameter=params["diameter_used"]))
    assert masks.dtype == ref["masks"].dtype
    # the network's float32 sums in another order than torch's (summed over 3 orientations for do_3D)
    np.testing.assert_allclose(flows[1], ref["dP"], atol=1e-4)
    np.testing.assert_allclose(flows[2], ref["cellprob"], atol=1e-4)
    s = matching_summary(ref["masks"], masks)
    print(f"{case}: n_ref {s['n_true']} n_ours {s['n_pred']} AP50 {s['ap_0.5']:.4f} AP75 {s['ap_0.75']:.4f} "
          f"AP90 {s['ap_0.9']:.4f}", file=sys.stderr)
    assert_same_labels(masks, ref["masks"], same_ids=True, what=case)
