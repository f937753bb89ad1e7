"""Device bilinear resize (numba CUDA, run on the simulator in CI) against the CPU's resize_bilinear."""
import numpy as np
import pytest
from numba import cuda

from cellflow_rt.gpu.resize import resize_chw, resize_hwc
from cellflow_rt.resize import resize_bilinear

# (source size, output size, channels): down and up, non-square, 2 channels (float32 positions) and
# 1 / 3 channels (float64 positions), a one-pixel axis
CASES = [((9, 13), (14, 6), 2), ((11, 7), (5, 12), 1), ((8, 10), (12, 15), 3), ((1, 9), (3, 4), 2)]


@pytest.mark.parametrize("src_shape, dst_shape, nchan", CASES)
def test_channel_last_resize_equals_the_cpu(src_shape, dst_shape, nchan):
    img = np.random.default_rng(sum(src_shape)).standard_normal(src_shape + (nchan,)).astype(np.float32)
    expected = resize_bilinear(img, *dst_shape).reshape(dst_shape + (nchan,))
    out = cuda.device_array(dst_shape + (nchan,), np.float32)
    resize_hwc(cuda.to_device(img), out)
    np.testing.assert_array_equal(out.copy_to_host(), expected)


@pytest.mark.parametrize("src_shape, dst_shape, nchan", CASES[:3])
def test_planar_resize_of_a_strided_view_equals_the_cpu(src_shape, dst_shape, nchan):
    img = np.random.default_rng(7).standard_normal((nchan, 2) + src_shape).astype(np.float32)
    expected = resize_bilinear(np.ascontiguousarray(img[:, 1].transpose(1, 2, 0)), *dst_shape)
    out = cuda.device_array((nchan, 2) + dst_shape, np.float32)
    resize_chw(cuda.to_device(img)[:, 1], out[:, 1])
    np.testing.assert_array_equal(out.copy_to_host()[:, 1], expected.reshape(dst_shape + (nchan,)).transpose(2, 0, 1))
