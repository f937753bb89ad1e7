"""Axes, channel selection and normalisation (Cellpose's convert_image / reshape / normalize_img)."""
import numpy as np
import pytest

from cellflow_rt.normalize import NormalizeOptions, normalize_img
from cellflow_rt.preprocess import ImageShapeError, check_finite, convert_image, select_channels


def test_grayscale_2d_gets_zero_second_channel():
    img = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    x = convert_image(img, channels=(0, 0))
    assert x.shape == (20, 30, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], img)
    assert not x[..., 1].any()


def test_grayscale_of_rgb_is_channel_mean():
    rgb = np.random.default_rng(0).integers(0, 255, (32, 40, 3)).astype(np.uint8)
    x = convert_image(rgb, channels=(0, 0))
    np.testing.assert_allclose(x[..., 0], rgb.astype(np.float32).mean(-1), rtol=1e-6)


def test_rgb_channels_2_3_pick_green_then_blue():
    rgb = np.random.default_rng(1).random((32, 40, 3)).astype(np.float32)
    x = convert_image(rgb, channels=(2, 3))
    np.testing.assert_array_equal(x, rgb[..., [1, 2]])


def test_channel_first_with_channel_axis():
    img = np.random.default_rng(2).random((2, 50, 60)).astype(np.float32)
    x = convert_image(img, channels=(1, 2), channel_axis=0)
    np.testing.assert_array_equal(x, img.transpose(1, 2, 0))


def test_channels_none_keeps_first_two_or_pads():
    img = np.random.default_rng(3).random((30, 30, 4)).astype(np.float32)
    with pytest.warns(UserWarning):
        x = convert_image(img, channels=None, channel_axis=-1)
    np.testing.assert_array_equal(x, img[..., :2])
    one = convert_image(img[..., 0], channels=None)
    assert one.shape == (30, 30, 2) and not one[..., 1].any()


def test_z_axis_moved_first():
    vol = np.random.default_rng(4).random((40, 7, 50)).astype(np.float32)  # Y, Z, X
    x = convert_image(vol, channels=(0, 0), z_axis=1)
    assert x.shape == (7, 40, 50, 2)
    np.testing.assert_array_equal(x[3, ..., 0], vol[:, 3, :])


def test_channel_out_of_range_is_a_clear_error():
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[..., 0] = 1
    with pytest.raises(ImageShapeError, match="channel 4"):
        convert_image(rgb, channels=(4, 0))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5, 6, 7)])
def test_wrong_dimensions_rejected(shape):
    with pytest.raises(ImageShapeError):
        convert_image(np.zeros(shape), channels=(0, 0))


def test_select_channels_single_channel_any_codes():
    x = select_channels(np.ones((20, 20, 1), np.float32), (2, 3))
    assert x.shape == (20, 20, 2) and not x[..., 1].any()


def normalize_image(img, **options):
    """The pipeline's normalisation (``normalize_img``) of one (Y, X, C) image or a (Z, Y, X, C) stack."""
    x = img if img.ndim == 4 else img[np.newaxis]
    return normalize_img(x, NormalizeOptions(**options)).reshape(img.shape)


def test_normalize_maps_percentiles_to_0_1():
    rng = np.random.default_rng(5)
    img = rng.random((64, 64, 2)).astype(np.float32) * 1000
    img[..., 1] = 7  # constant channel: left untouched
    lo, hi = np.percentile(img[..., 0], 1), np.percentile(img[..., 0], 99)
    out = normalize_image(img.copy())
    np.testing.assert_allclose(out[..., 0], (img[..., 0] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert (out[..., 1] == 7).all()


def test_invert_applies_only_to_normalised_channels():
    img = np.random.default_rng(6).random((64, 64, 2)).astype(np.float32)
    img[..., 1] = 0
    out = normalize_image(img.copy(), invert=True)
    plain = normalize_image(img.copy())
    np.testing.assert_allclose(out[..., 0], 1 - plain[..., 0])
    assert not out[..., 1].any()
    with pytest.raises(ValueError, match="invert"):
        normalize_image(img.copy(), normalize=False, invert=True)


def test_stack_normalised_per_plane_unless_3d():
    stack = np.stack([np.random.default_rng(i).random((32, 32, 1)).astype(np.float32) * (i + 1) for i in range(3)])
    per_plane = normalize_image(stack.copy(), norm3D=False)
    for z in range(3):
        np.testing.assert_allclose(np.percentile(per_plane[z, ..., 0], 99), 1.0, atol=1e-5)
    joint = normalize_image(stack.copy(), norm3D=True)
    assert np.percentile(joint[0, ..., 0], 99) < 0.6


def test_nan_rejected():
    img = np.ones((10, 10), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_finite(img)


def test_percentiles_from_one_partition_equal_separate_calls():
    from cellflow_rt.percentile import percentile, percentiles
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 100, 4097):
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        qs = (99.0, 1.0, 50.0, 0.0, 100.0)
        assert [v.tobytes() for v in percentiles(x, qs)] == [percentile(x, q).tobytes() for q in qs]


def test_percentile_follows_numpy_within_float32_rounding():
    from cellflow_rt.percentile import percentile
    rng = np.random.default_rng(9)
    for size in (1, 2, 101, 10007):
        x = (rng.random(size) * 30000).astype(np.float32)
        for q in (0.0, 1.0, 50.0, 99.0, 100.0):
            ours = percentile(x, q)
            assert ours.dtype == np.float32
            np.testing.assert_allclose(ours, np.percentile(x, q), rtol=2e-6)
    # a hand-checkable case: index 0.99 * 100 = 99 exactly -> the 100th smallest value
    x = np.arange(101, dtype=np.float32)
    assert percentile(x, 99.0) == 99.0
