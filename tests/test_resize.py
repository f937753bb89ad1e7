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


def test_numba_cache_falls_back_to_a_writable_copy(tmp_path, monkeypatch):
    """A read-only pre-warmed cache (a --read-only container) is copied to the temporary directory."""
    import os

    from cellflow_rt import _numba

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "entry.nbi").write_text("x")
    monkeypatch.setattr(_numba.os, "access", lambda path, mode: False)
    monkeypatch.setattr(_numba.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    chosen = _numba.configure_cache()
    assert chosen.startswith(str(tmp_path / "tmp"))
    assert os.path.exists(os.path.join(chosen, "entry.nbi"))
    assert os.environ["NUMBA_CACHE_DIR"] == chosen
    monkeypatch.undo()
    _numba.configure_cache()
