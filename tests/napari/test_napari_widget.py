"""The napari plugin in a real viewer: panel, reader, writers, sample data, bad input.

Needs napari with a Qt binding, pytest-qt and a display with OpenGL: in CI, pytest-xvfb starts Xvfb
(Mesa's software GL renders there). Qt's ``offscreen`` platform has no OpenGL, so napari cannot add a
layer on it: these tests skip there, as they do without napari or without a display.
"""
import os

import numpy as np
import pytest

from napari_helpers import require_napari_viewer  # noqa: E402

napari = require_napari_viewer()

import tifffile  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from cellflow_rt import network  # noqa: E402
from cellflow_rt.examples import EXAMPLE_MODEL, example_image_path  # noqa: E402
from cellflow_rt.io import imread  # noqa: E402
from cellflow_rt.models import Cellpose, CellposeModel  # noqa: E402
from cellflow_rt.napari._widget import SegmentationWidget  # noqa: E402
from cellflow_rt.io.seg_file import load_seg_npy  # noqa: E402

from conftest import DATA  # noqa: E402

PLUGIN = "cellflow-rt"
TIMEOUT_MS = 300_000  # a cold numba cache compiles the dynamics on the first run (minutes on 2 shared cores)


@pytest.fixture(scope="module")
def example():
    return imread(example_image_path())


