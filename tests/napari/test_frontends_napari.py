"""The napari panel x every model family gives the Python API's masks for the same settings (issue 23).

The other front ends: tests/test_frontends.py. Skips without napari or a display (tests/napari_helpers.py).
"""
from __future__ import annotations

import pytest

from napari_helpers import require_napari_viewer

require_napari_viewer()

from frontend_helpers import CELLPROB_THRESHOLD, FLOW_THRESHOLD, cpnet_family, cpsam_family  # noqa: E402
from label_helpers import assert_same_labels  # noqa: E402

TIMEOUT_MS = 300_000  # a cold numba cache compiles the dynamics on the first run (minutes on 2 shared cores)


@pytest.fixture(scope="module", params=["cpnet", "cpsam"])
def family(request):
    if request.param == "cpnet":
        return cpnet_family()
    return cpsam_family(request.getfixturevalue("cpsam_converted"))


def test_panel(family, make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("cellflow-rt", "cellflow-rt")
    layer = viewer.add_image(family.image, name="cells")
    widget.set_image_layer(layer)
    widget.set_model(family.pretrained_model)
    widget.diameter_spin.setValue(family.diameter)
    widget.flow_spin.setValue(FLOW_THRESHOLD)
    widget.cellprob_spin.setValue(CELLPROB_THRESHOLD)
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert widget.labels_layer is not None, "the panel made no labels layer"
    assert_same_labels(widget.labels_layer.data, family.api_masks(), same_ids=True, what=f"{family.name}: napari")
