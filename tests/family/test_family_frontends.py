"""Front ends follow the model's family: a Cellpose-SAM model's flow pictures, Euler steps and tiles
as Cellpose 4 has them, wherever the model is run (batch, serve, the napari panel)."""
import numpy as np
import pytest
import tifffile

from conftest import REFERENCE_CPSAM, require_shared
from cellflow_rt.loaded_model import LoadedModel
from cellflow_rt.settings import EvalSettings


@pytest.fixture(scope="module")
def image():
    require_shared()
    return tifffile.imread(REFERENCE_CPSAM / "gray_300x384_diam40" / "image.tif")


@pytest.fixture(scope="module")
def sam(cpsam_tiny):
    return LoadedModel.load(str(cpsam_tiny), providers="cpu", num_threads=1)


def test_batch_draws_the_python_apis_flow_pictures(cpsam_tiny, sam, image, tmp_path):
    from cellflow_rt import models
    from cellflow_rt.batch import OutputOptions, run_batch
    from cellflow_rt.io.flows import flow_to_rgb

    # on images this small the two pictures differ only where the percentiles' last bits move a
    # pixel across a level (numpy 2.0's against 2.1's arithmetic): 10 pixels on this crop
    image = image[:291, :281]
    masks, flows, _ = models.CellposeModel(pretrained_model=str(cpsam_tiny)).eval(image, diameter=40.0)
    # the test means something only where Cellpose 3's picture differs from Cellpose 4's
    assert not np.array_equal(flow_to_rgb(flows[1]), flows[0])
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image)
    (result,) = run_batch([path], sam, EvalSettings(diameter=40.0),
                          OutputOptions(save_npy=True, save_flows=True, save_tif=False))
    assert result.ok, result.error
    seg = np.load(tmp_path / "cells_seg.npy", allow_pickle=True).item()  # our own file
    np.testing.assert_array_equal(seg["masks"], masks)
    np.testing.assert_array_equal(seg["flows"][0][0], flows[0])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells_flows_cp_masks.tif"), flows[0])


def test_serve_counts_euler_steps_by_the_models_rule(sam):
    from cellflow_rt.serve.decode import ImageTooLargeError
    from cellflow_rt.serve.limits import MAX_EULER_STEPS, Limits, check_work

    # diameter 1500.0075: 200 x 1500.0075 / 30 = 10000.05 steps by Cellpose 3's rule (refused), but
    # Cellpose 4 truncates to int: 10000, the limit, which it may run
    settings = EvalSettings(diameter=1500.0075)
    assert 200 / (30 / settings.diameter) > MAX_EULER_STEPS
    limits = Limits(max_body_bytes=2**30, max_values=2**30, timeout=60.0)
    check_work((64, 64), sam, settings, limits)
    with pytest.raises(ImageTooLargeError, match="Euler steps"):
        check_work((64, 64), sam, EvalSettings(diameter=1500.0075, niter=MAX_EULER_STEPS + 1), limits)


def test_napari_progress_counts_the_models_tiles(cpsam_tiny, image, monkeypatch):
    from cellflow_rt import network
    from cellflow_rt.napari.session import RunRequest, SegmentationSession

    ran = []
    real = network.Network.run

    def counting(self, tiles, batch_size=8):
        ran.append(tiles.shape)
        return real(self, tiles, batch_size=batch_size)

    monkeypatch.setattr(network.Network, "run", counting)
    progress = []
    # 300 x 384 at diameter 30 (no resize): 2 x 2 tiles of 256, where 224-pixel tiles would be 2 x 3
    SegmentationSession().segment(image, RunRequest(model=str(cpsam_tiny), settings=EvalSettings(diameter=30.0)),
                                  progress=lambda *p: progress.append(p))
    assert {shape[2:] for shape in ran} == {(256, 256)}
    tiles = sum(shape[0] for shape in ran)
    network_steps = [p for p in progress if p[0] == "network"]
    assert network_steps[0] == ("network", 0, tiles) and network_steps[-1] == ("network", tiles, tiles)
