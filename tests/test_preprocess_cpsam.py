"""Cellpose 4.2.1.1's axes, channels and normalisation (preprocess_cp4)."""
import numpy as np
import pytest

from cellflow_rt.percentile import percentiles
from cellflow_rt.preprocess import ImageShapeError
from cellflow_rt.preprocess import convert_image_as_given as convert_image
from cellflow_rt.preprocess import prepare_channels_as_given as prepare_image
from cellflow_rt.settings import EvalSettings


@pytest.mark.parametrize("shape, channel_axis, expected", [
    ((30, 40), None, (30, 40, 1)),             # grayscale gets one channel
    ((30, 40, 3), None, (30, 40, 3)),          # channels last (shorter than the first axis)
    ((2, 30, 40), None, (30, 40, 2)),          # channels first
    ((5, 30, 5), None, (5, 30, 3)),            # a tie: channels last (5, the first 3 kept)
    ((30, 4, 40), 1, (30, 40, 4)[:2] + (3,)),  # given axis; 4 channels -> the first 3
    ((6, 2, 30, 40), None, (6, 30, 40, 2)),    # a batch of 2-channel images
    ((6, 30, 40, 3), None, (6, 30, 40, 3)),
])
def test_2d_axis_rules(shape, channel_axis, expected):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    with pytest.warns(UserWarning, match="first 3") if np.prod(expected) < x.size else _no_warning():
        out = convert_image(x, channel_axis=channel_axis)
    assert out.shape == expected


def _no_warning():
    import contextlib
    return contextlib.nullcontext()


def test_channel_order_is_kept():
    x = np.zeros((3, 20, 30), np.float32)
    x[1] = 7
    out = convert_image(x)
    assert out.shape == (20, 30, 3) and np.all(out[..., 1] == 7) and not out[..., [0, 2]].any()


def test_3d_axis_rules_and_errors():
    vol = np.zeros((20, 8, 30), np.uint16)
    assert convert_image(vol, z_axis=1, do_3D=True).shape == (8, 20, 30, 1)
    assert convert_image(np.zeros((8, 2, 20, 30)), channel_axis=1, z_axis=0, do_3D=True).shape == (8, 20, 30, 2)
    with pytest.raises(ImageShapeError, match="z_axis is required"):
        convert_image(vol, do_3D=True)
    with pytest.raises(ImageShapeError, match="channel_axis is required"):
        convert_image(np.zeros((8, 2, 20, 30)), z_axis=0, do_3D=True)
    with pytest.raises(ImageShapeError, match="cannot be the same"):
        convert_image(np.zeros((8, 2, 20, 30)), channel_axis=0, z_axis=0, do_3D=True)
    with pytest.raises(ImageShapeError, match="z_axis is for 3D runs"):
        convert_image(vol, z_axis=0)
    with pytest.raises(ImageShapeError, match="no channel axis"):
        convert_image(np.zeros((20, 30)), channel_axis=0)
    with pytest.raises(ImageShapeError, match="batch"):
        convert_image(np.zeros((4, 2, 20, 30)), channel_axis=0)


def test_constant_channels_are_zeroed_after_normalisation():
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(0, 1000, (40, 50)), np.full((40, 50), 7.0)], axis=-1).astype(np.float32)
    x, stacked = prepare_image(image, EvalSettings())
    assert x.shape == (1, 40, 50, 2) and not stacked
    assert not x[..., 1].any()  # Cellpose 3 would keep the 7s
    lo, hi = np.percentile(image[..., 0], [1, 99])
    np.testing.assert_array_equal(x[0, ..., 0], (image[..., 0] - np.float32(lo)) / (np.float32(hi) - np.float32(lo)))


def test_normalisation_uses_numpy21_percentiles():
    # numpy >= 2.1 computes the percentile's index in float64: the 99th percentile of this array
    # differs from numpy 2.0's (the Cellpose 3 references') in its last bits
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 40.0, 65536).astype(np.float32)
    assert percentiles(values, (99.0,), rule="numpy2.1") != percentiles(values, (99.0,), rule="numpy2.0")
    for q in (1.0, 99.0, 37.3):
        expected = np.percentile(values, q) if np.lib.NumpyVersion(np.__version__) >= "2.1.0" else None
        if expected is not None:
            assert percentiles(values, (q,), rule="numpy2.1")[0] == expected


def test_stack_is_normalised_per_plane_unless_3d():
    rng = np.random.default_rng(1)
    stack = (rng.uniform(0, 1, (3, 20, 20)) * np.array([1, 10, 100])[:, None, None]).astype(np.float32)
    per_plane, _ = prepare_image(stack[..., None], EvalSettings())  # a batch of 3 grayscale images
    together, stacked = prepare_image(stack, EvalSettings(stitch_threshold=0.5, z_axis=0))
    assert stacked and per_plane.shape == together.shape == (3, 20, 20, 1)
    assert np.allclose([np.percentile(p, 99) for p in per_plane[..., 0]], 1.0, atol=1e-6)
    assert np.percentile(together[0], 99) < 0.1
