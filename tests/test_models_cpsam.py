"""``CellposeModel`` with a Cellpose 4 (Cellpose-SAM) model: Cellpose 4.2.1.1's ``eval`` (models_cp4)."""
import numpy as np
import pytest
import tifffile

from conftest import REFERENCE_CPSAM, require_shared

pytestmark = pytest.mark.torch  # the demo is exported at test time


@pytest.fixture(scope="module")
def model(cpsam_tiny):
    from cellflow_rt import models
    return models.CellposeModel(pretrained_model=str(cpsam_tiny.with_suffix(".onnx")))


@pytest.fixture(scope="module")
def image():
    require_shared()
    return tifffile.imread(REFERENCE_CPSAM / "gray_300x384_diam40" / "image.tif")


def test_cellpose4_model_gets_cellpose4_eval(model, cpsam_tiny):
    from cellflow_rt import models
    from cellflow_rt.models import CellposeModel as CellposeSAMModel

    assert isinstance(model, CellposeSAMModel) and isinstance(model, models.CellposeModel)
    assert model.model.generation == 4 and model.nchan == 3
    by_name = models.CellposeModel(False, str(cpsam_tiny))  # positional arguments, manifest path
    assert isinstance(by_name, CellposeSAMModel)
    assert type(models.CellposeModel(pretrained_model="nuclei_demo")) is models.CellposeModel


def test_eval_takes_cellpose4_arguments(model, image):
    with pytest.raises(TypeError, match="invert"):
        model.eval(image, invert=True)
    with pytest.raises(TypeError, match="interp"):
        model.eval(image, interp=False)
    with pytest.raises(ValueError, match="256"):
        model.eval(image, bsize=224)
    with pytest.warns(UserWarning, match="channels is not used"):
        with_channels = model.eval(image, channels=[2, 3], diameter=40)[0]
    assert np.array_equal(with_channels, model.eval(image, diameter=40)[0])


def test_lists_and_per_image_diameters(model, image):
    masks, flows, styles = model.eval([image, image[:160, :200]], diameter=[40.0, None])
    assert [m.shape for m in masks] == [(300, 384), (160, 200)]
    assert len(flows) == 2 and flows[1][1].shape == (2, 160, 200) and styles[0].shape == (256,)
    single = model.eval(image, diameter=40.0)[0]
    np.testing.assert_array_equal(masks[0], single)


def test_normalize_dict_inverts(model, image):
    plain = model.eval(image, diameter=40)[0]
    inverted = model.eval(image, diameter=40, normalize={"invert": True})[0]
    assert plain.max() > 0 and not np.array_equal(plain, inverted)


def test_two_channel_image_is_zero_padded_to_three(model, image):
    # a second, empty channel is normalised to nothing and zeroed: the same masks as the gray image
    two = np.stack([image, np.zeros_like(image)], axis=-1)
    np.testing.assert_array_equal(model.eval(two, diameter=40)[0], model.eval(image, diameter=40)[0])
