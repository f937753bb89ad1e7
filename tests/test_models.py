"""The Cellpose-compatible facade: arguments, return tuples, lists, ignored arguments, no torch."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from conftest import REFERENCE_2D, require_shared


@pytest.fixture(scope="module")
def model():
    from cellflow_rt import models
    return models.CellposeModel(pretrained_model="nuclei_demo")


@pytest.fixture(scope="module")
def image():
    require_shared()
    return tifffile.imread(REFERENCE_2D / "nuclei_256" / "image.tif")[:128, :160]


def test_eval_returns_cellpose_tuple(model, image):
    masks, flows, styles = model.eval(image, channels=[0, 0], diameter=17.0)
    assert masks.shape == image.shape and masks.dtype == np.uint16 and masks.max() > 5
    rgb, dP, cellprob = flows
    assert rgb.shape == image.shape + (3,) and rgb.dtype == np.uint8
    assert dP.shape == (2,) + image.shape and cellprob.shape == image.shape
    assert styles.shape == (256,)
    assert np.linalg.norm(styles) == pytest.approx(1.0, rel=1e-5)


def test_list_input_gives_lists_with_per_image_channels_and_diameters(model, image):
    rgb = np.stack([image, image // 2, np.zeros_like(image)], -1)
    masks, flows, styles = model.eval([image, rgb], channels=[[0, 0], [1, 0]], diameter=[17.0, 17.0])
    assert isinstance(masks, list) and len(masks) == 2 and len(flows) == 2 and len(styles) == 2
    # channel 1 of the RGB image is the grayscale image itself: same masks
    np.testing.assert_array_equal(masks[0], masks[1])


def test_thresholds_change_the_result(model, image):
    loose = model.eval(image, channels=[0, 0], diameter=17.0, cellprob_threshold=-3.0)[0]
    strict = model.eval(image, channels=[0, 0], diameter=17.0, cellprob_threshold=3.0)[0]
    assert (loose > 0).sum() > (strict > 0).sum()


def test_cellpose_only_arguments_warn_not_fail():
    from cellflow_rt import models
    with pytest.warns(UserWarning, match="mkldnn"):
        models.CellposeModel(pretrained_model="nuclei_demo", mkldnn=True, device=None)
    with pytest.raises(TypeError, match="unexpected"):
        models.CellposeModel(pretrained_model="nuclei_demo", not_an_argument=1)


def test_unknown_model_lists_the_available_ones():
    from cellflow_rt import models
    with pytest.raises(ValueError, match="nuclei_demo"):
        models.CellposeModel(pretrained_model="no_such_model")


def test_cellpose_class_estimates_diameter(image):
    from cellflow_rt import models
    model = models.Cellpose(model_type="nuclei_demo")
    masks, flows, styles, diams = model.eval(image, channels=[0, 0], diameter=0)
    assert 5 <= diams <= 60 and masks.max() > 0
    masks30, _, _, d30 = model.eval(image, channels=[0, 0])
    assert d30 == 30.0


def test_no_torch_imported_by_runtime():
    script = textwrap.dedent("""
        import sys, numpy as np
        import cellflow_rt
        assert 'torch' not in sys.modules, 'import cellflow_rt imported torch'
        from cellflow_rt import models, cli
        m = models.CellposeModel(pretrained_model='nuclei_demo')
        rng = np.random.default_rng(0)
        img = np.zeros((96, 96), np.float32)
        yy, xx = np.mgrid[:96, :96]
        for cy, cx in rng.integers(12, 84, (8, 2)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = 1
        masks = m.eval(img, channels=[0, 0], diameter=17.0)[0]
        models.Cellpose(model_type='nuclei_demo').eval(img, channels=[0, 0], diameter=0)
        assert 'torch' not in sys.modules, 'eval imported torch'
        print('ok', int(masks.max()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