@pytest.fixture(scope="module")
def reference_model():
    return CellposeModel(pretrained_model=EXAMPLE_MODEL)


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    """A viewer with the panel docked (opened through the plugin's manifest)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PLUGIN)
    assert isinstance(widget, SegmentationWidget)
    yield viewer, widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


@pytest.fixture
def tile_counter(monkeypatch):
    calls = []
    real = network.Network.run

    def counting(self, tiles, batch_size=8):
        calls.append(len(tiles))
        return real(self, tiles, batch_size=batch_size)

    monkeypatch.setattr(network.Network, "run", counting)
    return calls


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def notifications_since(start: int):
    return [(n.severity, n.message) for n in notification_manager.records[start:]]


def run_and_wait(qtbot, widget):
    widget.run_button.click()
    wait_idle(qtbot, widget)


def test_run_matches_eval_and_thresholds_rerun_only_the_dynamics(panel, qtbot, example, reference_model,
                                                                 tile_counter):
    viewer, widget = panel
    layer = viewer.add_image(example, name="example")
    widget.set_image_layer(layer)
    assert widget.model_combo.currentData() == EXAMPLE_MODEL and widget.diameter_spin.value() == 17.0
    run_and_wait(qtbot, widget)
    assert sum(tile_counter) > 0
    labels = viewer.layers[f"example masks [{EXAMPLE_MODEL}]"]
    expected, _, _ = reference_model.eval(example, channels=[0, 0], diameter=17.0)
    np.testing.assert_array_equal(labels.data, expected)
    info = labels.metadata["cellflow_rt"]
    assert info["diameter"] == 17.0 and info["network_ran"] and info["timings"]["network"] > 0
    assert widget.labels_layer.name == labels.name  # (the panel sees layers through napari's proxy)

    # changing a threshold re-runs the dynamics by itself, on the stored network output
    tiles_before = sum(tile_counter)
    widget.flow_spin.setValue(0.8)
    wait_idle(qtbot, widget)
    widget.cellprob_spin.setValue(-1.0)
    widget.min_size_spin.setValue(40)  # (arrives while the first re-run works: applied after it)
    wait_idle(qtbot, widget)
    assert sum(tile_counter) == tiles_before
    expected, _, _ = reference_model.eval(example, channels=[0, 0], diameter=17.0, flow_threshold=0.8,
                                          cellprob_threshold=-1.0, min_size=40)
    np.testing.assert_array_equal(labels.data, expected)
    assert not labels.metadata["cellflow_rt"]["network_ran"]
    tiles_before = sum(tile_counter)
    run_and_wait(qtbot, widget)  # Run with unchanged network inputs: dynamics only as well
    assert sum(tile_counter) == tiles_before
    np.testing.assert_array_equal(labels.data, expected)
    assert [layer.name for layer in viewer.layers].count(labels.name) == 1

    # a network option (diameter) invalidates the stored output: Run runs the network again
    widget.diameter_spin.setValue(20.0)
    run_and_wait(qtbot, widget)
    assert sum(tile_counter) > tiles_before
    expected, _, _ = reference_model.eval(example, channels=[0, 0], diameter=20.0, flow_threshold=0.8,
                                          cellprob_threshold=-1.0, min_size=40)
    np.testing.assert_array_equal(labels.data, expected)
    assert viewer.layers[labels.name] is labels and len(viewer.layers) == 2


def test_estimated_diameter_flows_and_cellprob_layers(panel, qtbot, example):
    viewer, widget = panel
    viewer.add_image(example, name="nuclei")
    widget.diameter_spin.setValue(0)  # 0 = estimate at Run
    widget.flows_check.setChecked(True)
    widget.cellprob_check.setChecked(True)
    run_and_wait(qtbot, widget)
    masks, flows, _, diams = Cellpose(model_type=EXAMPLE_MODEL).eval(example, channels=[0, 0], diameter=0)
    labels = viewer.layers[f"nuclei masks [{EXAMPLE_MODEL}]"]
    np.testing.assert_array_equal(labels.data, masks)
    assert labels.metadata["cellflow_rt"]["diameter"] == pytest.approx(diams)
    np.testing.assert_array_equal(viewer.layers[f"nuclei flows [{EXAMPLE_MODEL}]"].data, flows[0])
    np.testing.assert_array_equal(viewer.layers[f"nuclei cellprob [{EXAMPLE_MODEL}]"].data, flows[2])
    assert viewer.layers[-1] is labels  # masks above the flow pictures

    widget.estimate_button.click()
    wait_idle(qtbot, widget)
    assert widget.diameter_spin.value() == pytest.approx(round(diams, 1))


def test_cancel_stops_the_run_and_keeps_the_viewer(panel, qtbot, example, tile_counter):
    viewer, widget = panel
    big = np.tile(example, (3, 3))  # 768^2 at diameter 17: 25 tiles, 4 batches
    viewer.add_image(big, name="big")
    start = len(notification_manager.records)

    def cancel_on_first_batch(phase, done, total):
        if phase == "network" and done > 0:
            widget.cancel_button.click()

    widget._relay.progressed.connect(cancel_on_first_batch)
    run_and_wait(qtbot, widget)
    assert 0 < sum(tile_counter) < 25
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget.status_label.text() == "cancelled"
    assert (NotificationSeverity.INFO, "cellflow-rt: run cancelled; the layers are unchanged") \
        in notifications_since(start)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_seg_npy_and_tif_writers_round_trip_through_the_reader(panel, qtbot, example, tmp_path):
    viewer, widget = panel
    image_path = tmp_path / "cells.tif"
    tifffile.imwrite(image_path, example)
    [layer] = viewer.open(image_path)
    widget.set_image_layer(layer)
    run_and_wait(qtbot, widget)
    labels = widget.labels_layer

    [seg_path] = labels.save(str(tmp_path / "cells_seg.npy"), plugin=PLUGIN)
    [tif_path] = labels.save(str(tmp_path / "cells_cp_masks.tif"), plugin=PLUGIN)
    np.testing.assert_array_equal(tifffile.imread(tif_path), labels.data)

    seg = load_seg_npy(seg_path)
    cellpose_written = load_seg_npy(DATA / "cellpose_seg" / "cells_seg.npy")
    assert set(seg) == set(cellpose_written)
    for key in ("masks", "outlines"):
        assert seg[key].dtype == cellpose_written[key].dtype
    assert [f.shape[:1] + f.shape[3:] for f in seg["flows"][:3]] == [(1, 3), (1,), (1, 3)]
    assert seg["filename"] == str(image_path) and seg["diameter"] == 17.0

    opened = viewer.open(seg_path, plugin=PLUGIN)
    image, masks = opened
    np.testing.assert_array_equal(image.data, example)
    np.testing.assert_array_equal(masks.data, labels.data)
    assert masks.metadata["cellflow_rt"]["diameter"] == 17.0
    np.testing.assert_array_equal(masks.metadata["cellflow_rt"]["dP"], labels.metadata["cellflow_rt"]["dP"])

    # saving what was read writes the same file content
    [again] = masks.save(str(tmp_path / "again" / "cells_seg.npy"), plugin=PLUGIN)
    np.testing.assert_array_equal(load_seg_npy(again)["flows"][4], seg["flows"][4])


def test_reader_opens_cellpose_files(make_napari_viewer):
    viewer = make_napari_viewer()
    image, masks = viewer.open(DATA / "cellpose_seg" / "cells_seg.npy", plugin=PLUGIN)
    np.testing.assert_array_equal(image.data, tifffile.imread(DATA / "cellpose_seg" / "cells.tif"))
    assert masks.data.max() == 3 and masks.metadata["cellflow_rt"]["diameter"] == 17.0
    image, masks = viewer.open(DATA / "cellpose_seg" / "gui_seg.npy", plugin=PLUGIN)
    assert image.data.shape == masks.data.shape == (24, 24)


def test_reader_refuses_a_crafted_file(make_napari_viewer, tmp_path):
    class RunsShell:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    np.save(tmp_path / "evil_seg.npy", {"masks": np.zeros((4, 4), np.uint16), "x": RunsShell()}, allow_pickle=True)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="refusing to load"):
        viewer.open(tmp_path / "evil_seg.npy", plugin=PLUGIN)
    assert not (tmp_path / "pwned").exists() and len(viewer.layers) == 0


def test_sample_data(make_napari_viewer, example):
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample(PLUGIN, "example_nuclei")
    np.testing.assert_array_equal(layer.data, example)


def test_bad_input_gets_a_notification_and_no_run(panel, qtbot, example, tmp_path):
    viewer, widget = panel

    def attempt(expected_severity, fragment):
        start = len(notification_manager.records)
        run_and_wait(qtbot, widget)
        messages = notifications_since(start)
        assert any(sev == expected_severity and fragment in msg for sev, msg in messages), messages
        assert not any(layer.name.endswith(f"[{EXAMPLE_MODEL}]") for layer in viewer.layers)
        assert widget.run_button.isEnabled()

    attempt(NotificationSeverity.WARNING, "no image layer")

    rgb = viewer.add_image(np.stack([example] * 3, axis=-1), name="rgb", rgb=True)
    widget.set_image_layer(rgb)
    widget.chan_spin.setValue(4)
    attempt(NotificationSeverity.WARNING, "chan=4 asks for channel 4 but image layer 'rgb' has 3 channels")
    widget.chan_spin.setValue(2)
    widget.chan2_spin.setValue(5)
    attempt(NotificationSeverity.WARNING, "chan2=5")
    widget.chan2_spin.setValue(0)

    widget.set_image_layer(viewer.add_image(np.zeros((64, 64), np.uint8), name="blank"))
    attempt(NotificationSeverity.WARNING, "image layer 'blank' is empty (every pixel is 0)")
    widget.set_image_layer(viewer.add_image(np.full((64, 64), 7, np.uint16), name="flat"))
    attempt(NotificationSeverity.WARNING, "image layer 'flat' is constant")

    widget.set_image_layer(viewer.layers["rgb"])
    widget.set_model(str(tmp_path / "missing.onnx"))
    attempt(NotificationSeverity.WARNING, "missing.onnx' does not exist")
    widget.set_model(EXAMPLE_MODEL)

    if "CUDAExecutionProvider" not in network.available_providers():
        widget.provider_combo.setCurrentText("cuda")
        attempt(NotificationSeverity.WARNING, "provider 'cuda' is not available")
        widget.provider_combo.setCurrentText("auto")
