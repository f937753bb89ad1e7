"""do_3D with a second model on the ZY and ZX views (Cellpose's ``pretrained_model_ortho``).

The parity case is ``tests/data/ortho_reference.npz``, made by ``tests/data/make_ortho_reference.py``
with Cellpose 3.1.1.1: the nuclei demo net on YX, the cyto demo net on ZY and ZX (bundled here as
``nuclei_demo`` and ``cyto_demo``), on the shared ``nuclei_vol_do3D`` stack.
"""
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import REFERENCE_3D, require_shared
from cellflow_rt.volume import run_network_3d

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "ortho_reference.npz"


class _RecordingNet:
    """Returns constant flows (its own value) and remembers the planes it was given."""

    nout = 3

    def __init__(self, value):
        self.value, self.shapes = value, []

    def run(self, tiles, batch_size=8):
        self.shapes.append(tiles.shape)
        n = len(tiles)
        return np.full((n, 3) + tiles.shape[2:], self.value, np.float32), np.ones((n, 256), np.float32)


def test_ortho_net_runs_the_zy_and_zx_views():
    x = np.zeros((5, 40, 48, 2), np.float32)
    net, ortho = _RecordingNet(1.0), _RecordingNet(10.0)
    yf, _ = run_network_3d(net, x, augment=False, batch_size=8, tile_overlap=0.1, bsize=224, net_ortho=ortho)
    # the sums give each view's net away: cellprob = YX + ZX + ZY, dZ = ZX + ZY, dY = YX + ZY, dX = YX + ZX
    assert {shape[2:] for shape in net.shapes} == {(64, 64)}  # the main net saw only YX planes (40 x 48)
    np.testing.assert_array_equal(yf[..., 3], 21.0)
    np.testing.assert_array_equal(yf[..., 0], 20.0)
    np.testing.assert_array_equal(yf[..., 1], 11.0)
    np.testing.assert_array_equal(yf[..., 2], 11.0)


def test_ortho_model_must_take_the_same_channels(tmp_path):
    import json
    import shutil

    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.registry import bundled_model_dir

    for name in ("cyto_demo.onnx", "cyto_demo.json"):
        shutil.copyfile(bundled_model_dir() / name, tmp_path / name)
    manifest = json.loads((tmp_path / "cyto_demo.json").read_text())
    manifest["nchan"] = 3
    (tmp_path / "cyto_demo.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="ortho model"):
        LoadedModel.load("nuclei_demo", ortho=tmp_path / "cyto_demo.onnx")


@pytest.mark.slow
def test_do_3d_with_ortho_model_matches_cellpose():
    from cellflow_rt import models

    require_shared()
    image = tifffile.imread(REFERENCE_3D / "nuclei_vol_do3D" / "image.tif")
    ref = np.load(REFERENCE)
    model = models.CellposeModel(pretrained_model="nuclei_demo", pretrained_model_ortho="cyto_demo")
    masks, flows, _ = model.eval(image, channels=[0, 0], diameter=17.0, do_3D=True, z_axis=0)
    every = (slice(None, None, 4), slice(None, None, 8), slice(None, None, 8))
    np.testing.assert_allclose(flows[1][(slice(None),) + every], ref["dP_sample"], atol=1e-4)
    np.testing.assert_allclose(flows[2][every], ref["cellprob_sample"], atol=1e-4)
    np.testing.assert_array_equal(masks, ref["masks"])
