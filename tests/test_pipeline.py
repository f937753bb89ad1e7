"""Pipeline decisions that silently change masks: rescale precision, niter, stage order."""
import numpy as np
import pytest

from cellflow_rt.pipeline import euler_iterations, prepare_image, rescale_for
from cellflow_rt.settings import EvalSettings


class _Model:
    """Just the metadata rescale_for reads."""

    def __init__(self, diam_mean, diam_labels):
        self.diam_mean, self.diam_labels = diam_mean, diam_labels


def test_custom_model_rescale_is_float32_and_niter_follows():
    # a custom model carries its checkpoint's float32 diam_mean: rescale and niter come out float32
    model = _Model(np.float32(17.0), np.float32(23.07))
    settings = EvalSettings(diameter=25.0)
    rescale = rescale_for(model, settings)
    assert isinstance(rescale, np.float32)
    niter = euler_iterations(settings, rescale)
    assert niter == np.float32(1 / np.float32(17.0 / 25.0) * 200)  # 294.11765, the reference's value
    assert int(np.uint32(niter)) == 294


def test_builtin_model_rescale_is_float64():
    model = _Model(30.0, np.float32(30.0))
    assert isinstance(rescale_for(model, EvalSettings(diameter=13.5)), float)
    # errata A3: the reference's rounding gives 89 for d = 13.5, not 90
    assert int(np.uint32(euler_iterations(EvalSettings(diameter=13.5), rescale_for(model, EvalSettings(diameter=13.5))))) == 89


def test_niter_without_resample_and_user_niter():
    model = _Model(np.float32(17.0), np.float32(17.0))
    assert euler_iterations(EvalSettings(diameter=34.0, resample=False), rescale_for(model, EvalSettings(diameter=34.0))) == 200
    assert euler_iterations(EvalSettings(niter=50), 1.0) == 50


def test_diameter_none_uses_diam_labels_and_rescale_argument():
    model = _Model(np.float32(17.0), np.float32(23.0))
    assert rescale_for(model, EvalSettings()) == pytest.approx(17 / 23)
    assert rescale_for(model, EvalSettings(rescale=0.5)) == 0.5


def test_prepare_image_normalises_planes_separately_without_3d():
    rng = np.random.default_rng(0)
    stack = np.stack([rng.random((40, 40)) * (i + 1) * 100 for i in range(3)]).astype(np.float32)
    planes = prepare_image(stack, EvalSettings(channels=(0, 0), z_axis=0), 2)
    assert planes.shape == (3, 40, 40, 2)
    for z in range(3):
        assert np.percentile(planes[z, ..., 0], 99) == pytest.approx(1.0, abs=1e-4)
    joint = prepare_image(stack, EvalSettings(channels=(0, 0), z_axis=0, stitch_threshold=0.5), 2)
    assert np.percentile(joint[0, ..., 0], 99) < 0.5


@pytest.mark.parametrize("bad, message", [(np.zeros((0, 5)), "empty"), (np.full((8, 8), np.inf), "infinite")])
def test_prepare_image_rejects_empty_and_nonfinite(bad, message):
    with pytest.raises(ValueError, match=message):
        prepare_image(bad, EvalSettings(channels=(0, 0)), 2)


def test_settings_validation():
    with pytest.raises(ValueError, match="channels"):
        EvalSettings(channels=(1, 2, 3))
    with pytest.raises(ValueError, match="diameter"):
        EvalSettings(diameter=-3)
    assert EvalSettings(channels=[2, 3]).channels == (2, 3)
