"""cellflow_rt.napari.session and .progress: the panel's engine, without napari or Qt."""
import numpy as np
import pytest

from cellflow_rt import network
from cellflow_rt.diameter import estimate_diameter
from cellflow_rt.examples import EXAMPLE_MODEL, example_image_path
from cellflow_rt.io import imread
from cellflow_rt.loaded_model import LoadedModel
from cellflow_rt.napari.progress import ProgressNetwork, RunCancelled, expected_tiles
from cellflow_rt.napari.session import DYNAMICS_OPTIONS, RunRequest, SegmentationSession
from cellflow_rt.pipeline import rescale_for, segment
from cellflow_rt.settings import EvalSettings


@pytest.fixture(scope="module")
def image():
    return imread(example_image_path())


@pytest.fixture(scope="module")
def model():
    return LoadedModel.load(EXAMPLE_MODEL)


@pytest.fixture
def tile_counter(monkeypatch):
    """Counts the tiles every Network.run call receives."""
    calls = []
    real = network.Network.run

    def counting(self, tiles, batch_size=8):
        calls.append(len(tiles))
        return real(self, tiles, batch_size=batch_size)

    monkeypatch.setattr(network.Network, "run", counting)
    return calls


BASE = RunRequest(model=EXAMPLE_MODEL, settings=EvalSettings(channels=(0, 0), diameter=17.0))


NETWORK_CHANGES = {
    **{name: dict(settings=BASE.settings.with_(**{name: value})) for name, value in [
        ("channels", (1, 0)), ("diameter", 20.0), ("augment", True), ("tile_overlap", 0.2), ("bsize", 160),
        ("normalize", False), ("percentile", (2.0, 98.0)), ("invert", True), ("resample", False),
        ("do_3D", True), ("anisotropy", 2.0), ("stitch_threshold", 0.5), ("channel_axis", 0), ("z_axis", 0),
        ("flow3D_smooth", 1.0), ("batch_size", 4)]},
    "estimate_diameter": dict(estimate_diameter=True), "model": dict(model="cyto_demo"),
    "precision": dict(precision="bf16"), "provider": dict(provider="cpu"),
}


@pytest.mark.parametrize("change", NETWORK_CHANGES.values(), ids=NETWORK_CHANGES.keys())
def test_anything_the_network_reads_changes_the_key(image, change):
    session = SegmentationSession()
    changed = RunRequest(**{**BASE.__dict__, **change})
    assert session.network_key(image, changed) != session.network_key(image, BASE)


def test_image_pixels_and_dtype_change_the_key(image):
    session = SegmentationSession()
    edited = image.copy()
    edited[10, 10] += 1
    key = session.network_key(image, BASE)
    assert session.network_key(edited, BASE) != key
    assert session.network_key(image.astype(np.uint16), BASE) != key
    assert session.network_key(image.copy(), BASE) == key


@pytest.mark.parametrize("name,value", [("flow_threshold", 0.8), ("cellprob_threshold", -1.0), ("min_size", 40),
                                        ("max_size_fraction", 0.2), ("niter", 100), ("interp", False),
                                        ("compute_masks", False)])
def test_dynamics_options_keep_the_key(image, name, value):
    assert name in DYNAMICS_OPTIONS
    session = SegmentationSession()
    changed = RunRequest(model=EXAMPLE_MODEL, settings=BASE.settings.with_(**{name: value}))
    assert session.network_key(image, changed) == session.network_key(image, BASE)


def test_stitch_threshold_value_is_dynamics_but_turning_it_on_is_not(image):
    session = SegmentationSession()
    stack = np.stack([image, image])
    at = lambda t: RunRequest(model=EXAMPLE_MODEL, settings=BASE.settings.with_(z_axis=0, stitch_threshold=t))  # noqa: E731
    assert session.network_key(stack, at(0.5)) == session.network_key(stack, at(0.3))
    assert session.network_key(stack, at(0.5)) != session.network_key(stack, at(0.0))


def test_threshold_change_reruns_only_the_dynamics(image, model, tile_counter):
    session = SegmentationSession()
    first = session.segment(image, BASE)
    assert first.network_ran and tile_counter
    tiles_run = sum(tile_counter)
    for change in (dict(flow_threshold=0.8), dict(cellprob_threshold=-1.0, min_size=30)):
        request = RunRequest(model=EXAMPLE_MODEL, settings=BASE.settings.with_(**change))
        outcome = session.segment(image, request)
        assert not outcome.network_ran and sum(tile_counter) == tiles_run
        fresh = segment(image, model, request.settings)  # calls the network itself
        tiles_run = sum(tile_counter)
        np.testing.assert_array_equal(outcome.segmentation.masks, fresh.masks)
        assert outcome.settings.flow_threshold == request.settings.flow_threshold
    assert session.segment(image, BASE).network_ran is False and sum(tile_counter) == tiles_run
    # a network option clears the stored output: the network runs again, and the old output is gone
    assert session.segment(image, RunRequest(model=EXAMPLE_MODEL, settings=BASE.settings.with_(diameter=20.0))).network_ran
    assert not session.has_network_output(image, BASE)


