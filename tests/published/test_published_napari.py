"""Cellpose's published names in the napari panel: offered in the model list, fetched by the run's
worker (never by the GUI thread). Skips as tests/napari/test_napari_widget.py does without napari or a display."""
import sys

import pytest

from napari_helpers import require_napari_viewer  # noqa: E402

napari = require_napari_viewer()

from cellflow_rt.examples import example_image_path  # noqa: E402
from cellflow_rt.io import imread  # noqa: E402
from published_server import SHARED_WEIGHTS, ModelServer  # noqa: E402

pytestmark = pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/weights is absent")


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with ModelServer() as srv:
        monkeypatch.setenv("CELLFLOW_RT_MODELS_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cellpose"))
        monkeypatch.setenv("CELLFLOW_RT_MODELS_URL", srv.url)
        yield srv


def test_published_names_are_offered_and_fetched_by_the_run(make_napari_viewer, qtbot, server):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("cellflow-rt", "cellflow-rt")
    names = [widget.model_combo.itemData(i) for i in range(widget.model_combo.count())]
    assert {"cyto3", "nuclei", "cpsam", "nuclei_demo"} <= set(names)
    assert "denoise_cyto3" not in names and "transformer_cp3" not in names
    widget.set_model("nuclei")
    assert "downloaded and converted on first use" in widget.status_label.text() and server.total == 0
    layer = viewer.add_image(imread(example_image_path()), name="example")
    widget.set_image_layer(layer)
    widget.diameter_spin.setValue(17.0)
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    assert server.requests == {"nucleitorch_0": 1, "size_nucleitorch_0.npy": 1}
    assert viewer.layers["example masks [nuclei]"].data.max() > 0
