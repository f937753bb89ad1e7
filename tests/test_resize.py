"""resize_bilinear / resize_nearest against outputs of cv2.resize (fixture made with opencv 5.0)."""
import numpy as np
import pytest

from cellflow_rt.resize import nearest_indices, resize_bilinear, resize_nearest
from conftest import DATA

FIXTURE = np.load(DATA / "resize_cv2.npz")
CASES = sorted({int(k[3:]) for k in FIXTURE.files if k.startswith("src")})


@pytest.mark.parametrize("k", CASES)
def test_bilinear_matches_opencv(k):
    src, expected = FIXTURE[f"src{k}"], FIXTURE[f"lin{k}"]
    out = resize_bilinear(src, *expected.shape[:2])
    assert out.shape == expected.shape and out.dtype == np.float32
    # a few ulps: OpenCV's SIMD order of operations differs from ours on some channel counts
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", CASES)
def test_nearest_matches_opencv(k):
    labels, expected = FIXTURE[f"lab{k}"], FIXTURE[f"nn{k}"]
    out = resize_nearest(labels, *expected.shape)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype


def test_bilinear_identity_and_constant():
    img = np.random.default_rng(0).random((13, 17)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear(img, 13, 17), img)
    const = np.full((9, 11, 2), 3.5, np.float32)
    np.testing.assert_allclose(resize_bilinear(const, 25, 4), 3.5, rtol=1e-6)


def test_nearest_rule_is_floor_not_centre():
    # OpenCV's INTER_NEAREST takes floor(dst * src / dst), so upscaling 2 -> 3 picks 0, 0, 1
    np.testing.assert_array_equal(nearest_indices(2, 3), [0, 0, 1])


def test_resize_to_nothing_is_an_error():
    with pytest.raises(ValueError, match="no pixels"):
        resize_bilinear(np.zeros((4, 4), np.float32), 0, 4)