def test_estimated_diameter_run_equals_estimate_then_segment(image, model):
    session = SegmentationSession()
    request = RunRequest(model=EXAMPLE_MODEL, settings=EvalSettings(channels=(0, 0)), estimate_diameter=True)
    outcome = session.segment(image, request)
    diameter, _ = estimate_diameter(image, model, request.settings)
    assert outcome.settings.diameter == diameter and "estimate" in outcome.timings
    np.testing.assert_array_equal(outcome.segmentation.masks,
                                  segment(image, model, request.settings.with_(diameter=diameter)).masks)
    assert session.estimate(image, request) == diameter


@pytest.mark.parametrize("shape,settings", [
    ((256, 256), EvalSettings(channels=(0, 0), diameter=17.0)),
    ((150, 100), EvalSettings(channels=(0, 0), diameter=11.0, augment=True)),
    ((3, 120, 150), EvalSettings(channels=(0, 0), diameter=17.0, z_axis=0)),
    ((12, 64, 80), EvalSettings(channels=(0, 0), diameter=25.0, z_axis=0, do_3D=True, anisotropy=2.0)),
])
def test_progress_counts_every_tile_and_keeps_outputs(model, tile_counter, shape, settings):
    img = np.random.default_rng(1).integers(0, 255, shape).astype(np.uint8)
    settings = settings.with_(compute_masks=False)  # the network's outputs are what is compared
    reported = []
    watched = LoadedModel(model.info, ProgressNetwork(model.net, reported.append))
    ours = segment(img, watched, settings)
    assert sum(reported) == sum(tile_counter) == expected_tiles(shape, rescale_for(model, settings), settings)
    tile_counter.clear()
    assert max(reported) <= settings.batch_size
    plain = segment(img, model, settings)
    np.testing.assert_array_equal(ours.dP, plain.dP)
    np.testing.assert_array_equal(ours.cellprob, plain.cellprob)


def test_cancel_stops_after_the_batch_in_progress(model, tile_counter):
    img = np.random.default_rng(2).integers(0, 255, (520, 520)).astype(np.uint8)
    settings = EvalSettings(channels=(0, 0), diameter=17.0)
    total = expected_tiles(img.shape, rescale_for(model, settings), settings)
    assert total > settings.batch_size
    session = SegmentationSession()
    progress = []
    with pytest.raises(RunCancelled):
        session.segment(img, RunRequest(model=EXAMPLE_MODEL, settings=settings),
                        progress=lambda *p: progress.append(p), cancelled=lambda: len(tile_counter) >= 1)
    assert tile_counter == [settings.batch_size]
    assert progress[-1] == ("network", settings.batch_size, total)
    assert not session.has_network_output(img, RunRequest(model=EXAMPLE_MODEL, settings=settings))


def test_named_provider_that_is_missing_is_an_error(image):
    if "CUDAExecutionProvider" in network.available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(network.ProviderUnavailableError, match="CUDAExecutionProvider"):
        SegmentationSession().segment(image, RunRequest(model=EXAMPLE_MODEL, settings=BASE.settings, provider="cuda"))


def test_unknown_provider_is_refused():
    with pytest.raises(ValueError, match="provider must be one of"):
        RunRequest(model=EXAMPLE_MODEL, provider="gpu0")


def test_nothing_outside_the_plugin_imports_napari_or_the_plugin():
    """The base install never touches napari: only napari imports cellflow_rt.napari."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "cellflow_rt"
    pattern = re.compile(r"^\s*(from|import)\s+(napari|qtpy|PyQt\d|cellflow_rt\.napari|\.+napari)\b", re.M)
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
                 if "napari" not in p.relative_to(package).parts and pattern.search(p.read_text())]
    assert offenders == []
    script = ("import sys, cellflow_rt, cellflow_rt.models, cellflow_rt.cli, cellflow_rt.io, "
              "cellflow_rt.napari.session, cellflow_rt.io.seg_file\n"
              "assert not {'napari', 'qtpy', 'PyQt6', 'vispy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", script], check=True)
